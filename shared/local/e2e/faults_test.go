package e2e_test

import "github.com/tokenbroker/tokenbroker/shared/local/emulator"

func htmlFault(status int) emulator.Fault { return emulator.HTMLError(status) }
func truncFault() emulator.Fault          { return emulator.Fault{Truncate: true} }
func hugeFault() emulator.Fault           { return emulator.Fault{Huge: true} }
func oauthFault(status int, code, desc string) emulator.Fault {
	return emulator.OAuthError(status, code, desc)
}
