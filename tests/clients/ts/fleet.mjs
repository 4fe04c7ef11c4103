// One client session of the official TypeScript SDK against a fleet's load balancer, calling
// until a stop file appears and at least --calls calls are made, for tests/clients/test_fleet.py:
//
//   node fleet.mjs --url URL --key KEY --era legacy|modern --label L --stop FILE [--calls 200]
//
// legacy: @modelcontextprotocol/sdk 1.32.2 (one session, 2025-11-25); modern:
// @modelcontextprotocol/client 2.4.0 on 2026-07-28. Each call is `kit__count` with message
// `L-<n>` (the test server notes each execution); every 10th is a progress call, every 25th a
// sampling round trip, every 20th a log at `warning`. Prints one JSON line: calls, failures
// (call, message), progress and sampling round trips seen, logs seen, the session id at the start
// and at the end (legacy: a session lost would change it or fail every later call).
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport as TransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema, LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import {
  Client as ClientV2,
  LOG_LEVEL_META_KEY,
  StreamableHTTPClientTransport as TransportV2,
} from '@modelcontextprotocol/client';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    key: { type: 'string' },
    era: { type: 'string', default: 'legacy' },
    label: { type: 'string' },
    stop: { type: 'string' },
    calls: { type: 'string', default: '200' },
  },
});
const info = { name: 'palisade-fleet', version: '1.0.0' };
const requestInit = { headers: { Authorization: `Bearer ${values.key}` } };
const url = new URL(values.url);
const modern = values.era === 'modern';
const seen = { sampling: 0, logs: 0 };
const sample = (request) => {
  seen.sampling++;
  const prompt = request.params.messages[0].content.text;
  return { role: 'assistant', model: 'fleet', content: { type: 'text', text: `sampled<${prompt}>` } };
};

let client;
let transport;
if (modern) {
  client = new ClientV2(info, { capabilities: { sampling: {} }, versionNegotiation: { mode: { pin: '2026-07-28' } } });
  client.setRequestHandler('sampling/createMessage', sample);
  client.setNotificationHandler('notifications/message', () => seen.logs++);
  transport = new TransportV2(url, { requestInit });
} else {
  client = new ClientV1(info, { capabilities: { sampling: {} } });
  client.setRequestHandler(CreateMessageRequestSchema, sample);
  client.setNotificationHandler(LoggingMessageNotificationSchema, () => seen.logs++);
  transport = new TransportV1(url, { requestInit });
}
await client.connect(transport);
if (!modern) await client.setLoggingLevel('info');
const sessionAtStart = transport.sessionId ?? null;

const want = Number(values.calls);
const failures = [];
let progress = 0;
let sampled = 0;
let n = 0;
for (; n < want || !existsSync(values.stop); n++) {
  const meta = modern ? { _meta: { [LOG_LEVEL_META_KEY]: 'info' } } : {};
  try {
    if (n % 25 === 24) {
      const r = await client.callTool({ name: 'kit__sampling', arguments: { prompt: `${values.label}-${n}` }, ...meta });
      if (r.content?.[0]?.text === `sampled<${values.label}-${n}>`) sampled++;
      else failures.push([n, `sampling answered ${JSON.stringify(r)}`]);
    } else if (n % 20 === 19) {
      await client.callTool({ name: 'kit__log', arguments: { message: `${values.label}-${n}`, level: 'warning' }, ...meta });
    } else if (n % 10 === 9) {
      let got = 0;
      const params = { name: 'kit__progress', arguments: { steps: 3 }, ...meta };
      const options = { onprogress: () => got++ };
      await (modern ? client.callTool(params, options) : client.callTool(params, undefined, options));
      if (got === 3) progress++;
      else failures.push([n, `progress: ${got} of 3 notifications`]);
    } else {
      const r = await client.callTool({ name: 'kit__count', arguments: { message: `${values.label}-${n}` }, ...meta });
      if (r.isError) failures.push([n, `count: ${JSON.stringify(r.content)}`]);
    }
  } catch (e) {
    failures.push([n, String(e?.message ?? e)]);
  }
}
const sessionAtEnd = transport.sessionId ?? null;
await client.close().catch(() => {});
console.log(JSON.stringify({ calls: n, failures, progress, sampled, logs: seen.logs, sessionAtStart, sessionAtEnd }));
