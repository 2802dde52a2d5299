// Package provider speaks to OAuth providers over HTTP: it builds authorize
// URLs, exchanges codes, refreshes grants, fetches machine tokens and revokes
// where a provider can. It knows nothing of DynamoDB or SSM: it is handed a
// Config and the client secret.
//
// Every failure is an *Error that keeps the provider's own code and message
// and is classified once, per kind, in a table: ClassReauth (the grant is
// gone: the user must authorize again), ClassConfig (the app's own settings
// are wrong: an operator must fix them) or ClassTransient (retry later).
// Nothing here retries: a code exchange in particular must never be repeated
// after an ambiguous failure, because the code may already be spent.
package provider
