// Starts the gateway in front of upstreams we did not write, for third_party.test.mjs: the
// fixture servers of tests/servers, built on the official SDKs.
//
//   python-http   tests/servers/everything.py (Python SDK) over Streamable HTTP, started here
//   ts-http       tests/servers/ts/everything.mjs (TypeScript SDK v2) over Streamable HTTP, started here
//   python-stdio  tests/servers/everything.py over stdio, started by the gateway
//
// Each upstream is the one server of its own tenant, namespacing on (py__test_sampling,
// py+test://watched-resource). PALISADE_THIRD_PARTY_DIRECT=1 adds python-http-direct and
// ts-http-direct: the fixture servers without the gateway, to tell a gateway defect from a test's.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { binDir, keyHash, waitForLine } from './gateway.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
const servers = join(repo, 'tests', 'servers');
const python = process.env.PALISADE_PYTHON || join(repo, 'tests', 'clients', '.venv', 'bin', 'python');

export const UPSTREAMS = ['python-http', 'ts-http', 'python-stdio'];
if (process.env.PALISADE_THIRD_PARTY_DIRECT === '1') UPSTREAMS.push('python-http-direct', 'ts-http-direct');

/** Where a test connects, and how the upstream's names look there (`server` null: directly). */
export class Target {
  constructor(url, key, server) {
    Object.assign(this, { url, key, server });
  }
  /** A tool or prompt name as the client sees it. */
  name(name) {
    return this.server ? `${this.server}__${name}` : name;
  }
  /** A resource URI as the client sees it. */
  uri(uri) {
    return this.server ? `${this.server}+${uri}` : uri;
  }
}

/** Ends a child: SIGTERM, SIGKILL after 15 s; resolves to its exit code (null if killed). */
function stopChild(child) {
  return new Promise((resolvePromise) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolvePromise(child.exitCode);
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolvePromise(null); }, 15000);
    child.once('exit', (code) => { clearTimeout(timer); resolvePromise(code); });
    child.kill('SIGTERM');
  });
}

/** Starts both fixture servers over HTTP and a gateway with one tenant per upstream. */
export async function startThirdParty() {
  const palisade = join(binDir, 'palisade');
  if (!existsSync(palisade)) throw new Error(`${palisade} is missing: run cargo build -p palisade`);
  if (!existsSync(python)) throw new Error(`${python} is missing: source tests/clients/venv.sh; palisade_venv`);
  if (!existsSync(join(servers, 'ts', 'node_modules', '@modelcontextprotocol', 'server'))) {
    throw new Error('the TypeScript fixture server needs `npm ci` in tests/servers/ts');
  }
  const dir = mkdtempSync(join(tmpdir(), 'palisade-third-party-'));
  const children = [];
  const stop = async () => {
    const codes = [];
    for (const child of children.reverse()) codes.push(await stopChild(child));
    return codes;
  };
  try {
    const urls = {};
    for (const [name, command, args] of [
      ['python-http', python, [join(servers, 'everything.py'), 'http', '--port', '0']],
      ['ts-http', process.execPath, [join(servers, 'ts', 'everything.mjs'), 'http', '--port', '0']],
    ]) {
      const child = spawn(command, args, { stdio: ['ignore', 'pipe', openSync(join(dir, `${name}.stderr`), 'w')] });
      children.push(child);
      urls[name] = (await waitForLine(child, 'listening on ', name)).split(' ').at(-1);
    }

    const pepper = randomBytes(32).toString('hex');
    writeFileSync(join(dir, 'pepper'), pepper + '\n');
    const keys = Object.fromEntries(['pyhttp', 'tshttp', 'pystdio'].map((t) => [t, `pal_${t}_` + randomBytes(32).toString('base64url')]));
    writeFileSync(join(dir, 'palisade.toml'), `
[listen]
mcp = "127.0.0.1:0"
admin = "127.0.0.1:0"

[auth]
pepper_file = "${join(dir, 'pepper')}"

[[servers]]
name = "py"
[servers.http]
url = "${urls['python-http']}"

[[servers]]
name = "ts"
[servers.http]
url = "${urls['ts-http']}"

[[servers]]
name = "pyio"
[servers.stdio]
command = "${python}"
args = ["${join(servers, 'everything.py')}", "stdio"]
env = { HOME = "/tmp" }

[[tenants]]
id = "pyhttp"
servers = ["py"]
keys = ["${keyHash(pepper, keys.pyhttp)}"]

[[tenants]]
id = "tshttp"
servers = ["ts"]
keys = ["${keyHash(pepper, keys.tshttp)}"]

[[tenants]]
id = "pystdio"
servers = ["pyio"]
keys = ["${keyHash(pepper, keys.pystdio)}"]
`);
    const logPath = join(dir, 'palisade.stderr');
    const gateway = spawn(palisade, ['serve', '--config', join(dir, 'palisade.toml')], {
      stdio: ['ignore', 'pipe', openSync(logPath, 'w')],
    });
    children.push(gateway);
    let line;
    try {
      line = await waitForLine(gateway, 'palisade listening ', 'palisade serve');
    } catch (error) {
      throw new Error(`${error.message}\n${readFileSync(logPath, 'utf8').slice(-3000)}`);
    }
    const mcp = Object.fromEntries(line.split(' ').slice(2).map((part) => part.split(/=(.*)/s).slice(0, 2))).mcp;
    return {
      targets: {
        'python-http': new Target(mcp, keys.pyhttp, 'py'),
        'ts-http': new Target(mcp, keys.tshttp, 'ts'),
        'python-stdio': new Target(mcp, keys.pystdio, 'pyio'),
        'python-http-direct': new Target(urls['python-http'], 'unused', null),
        'ts-http-direct': new Target(urls['ts-http'], 'unused', null),
      },
      logPath,
      /** Stops the gateway (first) and the fixture servers; resolves to the gateway's exit code. */
      stop: async () => (await stop())[0],
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
