// OAuth end to end: oidc-provider as the authorization server, the official TypeScript MCP SDK
// (1.32.2) as the client, the Palisade gateway as the resource server, all on loopback ports.
//
// The SDK starts with no credentials: the gateway's 401 challenge points it at the protected
// resource metadata, which names the issuer; the SDK reads the issuer's metadata, registers
// itself, runs authorization code + PKCE with the gateway's resource indicator (login and
// consent are answered by authorization-server.mjs), exchanges the code, and reconnects with an
// ES256 JWT access token carrying `aud` = the gateway's resource and `tenant_id` = acme. The
// gateway maps it to tenant acme, whose testkit tools are then listed and called.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { startAuthorizationServer } from './authorization-server.mjs';
import { freePort, startGateway } from './gateway.mjs';
import { InMemoryOAuthClientProvider, decodeJwt, recordingFetch, tamperPayload } from './oauth-client.mjs';

const TENANT = 'acme';
const SCOPE = 'mcp';
const PROTOCOL_VERSION = '2025-11-25';

let as;
let gateway;
let resource;
let client;
let accessToken;

before(async () => {
  const mcpPort = await freePort();
  resource = `http://127.0.0.1:${mcpPort}/mcp`;
  as = await startAuthorizationServer({ resource, tenantId: TENANT, scope: SCOPE });
  console.log(`# authorization server ${as.issuer}, JWKS ${as.jwksUri}`);
  gateway = await startGateway({ mcpPort, issuer: as.issuer });
  console.log(`# gateway ${gateway.url} (admin ${gateway.admin}, log ${gateway.logPath})`);
});

after(async () => {
  await client?.close().catch(() => {});
  let code;
  if (gateway) code = await gateway.stop();
  await as?.close();
  if (gateway) {
    assert.equal(code, 0, `palisade did not exit 0 within 15 s of SIGTERM (log: ${gateway.logPath})`);
    gateway.remove();
  }
});

/** The auth-params of a `Bearer` WWW-Authenticate challenge, as an object. */
function bearerParams(header) {
  assert.ok(header, 'WWW-Authenticate present');
  assert.match(header, /^Bearer\b/i, header);
  const params = {};
  for (const match of header.matchAll(/([A-Za-z_]+)="((?:[^"\\]|\\.)*)"/g)) params[match[1]] = match[2];
  return params;
}

/** A plain-fetch MCP initialize, optionally with a bearer token. */
function initialize(token) {
  const headers = { Accept: 'application/json, text/event-stream', 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(gateway.url, {
    method: 'POST',
    headers,
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'palisade-oauth-fetch', version: '1.0.0' } },
    }),
  });
}

test('protected resource metadata names the resource, the issuer and the scope', async () => {
  for (const path of ['/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource']) {
    const response = await fetch(`${gateway.origin}${path}`);
    assert.equal(response.status, 200, path);
    assert.match(response.headers.get('content-type') ?? '', /^application\/json/, path);
    const metadata = await response.json();
    assert.equal(metadata.resource, resource, `${path}: ${JSON.stringify(metadata)}`);
    assert.ok(metadata.authorization_servers?.includes(as.issuer), `${path}: ${JSON.stringify(metadata)}`);
    assert.ok(metadata.scopes_supported?.includes(SCOPE), `${path}: ${JSON.stringify(metadata)}`);
  }
});

