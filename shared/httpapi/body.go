package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/tokenbroker/tokenbroker/shared/broker"
)

// maxBody bounds a request body.
const maxBody = 160 << 10

// readJSON decodes the event's body into v, strictly: one JSON object
// whose keys are exactly v's field names (encoding/json alone would accept
// "Return_To" for "return_to" and let a second "scopes" win silently), no
// key twice at any depth, no unknown field, nothing after the object. An
// empty body leaves v as it is. Every refusal is a bad_request naming the
// problem, with example as the expected shape.
func readJSON(ev *request, v any, example string) error {
	b, err := body(ev)
	if err != nil {
		return broker.Errorf(broker.CodeBadRequest, "the body is not valid base64")
	}
	if len(b) > maxBody {
		return broker.Errorf(broker.CodeBadRequest, "the body is larger than %d KiB", maxBody>>10)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	bad := func(format string, args ...any) error {
		return broker.Errorf(broker.CodeBadRequest, "the body must be JSON like %s: %s", example, fmt.Sprintf(format, args...))
	}
	if err := checkKeys(b, fieldNames(v)); err != nil {
		return bad("%s", err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bad("%s", firstLine(err.Error()))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return bad("there is more after the object")
	}
	return nil
}

// fieldNames are the JSON names of a struct's fields.
func fieldNames(v any) map[string]bool {
	names := map[string]bool{}
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names[name] = true
		}
	}
	return names
}

// checkKeys walks the JSON text: the top level must be an object whose
// keys are in allowed, written exactly; no object anywhere may repeat a key.
func checkKeys(b []byte, allowed map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return errors.New("not JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	return walkObject(dec, allowed, 0)
}

func walkObject(dec *json.Decoder, allowed map[string]bool, depth int) error {
	if depth > 8 {
		return errors.New("nested too deeply")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return errors.New("not JSON")
		}
		key, _ := tok.(string)
		// A key the caller wrote is named only where it is one of the
		// allowed fields: an unknown one may be anything, a token pasted in
		// the wrong place included, and error text reaches the log.
		if seen[key] && allowed[key] {
			return fmt.Errorf("the key %q appears twice", key)
		}
		if seen[key] {
			return errors.New("a key appears twice")
		}
		seen[key] = true
		if allowed != nil && !allowed[key] {
			return fmt.Errorf("a field other than %s", strings.Join(slices.Sorted(maps.Keys(allowed)), ", "))
		}
		if err := walkValue(dec, depth); err != nil {
			return err
		}
	}
	_, err := dec.Token() // the closing brace
	if err != nil {
		return errors.New("not JSON")
	}
	return nil
}

func walkValue(dec *json.Decoder, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return errors.New("not JSON")
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		return walkObject(dec, nil, depth+1)
	case '[':
		for dec.More() {
			if err := walkValue(dec, depth+1); err != nil {
				return err
			}
		}
		_, err := dec.Token()
		if err != nil {
			return errors.New("not JSON")
		}
	}
	return nil
}
