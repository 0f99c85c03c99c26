package protocol

import (
	"encoding/json"
	"errors"

	"github.com/mailru/easyjson/jlexer"
)

// Why a client message could not be read, worded for the client.
var (
	errNotObject = errors.New("message is not a valid JSON object")
	errTypeKind  = errors.New(`"type" must be a string`)
	errNoType    = errors.New(`missing "type"`)
)

// decode reads one client message into in. It is written by hand over
// easyjson's lexer rather than generated, for two things the generated
// decoder cannot do: keep an explicit null as the raw value null (so
// {"data":null} is echoed with "data":null), and tell a message whose
// "type" is not a string from one that is not JSON at all. Like the
// generated code it copies nothing: Type, ID and Data point into data.
func (in *Inbound) decode(data []byte) error {
	lex := jlexer.Lexer{Data: data}
	typeKind := jlexer.TokenUndef
	lex.Delim('{')
	for lex.Ok() && !lex.IsDelim('}') {
		key := lex.UnsafeFieldName(false)
		lex.WantColon()
		switch key {
		case "type":
			if typeKind = lex.CurrentToken(); typeKind == jlexer.TokenString {
				in.Type = lex.UnsafeString()
			} else {
				lex.SkipRecursive()
			}
		case "id":
			in.ID = lex.Raw()
		case "data":
			in.Data = lex.Raw()
		default:
			lex.SkipRecursive()
		}
		lex.WantComma()
	}
	lex.Delim('}')
	lex.Consumed()
	switch {
	case lex.Error() != nil:
		return errNotObject
	// The lexer skips over values without checking all of their syntax
	// (a raw control character in a string passes): what is passed on to
	// other clients must be JSON they can parse.
	case len(in.Data) > 0 && !json.Valid(in.Data), len(in.ID) > 0 && !json.Valid(in.ID):
		return errNotObject
	case typeKind == jlexer.TokenUndef:
		return errNoType
	case typeKind != jlexer.TokenString:
		return errTypeKind
	}
	return nil
}
