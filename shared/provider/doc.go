// Package provider speaks to OAuth providers over HTTP: it builds authorize
// URLs, exchanges codes, refreshes grants, fetches machine tokens and revokes
// where a provider can. It knows nothing of DynamoDB or SSM: it is handed a
// Config and the client secret.
//
// Every failure is an *Error that keeps the provider's own code and message
// and is classified once, per kind, in a table: ClassReauth (the grant is
// gone: the user must authorize again), ClassConfig (the app's own settings
// are wrong: an operator must fix them), ClassNoRefresh (the provider will
// not refresh for this client id: serve the current token until it expires)
// or ClassTransient (retry later). Nothing here retries: a code exchange in
// particular must never be repeated after an ambiguous failure, because the
// code may already be spent.
//
// Three rules protect the credentials every call carries. Endpoints are
// https (plain http only on loopback, for the local emulators); redirects
// are never followed, so a 307 cannot carry a client secret or a refresh
// token to another host; and every provider text that becomes an *Error is
// redacted of the client secret and of every secret of the call, in the
// forms a provider may echo, before it is clipped (package redact). Only
// non-secret identifiers of a token answer reach TokenSet.Extra.
package provider
