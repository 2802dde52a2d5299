package emulator

import (
	"net/http"
	"net/url"
	"time"
)

// SinaCloud emulates the SAE OpenAPI authorization server: the authorize
// redirect and one token endpoint for codes and refreshes. Refresh tokens
// are single-use; a second use is refused and counted in RefreshReuses,
// because at SinaCloud it means the connection is lost.
//
// SinaCloud grants the refresh_token permission to a client id separately
// from the code grant; a refresh by a client without it is answered with
// unauthorized_client, the meaning its document gives that code. Bad client
// credentials are therefore answered with RFC 6749's invalid_client.
type SinaCloud struct {
	core
	ClientID, Secret string
	// RedirectURI is the one registered for the client (SinaCloud's
	// authorize request carries none).
	RedirectURI string
	AccessTTL   time.Duration
	// NoRefreshPermission makes the client one without the separately
	// granted refresh permission: codes still exchange (and still return a
	// refresh token), refreshes answer unauthorized_client and spend
	// nothing. Set it before serving; SetRefreshPermission switches it
	// while serving.
	NoRefreshPermission bool

	codes   map[string]time.Time
	refresh map[string]*sinaRefresh
	access  map[string]time.Time
	reuses  int
	grants  int
	// refused counts refreshes answered unauthorized_client; killed
	// counts KillAccess calls that ended a token.
	refused, killed int
}

// SetRefreshPermission grants (true) or withdraws (false) the client's
// refresh permission, as SinaCloud's operators do on request. A refresh
// token refused while the permission was off was not spent: it works once
// the permission is back.
func (e *SinaCloud) SetRefreshPermission(granted bool) {
	e.mu.Lock()
	e.NoRefreshPermission = !granted
	e.mu.Unlock()
}

// RefreshRefusals counts refreshes answered unauthorized_client.
func (e *SinaCloud) RefreshRefusals() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refused
}

// KillAccess ends one access token now, leaving its refresh token usable;
// APIPath then answers 401 for it. It reports whether the token was live.
func (e *SinaCloud) KillAccess(tok string) bool {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	exp, ok := e.access[tok]
	if !ok || !now.Before(exp) {
		return false
	}
	delete(e.access, tok)
	e.killed++
	return true
}

// Killed counts the access tokens KillAccess ended.
func (e *SinaCloud) Killed() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.killed
}

type sinaRefresh struct {
	expires time.Time
	used    bool
	// access is the access token issued with this refresh token; next is
	// the refresh token of the grant this one was traded for.
	access, next string
}

// NewSinaCloud returns an emulator for one client.
func NewSinaCloud(clientID, secret, redirectURI string) *SinaCloud {
	return &SinaCloud{core: newCore(), ClientID: clientID, Secret: secret, RedirectURI: redirectURI,
		AccessTTL: 604800 * time.Second, codes: map[string]time.Time{}, refresh: map[string]*sinaRefresh{}, access: map[string]time.Time{}}
}

func (e *SinaCloud) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.serve(w, r, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/oauth2/authorize":
			e.authorize(w, r)
		case "/oauth2/access_token":
			e.token(w, r)
		case "/account/appinfo":
			e.api(w, r)
		case APIPath:
			e.serveOAuthAPI(w, r, e.ValidAccess)
		default:
			http.NotFound(w, r)
		}
	})
}

// RefreshReuses counts refresh tokens presented a second time.
func (e *SinaCloud) RefreshReuses() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reuses
}

// ValidAccess reports whether an access token works now.
func (e *SinaCloud) ValidAccess(tok string) bool {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	exp, ok := e.access[tok]
	return ok && now.Before(exp)
}

// RefreshUsable reports whether a refresh token would be accepted now:
// issued here, never used, not expired.
func (e *SinaCloud) RefreshUsable(tok string) bool {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	rt, ok := e.refresh[tok]
	return ok && !rt.used && now.Before(rt.expires)
}

// Successor is the grant a refresh token was traded for: its refresh and
// access tokens; ok is false for a token never traded (or unknown). Tests
// use it to tell a grant whose rotation was lost on the way (the successor
// was never stored or served) from an older grant written over a newer one.
func (e *SinaCloud) Successor(refresh string) (nextRefresh, nextAccess string, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	rt, found := e.refresh[refresh]
	if !found || rt.next == "" {
		return "", "", false
	}
	return rt.next, e.refresh[rt.next].access, true
}

