package protocol

import (
	"errors"
	"net/http"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/hub"
)

// Authenticator returns the /ws route's handshake check: the token comes
// from "Authorization: Bearer", the "token" query parameter or the cookie
// named cookie (in that order) and is verified with v; the connection's
// Value becomes its hub.Client (none for an anonymous connection). A
// missing token is refused with 401 unless anonymous is set (the
// connection is then anonymous: public channels only); an invalid or expired token is always refused with 401, even
// when anonymous connections are allowed (a client that sent a token
// expects to be that user). With v nil every connection is anonymous.
func Authenticator(v *auth.Verifier, cookie string, anonymous bool) func(*engine.Request) (any, error) {
	return func(r *engine.Request) (any, error) {
		if v == nil {
			return nil, nil
		}
		token, ok := auth.TokenFromRequest(r.URI, r.Authorization, r.Cookie, cookie)
		if !ok {
			if anonymous {
				return nil, nil
			}
			return nil, &engine.HTTPError{Status: http.StatusUnauthorized, Message: "a token is required"}
		}
		claims, err := v.Verify(token)
		if err != nil {
			msg := "invalid token"
			if errors.Is(err, auth.ErrExpired) {
				msg = "token expired"
			}
			return nil, &engine.HTTPError{Status: http.StatusUnauthorized, Message: msg}
		}
		return hub.NewClient(claims), nil
	}
}
