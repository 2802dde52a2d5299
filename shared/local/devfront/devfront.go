// Package devfront is make dev's stand-in for API Gateway: it reads the
// HTTP API routes from template.yaml (so a new route is one edit, not two),
// turns each request into the payload 2.0 event the deployed function
// receives, and the function's answer back into HTTP.
//
// IAM routes verify SigV4 as API Gateway does: the front recomputes the
// signature with aws-sdk-go-v2's v4 signer from the credentials it is
// configured with (local/local unless told otherwise) and answers 403
// forbidden for a wrong signature, a key it does not know, another service
// or region, or a missing or skewed X-Amz-Date; a request with no
// Authorization header at all gets 401, as before.
package devfront

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"gopkg.in/yaml.v3"
)

// Route is one HTTP API event of a function in template.yaml.
type Route struct {
	Function string // LogicalId, e.g. TokenFunction
	Method   string
	Path     string // with {params}
	Public   bool   // Auth.Authorizer: NONE
	pattern  *regexp.Regexp
	params   []string
}

// RouteKey is API Gateway's "METHOD /path".
func (r Route) RouteKey() string { return r.Method + " " + r.Path }

var paramPattern = regexp.MustCompile(`\{([A-Za-z0-9_]+)\}`)

// Routes reads every HttpApi event of every AWS::Serverless::Function.
func Routes(templatePath string) ([]Route, error) {
	raw, err := os.ReadFile(templatePath)
	if err != nil {
		return nil, fmt.Errorf("devfront: %w", err)
	}
	var doc struct {
		Resources map[string]yaml.Node `yaml:"Resources"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("devfront: parse %s: %w", templatePath, err)
	}
	var routes []Route
	for id, node := range doc.Resources {
		var res struct {
			Type       string `yaml:"Type"`
			Properties struct {
				Events map[string]struct {
					Type       string `yaml:"Type"`
					Properties struct {
						Method string `yaml:"Method"`
						Path   string `yaml:"Path"`
						Auth   struct {
							Authorizer string `yaml:"Authorizer"`
						} `yaml:"Auth"`
					} `yaml:"Properties"`
				} `yaml:"Events"`
			} `yaml:"Properties"`
		}
		if err := node.Decode(&res); err != nil || res.Type != "AWS::Serverless::Function" {
			continue
		}
		for _, ev := range res.Properties.Events {
			if ev.Type != "HttpApi" {
				continue
			}
			p := ev.Properties
			r := Route{Function: id, Method: strings.ToUpper(p.Method), Path: p.Path, Public: p.Auth.Authorizer == "NONE"}
			segs := strings.Split(p.Path, "/")
			for i, seg := range segs {
				if m := paramPattern.FindStringSubmatch(seg); m != nil && m[0] == seg {
					segs[i] = "([^/]+)"
					r.params = append(r.params, m[1])
				} else {
					segs[i] = regexp.QuoteMeta(seg)
				}
			}
			expr := "^" + strings.Join(segs, "/") + "$"
			r.pattern = regexp.MustCompile(expr)
			routes = append(routes, r)
		}
	}
	if len(routes) == 0 {
		return nil, fmt.Errorf("devfront: no HttpApi routes in %s", templatePath)
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].RouteKey() < routes[j].RouteKey() })
	return routes, nil
}

// Invoker runs a function (by LogicalId) with a payload.
type Invoker func(ctx context.Context, function string, payload []byte) ([]byte, error)

// Front serves the routes.
type Front struct {
	Routes []Route
	Invoke Invoker
	// Domain is the Host the API appears under (requestContext.domainName).
	Domain string
	// Credentials are the identities IAM routes accept; DefaultCredentials
	// when empty. A session token, when set, must come with the request.
	Credentials []aws.Credentials
	// Region the signatures must be scoped to; DefaultRegion when empty.
	Region string
	// Now is the clock X-Amz-Date is checked against; time.Now when nil.
	Now func() time.Time
}

func jsonError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "message": msg})
}

func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var route *Route
	var match []string
	pathMatched := false
	for i := range f.Routes {
		if m := f.Routes[i].pattern.FindStringSubmatch(r.URL.EscapedPath()); m != nil {
			pathMatched = true
			if f.Routes[i].Method == r.Method {
				route, match = &f.Routes[i], m
				break
			}
		}
	}
	if route == nil {
		if pathMatched {
			jsonError(w, http.StatusMethodNotAllowed, "not_found", "no route "+r.Method+" "+r.URL.Path)
			return
		}
		jsonError(w, http.StatusNotFound, "not_found", "no route "+r.Method+" "+r.URL.Path)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
	if err != nil {
		jsonError(w, http.StatusBadRequest, "bad_request", "cannot read the body")
		return
	}
	ev := events.APIGatewayV2HTTPRequest{
		Version: "2.0", RouteKey: route.RouteKey(), RawPath: r.URL.EscapedPath(), RawQueryString: r.URL.RawQuery,
		Headers: map[string]string{}, PathParameters: map[string]string{},
		RequestContext: events.APIGatewayV2HTTPRequestContext{
			AccountID: "000000000000", APIID: "local", DomainName: f.Domain, DomainPrefix: "local", Stage: "$default",
			RequestID: fmt.Sprintf("local-%d", time.Now().UnixNano()), RouteKey: route.RouteKey(),
			Time: time.Now().UTC().Format("02/Jan/2006:15:04:05 -0700"), TimeEpoch: time.Now().UnixMilli(),
			HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: r.Method, Path: r.URL.Path, Protocol: r.Proto,
				SourceIP: hostOnly(r.RemoteAddr), UserAgent: r.UserAgent()},
		},
	}
	for k, v := range r.Header {
		ev.Headers[strings.ToLower(k)] = strings.Join(v, ",")
	}
	if q := r.URL.Query(); len(q) > 0 {
		ev.QueryStringParameters = map[string]string{}
		for k, v := range q {
			ev.QueryStringParameters[k] = strings.Join(v, ",")
		}
	}
	for i, name := range route.params {
		ev.PathParameters[name] = match[i+1]
	}
	if len(body) > 0 {
		if utf8.Valid(body) {
			ev.Body = string(body)
		} else {
			ev.Body, ev.IsBase64Encoded = base64.StdEncoding.EncodeToString(body), true
		}
	}
	if !route.Public {
		akid, err := f.verifySigV4(r, body)
		if err != nil {
			var refused *sigV4Error
			if errors.As(err, &refused) && refused.status == http.StatusUnauthorized {
				jsonError(w, http.StatusUnauthorized, "unauthorized", refused.message)
			} else {
				jsonError(w, http.StatusForbidden, "forbidden", err.Error())
			}
			return
		}
		ev.RequestContext.Authorizer = &events.APIGatewayV2HTTPRequestContextAuthorizerDescription{
			IAM: &events.APIGatewayV2HTTPRequestContextAuthorizerIAMDescription{
				AccessKey: akid, AccountID: "000000000000", CallerID: akid, UserID: akid,
				UserARN: "arn:aws:iam::000000000000:user/" + akid,
			}}
	}
	payload, _ := json.Marshal(ev)
	out, err := f.Invoke(r.Context(), route.Function, payload)
	if err != nil {
		jsonError(w, http.StatusBadGateway, "internal", "the function failed: "+err.Error())
		return
	}
	var resp events.APIGatewayV2HTTPResponse
	if err := json.Unmarshal(out, &resp); err != nil || resp.StatusCode == 0 {
		jsonError(w, http.StatusBadGateway, "internal", "the function's answer is not an HTTP API response")
		return
	}
	for k, v := range resp.Headers {
		w.Header().Set(k, v)
	}
	for _, c := range resp.Cookies {
		w.Header().Add("Set-Cookie", c)
	}
	respBody := []byte(resp.Body)
	if resp.IsBase64Encoded {
		if respBody, err = base64.StdEncoding.DecodeString(resp.Body); err != nil {
			jsonError(w, http.StatusBadGateway, "internal", "the function's base64 body is invalid")
			return
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(respBody)
}

func hostOnly(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