// RefreshCalls is the number of refresh_token grants answered.
func (e *SinaCloud) RefreshCalls() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.grants
}

func sinaError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]any{"error": code, "error_description": desc})
}

func (e *SinaCloud) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("response_type") != "code" || q.Get("client_id") != e.ClientID {
		page(w, http.StatusBadRequest, "unauthorized_client")
		return
	}
	redirect, err := url.Parse(e.RedirectURI)
	if err != nil || redirect.Host == "" {
		page(w, http.StatusBadRequest, "no redirect uri registered")
		return
	}
	code := randomToken("SC", 16)
	now := e.clock()
	e.mu.Lock()
	e.codes[code] = now.Add(10 * time.Minute)
	e.mu.Unlock()
	rq := redirect.Query()
	rq.Set("code", code)
	rq.Set("state", q.Get("state"))
	redirect.RawQuery = rq.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (e *SinaCloud) grant(now time.Time) map[string]any {
	access, refresh := randomToken("SCA", 20), randomToken("SCR", 20)
	e.access[access] = now.Add(e.AccessTTL)
	e.refresh[refresh] = &sinaRefresh{expires: now.Add(e.AccessTTL + 24*time.Hour), access: access}
	return map[string]any{"access_token": access, "expires_in": int(e.AccessTTL.Seconds()),
		"token_type": "Bearer", "scope": nil, "refresh_token": refresh}
}

func (e *SinaCloud) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		sinaError(w, http.StatusMethodNotAllowed, "invalid_request", "POST required")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8192)
	if err := r.ParseForm(); err != nil {
		sinaError(w, http.StatusBadRequest, "invalid_request", "malformed form")
		return
	}
	f := r.PostForm
	if f.Get("client_id") != e.ClientID || f.Get("client_secret") != e.Secret {
		sinaError(w, http.StatusUnauthorized, "invalid_client", "The client credentials are invalid")
		return
	}
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	switch f.Get("grant_type") {
	case "authorization_code":
		exp, ok := e.codes[f.Get("code")]
		delete(e.codes, f.Get("code"))
		if !ok || !now.Before(exp) {
			sinaError(w, http.StatusBadRequest, "invalid_grant", "Authorization code doesn't exist or is invalid for the client")
			return
		}
		g := e.grant(now)
		writeToken(w, e.odd(g), g)
	case "refresh_token":
		rt, ok := e.refresh[f.Get("refresh_token")]
		switch {
		case e.NoRefreshPermission:
			e.refused++
			sinaError(w, http.StatusBadRequest, "unauthorized_client", "The client is not authorized to use the refresh_token grant")
		case !ok:
			sinaError(w, http.StatusBadRequest, "invalid_grant", "Invalid refresh token")
		case rt.used:
			e.reuses++
			sinaError(w, http.StatusBadRequest, "invalid_grant", "Refresh token has already been used")
		case !now.Before(rt.expires):
			sinaError(w, http.StatusBadRequest, "invalid_grant", "Refresh token has expired")
		default:
			rt.used = true
			e.grants++
			g := e.grant(now)
			rt.next = g["refresh_token"].(string)
			writeToken(w, e.odd(g), g)
		}
	default:
		sinaError(w, http.StatusBadRequest, "unsupported_grant_type", "grant type not supported")
	}
}

func (e *SinaCloud) api(w http.ResponseWriter, r *http.Request) {
	tok := r.Header.Get("Authorization")
	if len(tok) < 7 || !e.ValidAccess(tok[7:]) {
		sinaError(w, http.StatusUnauthorized, "invalid_token", "The access token provided is invalid")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// IssueGrant mints an access and a refresh token as a code exchange would,
// for seeding many connections quickly (benchmarks, bulk tests).
func (e *SinaCloud) IssueGrant() (access, refresh string, expiresIn time.Duration) {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	g := e.grant(now)
	return g["access_token"].(string), g["refresh_token"].(string), e.AccessTTL
}
