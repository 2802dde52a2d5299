package httpapi

import "encoding/base64"

func decodeBase64(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errBase64
	}
	return b, nil
}
