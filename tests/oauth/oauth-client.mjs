// The MCP client side of the OAuth test: an `OAuthClientProvider` for the TypeScript SDK that
// keeps everything in memory and plays the user agent. `redirectToAuthorization(url)` follows
// the authorization URL with fetch (manual redirects and a cookie jar, as a browser would)
// through the provider's login and consent interactions until the authorization server
// redirects to `redirectUrl`, then keeps the `code` from that redirect for `finishAuth`.
// Nothing listens on `redirectUrl`: the redirect is captured, not followed.
import { randomBytes } from 'node:crypto';

/** A fetch that records every request and response (for the test's assertions). */
export function recordingFetch(log) {
  return async (input, init = {}) => {
    const url = String(input instanceof Request ? input.url : input);
    const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
    const response = await fetch(input, init);
    log.push({
      method: init.method ?? (input instanceof Request ? input.method : 'GET'),
      url,
      authorization: headers.get('authorization'),
      body: typeof init.body === 'string' || init.body instanceof URLSearchParams ? String(init.body) : undefined,
      status: response.status,
      wwwAuthenticate: response.headers.get('www-authenticate'),
    });
    return response;
  };
}

/** Follows redirects from `start` until one goes to `redirectUrl`; returns that URL and the hops. */
export async function followAuthorization(start, redirectUrl, maxHops = 12) {
  const jar = new Map();
  const hops = [];
  let url = new URL(start);
  for (let hop = 0; hop < maxHops; hop += 1) {
    if (url.href.startsWith(redirectUrl)) return { callback: url, hops };
    const response = await fetch(url, {
      redirect: 'manual',
      headers: jar.size ? { cookie: [...jar].map(([name, value]) => `${name}=${value}`).join('; ') } : {},
    });
    for (const cookie of response.headers.getSetCookie()) {
      const pair = cookie.split(';', 1)[0];
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (value === '' || /expires=Thu, 01 Jan 1970/i.test(cookie)) jar.delete(name);
      else jar.set(name, value);
    }
    const location = response.headers.get('location');
    hops.push({ url: url.href, status: response.status, location });
    if (response.status < 300 || response.status >= 400 || !location) {
      const body = await response.text();
      throw new Error(`authorization stopped at ${url.href}: ${response.status} ${body.slice(0, 2000)}`);
    }
    url = new URL(location, url);
  }
  throw new Error(`no redirect to ${redirectUrl} after ${maxHops} hops: ${JSON.stringify(hops)}`);
}

export class InMemoryOAuthClientProvider {
  constructor(redirectUrl, clientName = 'palisade-oauth-test') {
    this._redirectUrl = redirectUrl;
    this._clientName = clientName;
    this._clientInformation = undefined;
    this._tokens = undefined;
    this._codeVerifier = undefined;
    this._state = undefined;
    this._discovery = undefined;
    /** Set by redirectToAuthorization: the authorization URL, the hops, the code. */
    this.authorizationUrl = undefined;
    this.hops = [];
    this.authorizationCode = undefined;
  }

  get redirectUrl() {
    return this._redirectUrl;
  }

  get clientMetadata() {
    return {
      client_name: this._clientName,
      application_type: 'native',
      redirect_uris: [this._redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }

  state() {
    this._state = randomBytes(16).toString('base64url');
    return this._state;
  }

  clientInformation() {
    return this._clientInformation;
  }

  saveClientInformation(information) {
    this._clientInformation = information;
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this._tokens = tokens;
  }

  saveCodeVerifier(codeVerifier) {
    this._codeVerifier = codeVerifier;
  }

  codeVerifier() {
    if (!this._codeVerifier) throw new Error('no code verifier saved');
    return this._codeVerifier;
  }

  saveDiscoveryState(state) {
    this._discovery = state;
  }

  discoveryState() {
    return this._discovery;
  }

  async redirectToAuthorization(authorizationUrl) {
    this.authorizationUrl = new URL(authorizationUrl);
    const { callback, hops } = await followAuthorization(authorizationUrl, this._redirectUrl);
    this.hops = hops;
    const error = callback.searchParams.get('error');
    if (error) {
      throw new Error(`authorization failed: ${error}: ${callback.searchParams.get('error_description')}`);
    }
    if (callback.searchParams.get('state') !== this._state) {
      throw new Error(`state mismatch in ${callback.href}`);
    }
    this.authorizationCode = callback.searchParams.get('code');
    if (!this.authorizationCode) throw new Error(`no code in ${callback.href}`);
  }
}

/** The decoded header and payload of a compact JWS (no verification). */
export function decodeJwt(token) {
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error(`not a JWS: ${parts.length} parts`);
  const [header, payload] = parts.slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  return { header, payload };
}

/**
 * The token with exactly one character of its payload segment replaced, chosen so that the
 * payload still decodes to a JSON object whose claims are the original ones except `claim`
 * (the token id by default): a well-formed token, same issuer, audience, scope, tenant and
 * expiry, whose signature no longer matches.
 */
export function tamperPayload(token, claim = 'jti') {
  const [header, payload, signature] = token.split('.');
  const original = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  const others = JSON.stringify({ ...original, [claim]: undefined });
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  // The last character may only carry padding bits; leave it alone.
  for (let index = 0; index < payload.length - 1; index += 1) {
    for (const replacement of alphabet) {
      if (replacement === payload[index]) continue;
      const candidate = payload.slice(0, index) + replacement + payload.slice(index + 1);
      let parsed;
      try {
        parsed = JSON.parse(Buffer.from(candidate, 'base64url').toString('utf8'));
      } catch {
        continue; // not JSON any more: try the next replacement
      }
      if (parsed?.[claim] !== original[claim] && typeof parsed?.[claim] === 'string'
        && JSON.stringify({ ...parsed, [claim]: undefined }) === others) {
        return `${header}.${candidate}.${signature}`;
      }
    }
  }
  throw new Error(`no single-character change alters only ${claim}`);
}
