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
	errField     = errors.New(`"channel", "token" and "since.epoch" must be strings, "since.offset" and "limit" non-negative integers`)
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
		case "channel":
			in.Channel = in.str(&lex, true)
		case "token":
			in.Token = in.str(&lex, false)
		case "limit":
			if lex.CurrentToken() != jlexer.TokenNumber {
				in.fieldErr = true
				lex.SkipRecursive()
			} else {
				in.Limit = lex.Int()
			}
		case "since":
			if lex.IsNull() {
				lex.Skip()
				break
			}
			in.HasSince = true
			in.Since = Position{} // the last "since" wins, as for every field
			lex.Delim('{')
			for lex.Ok() && !lex.IsDelim('}') {
				k := lex.UnsafeFieldName(false)
				lex.WantColon()
				switch k {
				case "offset":
					if lex.CurrentToken() != jlexer.TokenNumber {
						in.fieldErr = true
						lex.SkipRecursive()
					} else {
						in.Since.Offset = lex.Uint64()
					}
				case "epoch":
					in.Since.Epoch = in.str(&lex, true)
				default:
					lex.SkipRecursive()
				}
				lex.WantComma()
			}
			lex.Delim('}')
		default:
			lex.SkipRecursive()
		}
		lex.WantComma()
	}
	lex.Delim('}')
	lex.Consumed()
	switch err := lex.Error(); {
	case in.fieldErr:
		return errField
	case err != nil:
		return errNotObject
	case in.Limit < 0:
		return errField
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

// str reads a string field, copied if it may outlive the message (owned),
// else pointing into it. Any other kind of value is a field error.
func (in *Inbound) str(lex *jlexer.Lexer, owned bool) string {
	switch {
	case lex.CurrentToken() != jlexer.TokenString:
		in.fieldErr = true
		lex.SkipRecursive()
		return ""
	case owned:
		return lex.String()
	}
	return lex.UnsafeString()
}
