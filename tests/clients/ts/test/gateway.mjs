// Starts `palisade serve` for the TypeScript client tests: one tenant (acme) whose
// server "kit" is palisade-testkit over stdio, namespacing on (tools are kit__*).
// Binaries come from $PALISADE_BIN_DIR (default: <repo>/target/debug).
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, existsSync, readFileSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const binDir = process.env.PALISADE_BIN_DIR || join(repo, 'target', 'debug');

/** hex(HMAC-SHA256(key = pepper, msg = API key)) in the config's form. */
export function keyHash(pepper, key) {
  return 'hmac-sha256:' + createHmac('sha256', pepper).update(key).digest('hex');
}

/** Waits for the first stdout line that starts with `prefix`. */
export function waitForLine(child, prefix, what, timeoutMs = 30000) {
  return new Promise((resolvePromise, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`${what} did not print "${prefix}" in ${timeoutMs} ms`)), timeoutMs);
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code} before it was ready`)));
    lines.on('line', (line) => {
      if (line.startsWith(prefix)) {
        clearTimeout(timer);
        resolvePromise(line);
      }
    });
  });
}

/** Writes a config (pepper, key hashes, one tenant) and starts the gateway. */
export async function startGateway() {
  const palisade = join(binDir, 'palisade');
  const testkit = join(binDir, 'palisade-testkit');
  for (const bin of [palisade, testkit]) {
    if (!existsSync(bin)) throw new Error(`${bin} is missing: run cargo build -p palisade -p testkit`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'palisade-ts-'));
  const pepper = randomBytes(32).toString('hex');
  writeFileSync(join(dir, 'pepper'), pepper + '\n');
  const key = 'pal_acme_' + randomBytes(32).toString('base64url');
  writeFileSync(join(dir, 'palisade.toml'), `
[listen]
mcp = "127.0.0.1:0"
admin = "127.0.0.1:0"

[auth]
pepper_file = "${join(dir, 'pepper')}"

[[servers]]
name = "kit"
[servers.stdio]
command = "${testkit}"
args = ["stdio"]
env = { HOME = "/tmp" }

[[tenants]]
id = "acme"
servers = ["kit"]
keys = ["${keyHash(pepper, key)}"]
`);
  const logPath = join(dir, 'palisade.stderr');
  const child = spawn(palisade, ['serve', '--config', join(dir, 'palisade.toml')], {
    stdio: ['ignore', 'pipe', openSync(logPath, 'w')],
  });
  let line;
  try {
    line = await waitForLine(child, 'palisade listening ', 'palisade serve');
  } catch (error) {
    child.kill('SIGKILL');
    throw new Error(`${error.message}\n${readFileSync(logPath, 'utf8').slice(-3000)}`);
  }
  const fields = Object.fromEntries(line.split(' ').slice(2).map((part) => part.split(/=(.*)/s).slice(0, 2)));
  return {
    url: fields.mcp,
    key,
    logPath,
    /** SIGTERM, then the exit code (null if it needed SIGKILL after 15 s). */
    stop: () => new Promise((resolvePromise) => {
      if (child.exitCode !== null) return resolvePromise(child.exitCode);
      const timer = setTimeout(() => { child.kill('SIGKILL'); resolvePromise(null); }, 15000);
      child.once('exit', (code) => { clearTimeout(timer); resolvePromise(code); });
      child.kill('SIGTERM');
    }),
  };
}
