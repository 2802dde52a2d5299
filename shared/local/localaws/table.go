package localaws

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"gopkg.in/yaml.v3"
)

// TableResource is the logical id of the table in template.yaml.
const TableResource = "TokenTable"

// tableProperties mirrors the AWS::DynamoDB::Table properties that shape
// the schema; CloudFormation uses the API's own names, so they map 1:1.
type tableProperties struct {
	BillingMode          string `yaml:"BillingMode"`
	AttributeDefinitions []struct {
		AttributeName string `yaml:"AttributeName"`
		AttributeType string `yaml:"AttributeType"`
	} `yaml:"AttributeDefinitions"`
	KeySchema              []keyElement `yaml:"KeySchema"`
	GlobalSecondaryIndexes []struct {
		IndexName  string       `yaml:"IndexName"`
		KeySchema  []keyElement `yaml:"KeySchema"`
		Projection struct {
			ProjectionType   string   `yaml:"ProjectionType"`
			NonKeyAttributes []string `yaml:"NonKeyAttributes"`
		} `yaml:"Projection"`
	} `yaml:"GlobalSecondaryIndexes"`
	TimeToLiveSpecification struct {
		AttributeName string `yaml:"AttributeName"`
		Enabled       bool   `yaml:"Enabled"`
	} `yaml:"TimeToLiveSpecification"`
}

type keyElement struct {
	AttributeName string `yaml:"AttributeName"`
	KeyType       string `yaml:"KeyType"`
}

// TableSpec reads TokenTable from a SAM template and returns the
// CreateTableInput it describes, under the given table name, and the TTL
// attribute.
func TableSpec(templatePath, tableName string) (*dynamodb.CreateTableInput, string, error) {
	raw, err := os.ReadFile(templatePath)
	if err != nil {
		return nil, "", fmt.Errorf("localaws: read template: %w", err)
	}
	// yaml.Node keeps CloudFormation's short-form tags (!Ref, !Sub) without
	// trying to resolve them; only the table's subtree is decoded.
	var doc struct {
		Resources map[string]yaml.Node `yaml:"Resources"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, "", fmt.Errorf("localaws: parse %s: %w", templatePath, err)
	}
	node, ok := doc.Resources[TableResource]
	if !ok {
		return nil, "", fmt.Errorf("localaws: %s has no resource %s", templatePath, TableResource)
	}
	var res struct {
		Type       string          `yaml:"Type"`
		Properties tableProperties `yaml:"Properties"`
	}
	if err := node.Decode(&res); err != nil {
		return nil, "", fmt.Errorf("localaws: decode %s: %w", TableResource, err)
	}
	if res.Type != "AWS::DynamoDB::Table" {
		return nil, "", fmt.Errorf("localaws: %s is %s, not AWS::DynamoDB::Table", TableResource, res.Type)
	}
	p := res.Properties
	in := &dynamodb.CreateTableInput{TableName: aws.String(tableName), BillingMode: types.BillingMode(p.BillingMode)}
	for _, a := range p.AttributeDefinitions {
		in.AttributeDefinitions = append(in.AttributeDefinitions, types.AttributeDefinition{
			AttributeName: aws.String(a.AttributeName), AttributeType: types.ScalarAttributeType(a.AttributeType)})
	}
	in.KeySchema = keySchema(p.KeySchema)
	for _, g := range p.GlobalSecondaryIndexes {
		gsi := types.GlobalSecondaryIndex{
			IndexName: aws.String(g.IndexName), KeySchema: keySchema(g.KeySchema),
			Projection: &types.Projection{ProjectionType: types.ProjectionType(g.Projection.ProjectionType)},
		}
		if len(g.Projection.NonKeyAttributes) > 0 {
			gsi.Projection.NonKeyAttributes = g.Projection.NonKeyAttributes
		}
		in.GlobalSecondaryIndexes = append(in.GlobalSecondaryIndexes, gsi)
	}
	if len(in.KeySchema) == 0 || len(in.AttributeDefinitions) == 0 {
		return nil, "", fmt.Errorf("localaws: %s has no KeySchema or AttributeDefinitions", TableResource)
	}
	ttl := ""
	if p.TimeToLiveSpecification.Enabled {
		ttl = p.TimeToLiveSpecification.AttributeName
	}
	return in, ttl, nil
}

func keySchema(ks []keyElement) []types.KeySchemaElement {
	out := make([]types.KeySchemaElement, 0, len(ks))
	for _, k := range ks {
		out = append(out, types.KeySchemaElement{AttributeName: aws.String(k.AttributeName), KeyType: types.KeyType(k.KeyType)})
	}
	return out
}

// CreateTable creates the table described by template.yaml and waits until
// it is active. An existing table of that name is left as it is.
func CreateTable(ctx context.Context, db *dynamodb.Client, templatePath, tableName string) error {
	in, ttl, err := TableSpec(templatePath, tableName)
	if err != nil {
		return err
	}
	if _, err := db.CreateTable(ctx, in); err != nil {
		var inUse *types.ResourceInUseException
		if !errors.As(err, &inUse) {
			return fmt.Errorf("localaws: create table %s: %w", tableName, err)
		}
	}
	w := dynamodb.NewTableExistsWaiter(db, func(o *dynamodb.TableExistsWaiterOptions) { o.MinDelay = 50 * time.Millisecond })
	if err := w.Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(tableName)}, 30*time.Second); err != nil {
		return fmt.Errorf("localaws: wait for table %s: %w", tableName, err)
	}
	if ttl != "" {
		_, err := db.UpdateTimeToLive(ctx, &dynamodb.UpdateTimeToLiveInput{
			TableName:               aws.String(tableName),
			TimeToLiveSpecification: &types.TimeToLiveSpecification{AttributeName: aws.String(ttl), Enabled: aws.Bool(true)},
		})
		if err != nil {
			return fmt.Errorf("localaws: enable TTL on %s: %w", tableName, err)
		}
	}
	return nil
}

// DynamoDBClient returns a client for the given endpoint with local
// credentials.
func DynamoDBClient(endpoint string) *dynamodb.Client {
	return dynamodb.NewFromConfig(Config(), func(o *dynamodb.Options) { o.BaseEndpoint = aws.String(endpoint) })
}
