// A certified OpenID Connect / OAuth 2.0 server (panva's oidc-provider) set
// up for tokenbroker's conformance tests: the generic oauth2 kind is proved
// against a server the project did not write, with that server's own
// strictness (PKCE S256, refresh token rotation with grant revocation on
// reuse, RFC 9207 iss, RFC 6749 errors).
//
// Test use only. It listens on 127.0.0.1 and nowhere else, keeps everything
// in memory, logs a fixed user in and grants consent without a browser.
//
// Configuration (environment):
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET  the one confidential client
//   OIDC_REDIRECT_URI                   its redirect URI
//   OIDC_AUTH_METHOD                    client_secret_basic (default) or client_secret_post
//   OIDC_ACCESS_TTL                     access token lifetime in seconds (default 600)
//   OIDC_ACCOUNT                        the user logged in (default "alice")
//   OIDC_PORT                           port (default 0: a free one)
//   OIDC_REFRESH                        "always" (default): a refresh token on every
//                                       code exchange; "offline_access": oidc-provider's
//                                       own policy, only with the offline_access scope
//                                       (which OpenID Connect honours only with
//                                       prompt=consent)
//
// On start it prints one JSON line to stdout: {"issuer":"http://127.0.0.1:PORT"}.
// Test-only endpoints (loopback only, like the rest):
//   GET  /test/counters        calls and events counted so far, as JSON
//   POST /test/revoke-grants   the user withdraws every grant they gave
//                              (tokens included), as from an account page
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const env = (k, d) => process.env[k] || d;
const clientID = env('OIDC_CLIENT_ID');
const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectURI = env('OIDC_REDIRECT_URI');
if (!clientID || !clientSecret || !redirectURI) {
  console.error('server.mjs: OIDC_CLIENT_ID, OIDC_CLIENT_SECRET and OIDC_REDIRECT_URI are required');
  process.exit(2);
}
const authMethod = env('OIDC_AUTH_METHOD', 'client_secret_basic');
const accessTTL = Number(env('OIDC_ACCESS_TTL', '600'));
const account = env('OIDC_ACCOUNT', 'alice');
const port = Number(env('OIDC_PORT', '0'));
const refreshPolicy = env('OIDC_REFRESH', 'always');
if (refreshPolicy !== 'always' && refreshPolicy !== 'offline_access') {
  console.error('server.mjs: OIDC_REFRESH must be always or offline_access');
  process.exit(2);
}
const HOST = '127.0.0.1';

const counters = {};
const count = (k) => { counters[k] = (counters[k] || 0) + 1; };
const grants = new Set();

let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = createServer((req, res) => handler(req, res));
server.listen(port, HOST, () => {
  const { address, port: bound } = server.address();
  if (address !== HOST) {
    console.error(`server.mjs: bound to ${address}, not loopback`);
    process.exit(2);
  }
  const issuer = `http://${HOST}:${bound}`;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientID,
      client_secret: clientSecret,
      redirect_uris: [redirectURI],
      response_types: ['code'],
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      token_endpoint_auth_method: authMethod,
      scope: 'openid offline_access profile email api',
    }],
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'test', use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'api'],
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      clientCredentials: { enabled: true },
    },
    pkce: { required: () => true },
    rotateRefreshToken: true,
    issueRefreshToken: async (_ctx, client, source) => client.grantTypeAllowed('refresh_token')
      && (refreshPolicy === 'always' || source.scopes.has('offline_access')),
    ttl: {
      AccessToken: accessTTL,
      ClientCredentials: accessTTL,
      AuthorizationCode: 60,
      RefreshToken: 24 * 3600,
      Grant: 24 * 3600,
      Interaction: 600,
      Session: 3600,
    },
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  });

  provider.on('grant.success', (ctx) => count(`grant.success.${ctx.oidc.params?.grant_type}`));
  provider.on('grant.error', (ctx, err) => count(`grant.error.${ctx.oidc?.params?.grant_type}.${err.error}`));
  provider.on('grant.revoked', () => count('grant.revoked'));
  provider.on('refresh_token.consumed', () => count('refresh_token.consumed'));
  provider.on('authorization.success', () => count('authorization.success'));
  provider.on('authorization.error', (_ctx, err) => count(`authorization.error.${err.error}`));
  provider.on('revocation.error', (_ctx, err) => count(`revocation.error.${err.error}`));
  provider.on('server_error', (_ctx, err) => { count('server_error'); console.error('server_error', err); });
  provider.on('grant.saved', (grant) => grants.add(grant.jti));

  // Counts every call the broker makes to the token and revocation
  // endpoints, with its answer's status, from the server's side.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method === 'POST' && (ctx.path === '/token' || ctx.path === '/token/revocation')) {
      const gt = ctx.oidc?.params?.grant_type;
      count(`POST ${ctx.path}${gt ? ` ${gt}` : ''} ${ctx.status}`);
    }
  });

  // The test-only interaction: log the fixed user in, then grant what the
  // client asked for.
  provider.use(async (ctx, next) => {
    if (ctx.path === '/test/counters' && ctx.method === 'GET') {
      ctx.type = 'application/json';
      ctx.body = JSON.stringify(counters);
      return;
    }
    if (ctx.path === '/test/revoke-grants' && ctx.method === 'POST') {
      for (const id of grants) {
        await Promise.all([provider.AccessToken, provider.RefreshToken, provider.AuthorizationCode]
          .map((m) => m.revokeByGrantId(id)).concat(provider.Grant.adapter.destroy(id)));
        count('test.grant_withdrawn');
      }
      grants.clear();
      ctx.status = 204;
      return;
    }
    if (!ctx.path.startsWith('/interaction/') || ctx.method !== 'GET') {
      await next();
      return;
    }
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params, session } = details;
    let result;
    if (prompt.name === 'login') {
      count('interaction.login');
      result = { login: { accountId: account } };
    } else if (prompt.name === 'consent') {
      count('interaction.consent');
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes || {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      result = { consent: { grantId: await grant.save() } };
    } else {
      ctx.status = 400;
      ctx.body = `unexpected prompt ${prompt.name}`;
      return;
    }
    ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true }));
    ctx.status = 303;
  });

  handler = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

// The test closes stdin (or dies): stop with it, so no server outlives it.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
