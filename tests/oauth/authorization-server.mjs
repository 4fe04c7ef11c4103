// The authorization server for the OAuth end-to-end test: oidc-provider on a loopback port,
// plain http (issuer http://127.0.0.1:<port>), with
//   - open dynamic client registration (the TypeScript MCP SDK registers itself),
//   - authorization code + PKCE (S256 only; required for public clients),
//   - resource indicators (RFC 8707): one resource server, the gateway's MCP endpoint, whose
//     access tokens are ES256-signed JWTs with `aud` = that resource and scope `mcp`,
//   - an extra access-token claim `tenant_id` (the gateway's `tenant_claim`),
//   - login and consent answered by this module (no pages, no user): the interaction URL is
//     served here and finishes the interaction at once, logging in `accountId` and granting
//     whatever OIDC scopes and resource scopes the consent prompt says are missing.
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

/** A private JWK (with `kid`, `alg`, `use`) for the provider's keystore. */
function signingKey(type, options, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: `${alg.toLowerCase()}-${randomBytes(4).toString('hex')}`, alg, use: 'sig' };
}

/**
 * Starts the provider. `resource` is the gateway's resource URI (the only resource indicator
 * accepted); `tenantId` goes into every access token as `tenant_id`.
 * Returns { issuer, metadata (its discovery document), jwksUri, provider, interactions, close() }; `interactions` counts the
 * prompts answered (e.g. { login: 1, consent: 1 }).
 */
export async function startAuthorizationServer({ resource, tenantId, scope = 'mcp', accountId = 'alice', accessTokenAlg = 'ES256' }) {
  const server = createServer();
  await new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolvePromise);
  });
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const interactions = {};

  const provider = new Provider(issuer, {
    // Dev keys are refused outside development mode and warned about inside it: our own.
    // RS256 for ID tokens (the default algorithm), ES256 for the resource server's JWTs.
    jwks: {
      keys: [
        signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
        signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
      ],
    },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    // `scope` must be listed for a client to register with it (the SDK registers with the
    // scope from the gateway's challenge).
    scopes: ['openid', 'offline_access', scope],
    clients: [],
    findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Without a `resource` parameter there is no access token for the gateway.
        defaultResource: () => undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          if (indicator !== resource) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
          return {
            scope,
            audience: resource,
            accessTokenTTL: 10 * 60,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: accessTokenAlg } },
          };
        },
      },
    },
    pkce: { required: () => true },
    extraTokenClaims: async () => ({ tenant_id: tenantId }),
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    ttl: {
      AccessToken: 10 * 60,
      AuthorizationCode: 60,
      Grant: 10 * 60,
      IdToken: 10 * 60,
      Interaction: 10 * 60,
      RefreshToken: 10 * 60,
      Session: 10 * 60,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  });

  /** GET /interaction/<uid>: finishes the pending prompt without a page. */
  async function interaction(req, res) {
    const details = await provider.interactionDetails(req, res);
    const { prompt, params } = details;
    interactions[prompt.name] = (interactions[prompt.name] ?? 0) + 1;
    if (prompt.name === 'login') {
      await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
      return;
    }
    if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      const grantId = await grant.save();
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return;
    }
    throw new Error(`unexpected prompt ${prompt.name}`);
  }

  const callback = provider.callback();
  server.on('request', (req, res) => {
    if (req.method === 'GET' && req.url.startsWith('/interaction/')) {
      interaction(req, res).catch((error) => {
        res.statusCode = 500;
        res.setHeader('Content-Type', 'text/plain');
        res.end(`interaction failed: ${error.stack ?? error}`);
      });
      return;
    }
    callback(req, res);
  });

  const discovery = await fetch(`${issuer}/.well-known/openid-configuration`);
  if (!discovery.ok) throw new Error(`${issuer} discovery: ${discovery.status}`);
  const metadata = await discovery.json();

  return {
    issuer,
    metadata,
    jwksUri: metadata.jwks_uri,
    provider,
    interactions,
    close: () => new Promise((resolvePromise) => {
      server.closeAllConnections();
      server.close(() => resolvePromise());
    }),
  };
}
