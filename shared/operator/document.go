package operator

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/tokenbroker/tokenbroker/shared/provider"
)

// Document builds a provider JSON document from field=value settings,
// for any field of provider.Config: strings as they are, numbers and
// booleans parsed, lists comma-separated (or a JSON array), and maps as
// field.key=value (or a JSON object). A field the parser does not know is
// refused here, with the list of those it does.
type Document map[string]any

// Set applies one field=value.
func (d Document) Set(setting string) error {
	field, value, ok := strings.Cut(setting, "=")
	if !ok || field == "" {
		return fmt.Errorf("--set %q: want field=value", setting)
	}
	name, key, sub := strings.Cut(field, ".")
	typ, known := configFields()[name]
	if !known {
		return fmt.Errorf("--set: unknown field %q (fields: %s)", name, strings.Join(FieldNames(), ", "))
	}
	if sub {
		if typ.Kind() != reflect.Map || key == "" {
			return fmt.Errorf("--set %s: only a map field takes field.key=value", field)
		}
		m, _ := d[name].(map[string]any)
		if m == nil {
			m = map[string]any{}
		}
		m[key] = value
		d[name] = m
		return nil
	}
	switch typ.Kind() {
	case reflect.String:
		d[name] = value
	case reflect.Int:
		n, err := strconv.Atoi(value)
		if err != nil {
			return fmt.Errorf("--set %s: %q is not a whole number", name, value)
		}
		d[name] = n
	case reflect.Bool:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return fmt.Errorf("--set %s: %q is not true or false", name, value)
		}
		d[name] = b
	case reflect.Slice:
		var list []string
		if strings.HasPrefix(strings.TrimSpace(value), "[") {
			if err := json.Unmarshal([]byte(value), &list); err != nil {
				return fmt.Errorf("--set %s: not a JSON array of strings: %v", name, err)
			}
		} else if value != "" {
			list = strings.Split(value, ",")
		}
		d[name] = list
	case reflect.Map:
		var m map[string]string
		if err := json.Unmarshal([]byte(value), &m); err != nil {
			return fmt.Errorf("--set %s: want a JSON object of strings, or %s.key=value", name, name)
		}
		d[name] = m
	default:
		return fmt.Errorf("--set %s: unsupported field type", name)
	}
	return nil
}

// JSON is the document's JSON.
func (d Document) JSON() []byte {
	raw, _ := json.Marshal(map[string]any(d))
	return raw
}

// configFields maps provider.Config's JSON names to their types; the
// element type of a pointer field (pkce, revoke_per_token).
func configFields() map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	t := reflect.TypeOf(provider.Config{})
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		fields[name] = ft
	}
	return fields
}

// FieldNames lists the fields Set accepts, sorted.
func FieldNames() []string {
	var names []string
	for n := range configFields() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
