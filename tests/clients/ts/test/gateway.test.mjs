// The official TypeScript MCP SDK (1.32.2, legacy era 2025-11-25) against the Palisade gateway.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema, McpError } from '@modelcontextprotocol/sdk/types.js';
import { startGateway } from './gateway.mjs';

let gateway;
let client;
const samplingRequests = [];

before(async () => {
  gateway = await startGateway();
  client = new Client({ name: 'palisade-ts-test', version: '1.0.0' }, { capabilities: { sampling: {} } });
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
    const prompt = request.params.messages[0].content.text;
    samplingRequests.push(prompt);
    return { role: 'assistant', model: 'ts-test-model', content: { type: 'text', text: `ts sampled: ${prompt}` } };
  });
  const transport = new StreamableHTTPClientTransport(new URL(gateway.url), {
    requestInit: { headers: { Authorization: `Bearer ${gateway.key}` } },
  });
  await client.connect(transport);
});

after(async () => {
  await client?.close();
  if (gateway) {
    const code = await gateway.stop();
    assert.equal(code, 0, `palisade did not exit 0 within 15 s of SIGTERM (log: ${gateway.logPath})`);
  }
});

const textOf = (result) => {
  assert.equal(result.content[0]?.type, 'text', JSON.stringify(result));
  return result.content[0].text;
};

test('connects in the legacy era with a session', () => {
  assert.equal(client.getServerVersion()?.name, 'palisade');
  assert.ok(client.getServerCapabilities()?.tools, 'tools capability');
  assert.ok(client.transport.sessionId, 'Mcp-Session-Id issued');
});

test('listTools returns namespaced names', async () => {
  const { tools } = await client.listTools();
  const names = tools.map((tool) => tool.name);
  assert.ok(names.includes('kit__echo'), names.join(','));
  assert.ok(names.includes('kit__add'));
  assert.ok(names.every((name) => name.startsWith('kit__')), names.join(','));
});

test('callTool kit__echo', async () => {
  const result = await client.callTool({ name: 'kit__echo', arguments: { message: 'hello from ts' } });
  assert.notEqual(result.isError, true);
  assert.equal(textOf(result), 'hello from ts');
});

test('callTool kit__add has structured content', async () => {
  const result = await client.callTool({ name: 'kit__add', arguments: { a: 1.5, b: 2 } });
  assert.deepEqual(result.structuredContent, { sum: 3.5 });
});

test('readResource kit+test://static-text', async () => {
  const result = await client.readResource({ uri: 'kit+test://static-text' });
  assert.equal(result.contents.length, 1);
  assert.equal(result.contents[0].uri, 'kit+test://static-text');
  assert.equal(result.contents[0].text, 'This is the content of the static text resource.');
});

test('getPrompt kit__test_prompt_with_arguments', async () => {
  const result = await client.getPrompt({ name: 'kit__test_prompt_with_arguments', arguments: { arg1: 'a', arg2: 'b' } });
  assert.equal(result.messages[0].content.text, "Prompt with arguments: arg1='a', arg2='b'");
});

test('progress notifications reach onprogress', async () => {
  const seen = [];
  const result = await client.callTool({ name: 'kit__progress', arguments: { steps: 3 } }, undefined, {
    onprogress: (progress) => seen.push([progress.progress, progress.total]),
  });
  assert.equal(textOf(result), 'done');
  assert.deepEqual(seen, [[1, 3], [2, 3], [3, 3]]);
});

test('sampling/createMessage is relayed to the client handler', async () => {
  samplingRequests.length = 0;
  const result = await client.callTool({ name: 'kit__sampling', arguments: { prompt: 'capital of France?' } });
  assert.deepEqual(samplingRequests, ['capital of France?']);
  assert.notEqual(result.isError, true, JSON.stringify(result));
  assert.equal(textOf(result), 'ts sampled: capital of France?');
});

test('unknown tool is a JSON-RPC error', async () => {
  await assert.rejects(
    client.callTool({ name: 'kit__no_such_tool', arguments: {} }),
    (error) => error instanceof McpError && error.code === -32602,
  );
});
