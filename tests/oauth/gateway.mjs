// Starts `palisade serve` as the OAuth resource server for the test: tenant `acme` (server
// "kit" = palisade-testkit over stdio, namespacing off, so the tools keep their own names),
// authenticated by access tokens from one issuer whose `tenant_id` claim names the tenant.
// Binaries come from $PALISADE_BIN_DIR (default: <repo>/target/debug).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const binDir = process.env.PALISADE_BIN_DIR || join(repo, 'target', 'debug');

/** A loopback port that was free a moment ago. */
export function freePort() {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePromise(port));
    });
  });
}

const sleep = (ms) => new Promise((resolvePromise) => setTimeout(resolvePromise, ms));

/** The gateway's TOML for one issuer and the testkit tenant. */
export function gatewayConfig({ mcpPort, adminPort, dir, issuer, testkit }) {
  return `[listen]
mcp = "127.0.0.1:${mcpPort}"
admin = "127.0.0.1:${adminPort}"

[storage]
database_url = "sqlite://${join(dir, 'palisade.db')}"

[oauth]
resource = "http://127.0.0.1:${mcpPort}/mcp"
scopes_supported = ["mcp"]
required_scopes = ["mcp"]

[[oauth.issuers]]
issuer = "${issuer}"
tenant_claim = "/tenant_id"

[[servers]]
name = "kit"
[servers.stdio]
command = "${testkit}"
args = ["stdio"]
env = { HOME = "/tmp" }

[[tenants]]
id = "acme"
servers = ["kit"]
namespacing = false
`;
}

/**
 * Writes the config to a temporary directory, checks it with `palisade check`, starts
 * `palisade serve` and waits for the admin listener's /healthz. `mcpPort` is chosen by the
 * caller (the resource URI, and so the authorization server, need it first).
 */
export async function startGateway({ mcpPort, issuer, readyTimeoutMs = 30000 }) {
  const palisade = join(binDir, 'palisade');
  const testkit = join(binDir, 'palisade-testkit');
  for (const bin of [palisade, testkit]) {
    if (!existsSync(bin)) throw new Error(`${bin} is missing: run cargo build -p palisade -p testkit`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'palisade-oauth-'));
  const adminPort = await freePort();
  const configPath = join(dir, 'palisade.toml');
  writeFileSync(configPath, gatewayConfig({ mcpPort, adminPort, dir, issuer, testkit }));

  const check = spawnSync(palisade, ['check', '--config', configPath], { encoding: 'utf8' });
  if (check.status !== 0) {
    throw new Error(`palisade check --config ${configPath} exited ${check.status}:\n${check.stdout}${check.stderr}`);
  }

  const logPath = join(dir, 'palisade.log');
  const log = openSync(logPath, 'w');
  const child = spawn(palisade, ['serve', '--config', configPath], { stdio: ['ignore', log, log] });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const logTail = () => readFileSync(logPath, 'utf8').slice(-4000);

  const admin = `http://127.0.0.1:${adminPort}`;
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`palisade serve exited (${child.exitCode ?? child.signalCode}) before /healthz answered:\n${logTail()}`);
    }
    try {
      const response = await fetch(`${admin}/healthz`);
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`palisade /healthz not ready within ${readyTimeoutMs} ms:\n${logTail()}`);
    }
    await sleep(100);
  }

  return {
    url: `http://127.0.0.1:${mcpPort}/mcp`,
    origin: `http://127.0.0.1:${mcpPort}`,
    admin,
    dir,
    configPath,
    logPath,
    logTail,
    /** SIGTERM, then the exit code (null if it needed SIGKILL after 15 s); removes the directory. */
    stop: () => new Promise((resolvePromise) => {
      const done = (code) => {
        process.removeListener('exit', killOnExit);
        resolvePromise(code);
      };
      if (child.exitCode !== null || child.signalCode !== null) return done(child.exitCode);
      const timer = setTimeout(() => { child.kill('SIGKILL'); done(null); }, 15000);
      child.once('exit', (code) => { clearTimeout(timer); done(code); });
      child.kill('SIGTERM');
    }),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
