// Package e2e holds the end-to-end tests: the four real bootstraps, built
// for the local machine, run under lambdarun against DynamoDB Local, moto
// and the provider emulators, driven by API Gateway HTTP API events.
package e2e
