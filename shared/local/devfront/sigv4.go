package devfront

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// DefaultRegion is the region signatures are scoped to unless Front.Region
// says otherwise; the one every local client uses.
const DefaultRegion = "us-east-1"

// DefaultCredentials are the credentials IAM routes accept unless
// Front.Credentials says otherwise; make dev prints them in its curl lines.
var DefaultCredentials = aws.Credentials{AccessKeyID: "local", SecretAccessKey: "local"}

const (
	signingService = "execute-api"
	signingAlgo    = "AWS4-HMAC-SHA256"
	amzDateLayout  = "20060102T150405Z"
	// maxSkew is how far X-Amz-Date may be from the front's clock; API
	// Gateway allows five minutes either way.
	maxSkew = 5 * time.Minute
)

// sigV4Error is a refused request: status 401 when it is not signed at
// all, 403 when the signature does not hold. Messages follow API Gateway's.
type sigV4Error struct {
	status  int
	message string
}

func (e *sigV4Error) Error() string { return e.message }

func forbidden(format string, args ...any) error {
	return &sigV4Error{status: http.StatusForbidden, message: fmt.Sprintf(format, args...)}
}

// authorization is a parsed SigV4 Authorization header.
type authorization struct {
	accessKey, date, region, service string
	signedHeaders                    []string
	signature                        string
}

func parseAuthorization(h string) (authorization, bool) {
	rest, ok := strings.CutPrefix(h, signingAlgo+" ")
	if !ok {
		return authorization{}, false
	}
	var a authorization
	var credential string
	for _, part := range strings.Split(rest, ",") {
		key, value, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch key {
		case "Credential":
			credential = value
		case "SignedHeaders":
			a.signedHeaders = strings.Split(value, ";")
		case "Signature":
			a.signature = value
		}
	}
	scope := strings.Split(credential, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" || scope[0] == "" || len(a.signedHeaders) == 0 || a.signature == "" {
		return authorization{}, false
	}
	a.accessKey, a.date, a.region, a.service = scope[0], scope[1], scope[2], scope[3]
	return a, true
}

var verifier = v4.NewSigner()

// verifySigV4 checks r's signature the way API Gateway does for IAM
// routes and returns the caller's access key id. It recomputes the
// signature with the SDK's own v4 signer over the headers the caller
// signed, so a request is accepted exactly when an SDK-signed one would
// be. (A caller that signs a header the SDK never signs, such as
// User-Agent, is refused: a local stand-in may be stricter than AWS.)
func (f *Front) verifySigV4(r *http.Request, body []byte) (string, error) {
	header := r.Header.Get("Authorization")
	if header == "" || !strings.HasPrefix(header, signingAlgo+" ") {
		return "", &sigV4Error{status: http.StatusUnauthorized, message: "this route needs a SigV4-signed request (curl --aws-sigv4 …)"}
	}
	auth, ok := parseAuthorization(header)
	if !ok {
		return "", forbidden("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters.")
	}
	if auth.service != signingService {
		return "", forbidden("Credential should be scoped to correct service: '%s'.", signingService)
	}
	region := f.Region
	if region == "" {
		region = DefaultRegion
	}
	if auth.region != region {
		return "", forbidden("Credential should be scoped to a valid region (this API is in %s).", region)
	}
	creds, known := f.credentials(auth.accessKey)
	if !known || r.Header.Get("X-Amz-Security-Token") != creds.SessionToken {
		return "", forbidden("The security token included in the request is invalid.")
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		return "", forbidden("Authorization header requires existence of a 'X-Amz-Date' header.")
	}
	signedAt, err := time.Parse(amzDateLayout, amzDate)
	if err != nil {
		return "", forbidden("X-Amz-Date must be in the form %s.", amzDateLayout)
	}
	now := time.Now
	if f.Now != nil {
		now = f.Now
	}
	at := now().UTC()
	switch {
	case signedAt.Before(at.Add(-maxSkew)):
		return "", forbidden("Signature expired: %s is now earlier than %s (%s - 5 min.)", amzDate, at.Add(-maxSkew).Format(amzDateLayout), at.Format(amzDateLayout))
	case signedAt.After(at.Add(maxSkew)):
		return "", forbidden("Signature not yet current: %s is still later than %s (%s + 5 min.)", amzDate, at.Add(maxSkew).Format(amzDateLayout), at.Format(amzDateLayout))
	}

	// Rebuild the request from what the caller signed and sign it again.
	u := *r.URL
	u.Scheme, u.Host = "http", r.Host
	again := &http.Request{Method: r.Method, URL: &u, Host: r.Host, Header: http.Header{}}
	for _, name := range auth.signedHeaders {
		switch name {
		case "host", "x-amz-date", "x-amz-security-token":
			// The signer sets these from the request, the time and the credentials.
		case "content-length":
			again.ContentLength = int64(len(body))
		default:
			if values := r.Header.Values(name); len(values) > 0 {
				again.Header[http.CanonicalHeaderKey(name)] = values
			}
		}
	}
	payload := sha256.Sum256(body)
	if err := verifier.SignHTTP(r.Context(), creds, again, hex.EncodeToString(payload[:]), signingService, region, signedAt); err != nil {
		return "", forbidden("cannot recompute the signature: %v", err)
	}
	want, _ := parseAuthorization(again.Header.Get("Authorization"))
	if subtle.ConstantTimeCompare([]byte(want.signature), []byte(auth.signature)) != 1 {
		return "", forbidden("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")
	}
	return auth.accessKey, nil
}

func (f *Front) credentials(accessKey string) (aws.Credentials, bool) {
	accepted := f.Credentials
	if len(accepted) == 0 {
		accepted = []aws.Credentials{DefaultCredentials}
	}
	for _, c := range accepted {
		if c.AccessKeyID == accessKey {
			return c, true
		}
	}
	return aws.Credentials{}, false
}
