// Lists the tools of a gateway tenant and calls one, with an official TypeScript MCP client, for
// tests written in Python that want the TypeScript SDK as well (test_ecosystem.py):
//
//   node call.mjs --url URL --key KEY --era legacy|modern --tool NAME [--args JSON]
//
// legacy: @modelcontextprotocol/sdk 1.32.2 (the 2025-11-25 handshake); modern:
// @modelcontextprotocol/client 2.4.0, required to land on 2026-07-28. Prints one JSON line,
// {"tools": [names], "result": the call's result}; exits non-zero on any error.
import { parseArgs } from 'node:util';
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport as TransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Client as ClientV2, StreamableHTTPClientTransport as TransportV2 } from '@modelcontextprotocol/client';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    key: { type: 'string' },
    era: { type: 'string', default: 'legacy' },
    tool: { type: 'string' },
    args: { type: 'string', default: '{}' },
  },
});
const info = { name: 'palisade-call', version: '1.0.0' };
const requestInit = { headers: { Authorization: `Bearer ${values.key}` } };
const url = new URL(values.url);

const client = values.era === 'modern'
  ? new ClientV2(info, { capabilities: {}, versionNegotiation: { mode: { pin: '2026-07-28' } } })
  : new ClientV1(info, { capabilities: {} });
const transport = values.era === 'modern' ? new TransportV2(url, { requestInit }) : new TransportV1(url, { requestInit });
await client.connect(transport);
try {
  const tools = (await client.listTools()).tools.map((t) => t.name);
  const result = await client.callTool({ name: values.tool, arguments: JSON.parse(values.args) });
  console.log(JSON.stringify({ tools, result }));
} finally {
  await client.close();
}
