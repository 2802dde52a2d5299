// Package local holds nothing itself: its subpackages are tokenbroker's
// local tooling (provider emulators, AWS stand-ins, the fault proxy, the
// local API Gateway, the Runtime API runner, end-to-end tests and the
// commands dev, invoke, standins and bench). None of it is ever part of a
// Lambda bootstrap.
package local