test('the TypeScript SDK authorizes with the provider and calls a tool through the gateway', { timeout: 60000 }, async () => {
  const redirectUrl = `http://127.0.0.1:${await freePort()}/callback`;
  const provider = new InMemoryOAuthClientProvider(redirectUrl);
  const log = [];
  const fetchFn = recordingFetch(log);

  // 1. No token: connect fails with UnauthorizedError after the SDK has run the whole
  //    authorization (discovery, registration, authorization request, redirect captured).
  client = new Client({ name: 'palisade-oauth-test', version: '1.0.0' });
  const first = new StreamableHTTPClientTransport(new URL(gateway.url), { authProvider: provider, fetch: fetchFn });
  await assert.rejects(client.connect(first), UnauthorizedError);
  await first.close().catch(() => {});

  // The first request: unauthenticated, answered 401 with the challenge.
  const challenge = log[0];
  assert.equal(challenge.url, gateway.url);
  assert.equal(challenge.authorization, null);
  assert.equal(challenge.status, 401, JSON.stringify(challenge));
  const params = bearerParams(challenge.wwwAuthenticate);
  const prmUrl = `${gateway.origin}/.well-known/oauth-protected-resource/mcp`;
  assert.equal(params.resource_metadata, prmUrl, challenge.wwwAuthenticate);
  assert.equal(params.scope, SCOPE, challenge.wwwAuthenticate);

  // Discovery went gateway PRM → issuer metadata → registration, in that order.
  const urls = log.map((entry) => `${entry.method} ${entry.url} ${entry.status}`);
  const prmIndex = urls.indexOf(`GET ${prmUrl} 200`);
  const registrationIndex = urls.indexOf(`POST ${as.metadata.registration_endpoint} 201`);
  assert.ok(prmIndex > 0, urls.join('\n'));
  assert.ok(registrationIndex > prmIndex, urls.join('\n'));
  assert.ok(urls.slice(prmIndex, registrationIndex).some((line) => line.startsWith(`GET ${as.issuer}/.well-known/`) && line.endsWith(' 200')), urls.join('\n'));
  assert.ok(provider.clientInformation()?.client_id, 'dynamically registered client_id');

  // The authorization request: PKCE S256, the gateway's resource, the challenged scope.
  const authorization = provider.authorizationUrl;
  assert.equal(authorization.origin + authorization.pathname, as.metadata.authorization_endpoint);
  assert.equal(authorization.searchParams.get('code_challenge_method'), 'S256');
  assert.ok(authorization.searchParams.get('code_challenge'));
  assert.equal(authorization.searchParams.get('resource'), resource);
  assert.equal(authorization.searchParams.get('scope'), SCOPE);
  assert.deepEqual(as.interactions, { login: 1, consent: 1 });
  assert.ok(provider.authorizationCode, 'authorization code captured from the redirect');

  // 2. Code → token (with the code verifier and the resource).
  await first.finishAuth(provider.authorizationCode);
  const tokens = provider.tokens();
  assert.equal(tokens?.token_type?.toLowerCase(), 'bearer', JSON.stringify(tokens));
  accessToken = tokens.access_token;
  const { header, payload } = decodeJwt(accessToken);
  assert.equal(header.alg, 'ES256');
  assert.equal(payload.iss, as.issuer);
  const audience = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
  assert.ok(audience.includes(resource), `aud ${JSON.stringify(payload.aud)}`);
  assert.equal(payload.tenant_id, TENANT);
  assert.equal(payload.scope, SCOPE);
  const tokenRequest = log.find((entry) => entry.url === as.metadata.token_endpoint);
  assert.equal(tokenRequest?.status, 200);
  const tokenForm = new URLSearchParams(tokenRequest.body);
  assert.equal(tokenForm.get('grant_type'), 'authorization_code');
  assert.equal(tokenForm.get('resource'), resource);
  assert.ok(tokenForm.get('code_verifier'));

  // 3. Reconnect with the token; every MCP request from here on carries it.
  const mark = log.length;
  client = new Client({ name: 'palisade-oauth-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(gateway.url), { authProvider: provider, fetch: fetchFn }));
  assert.equal(client.getServerVersion()?.name, 'palisade');

  const { tools } = await client.listTools();
  const names = tools.map((tool) => tool.name);
  assert.ok(names.includes('echo'), names.join(','));

  const result = await client.callTool({ name: 'echo', arguments: { message: 'hi' } });
  assert.notEqual(result.isError, true, JSON.stringify(result));
  assert.equal(result.content[0]?.type, 'text', JSON.stringify(result));
  assert.equal(result.content[0].text, 'hi');

  const mcpRequests = log.slice(mark).filter((entry) => entry.url === gateway.url);
  assert.ok(mcpRequests.length >= 3, JSON.stringify(mcpRequests));
  for (const entry of mcpRequests) {
    assert.equal(entry.authorization, `Bearer ${accessToken}`);
    // A GET (the optional server-to-client stream) may be declined with 405.
    assert.ok(entry.status < 300 || (entry.method === 'GET' && entry.status === 405), JSON.stringify(entry));
  }
});

test('a token with one payload character changed is refused with invalid_token', async () => {
  assert.ok(accessToken, 'the previous test obtained a token');

  // Control: the untouched token initializes.
  const good = await initialize(accessToken);
  const goodBody = await good.text();
  assert.equal(good.status, 200, goodBody);

  const tampered = tamperPayload(accessToken);
  assert.notEqual(tampered, accessToken);
  const response = await initialize(tampered);
  const body = await response.text();
  assert.equal(response.status, 401, body);
  const params = bearerParams(response.headers.get('www-authenticate'));
  assert.equal(params.error, 'invalid_token', response.headers.get('www-authenticate'));
  assert.equal(params.resource_metadata, `${gateway.origin}/.well-known/oauth-protected-resource/mcp`);
});

test('no token, or a token that is not a JWT, gets the 401 challenge', async () => {
  const none = await initialize();
  assert.equal(none.status, 401, await none.text());
  const noneParams = bearerParams(none.headers.get('www-authenticate'));
  assert.equal(noneParams.resource_metadata, `${gateway.origin}/.well-known/oauth-protected-resource/mcp`);

  const garbage = await initialize('not-a-jwt');
  assert.equal(garbage.status, 401, await garbage.text());
  assert.equal(bearerParams(garbage.headers.get('www-authenticate')).error, 'invalid_token');
});
