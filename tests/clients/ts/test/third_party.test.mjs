// The official TypeScript MCP SDK against the gateway in front of upstreams we did not write
// (the fixture servers of tests/servers, on the official Python and TypeScript SDKs):
//   - @modelcontextprotocol/sdk 1.32.2 (v1 client): legacy era, 2025-11-25, with a session;
//   - @modelcontextprotocol/client 2.4.0 (v2 client): modern era, 2026-07-28, stateless.
// Every feature runs against every upstream (python-http, ts-http, python-stdio): progress,
// logging, sampling, elicitation (form and URL mode), roots, resources with subscriptions,
// prompts and completion.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport as TransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import {
  Client as ClientV2,
  LOG_LEVEL_META_KEY,
  StreamableHTTPClientTransport as TransportV2,
} from '@modelcontextprotocol/client';
import { startThirdParty, UPSTREAMS } from './third_party.mjs';

/** How long a test waits for something that should arrive (a notification, an update). */
const DEADLINE_MS = 15000;
const WATCHED = 'test://watched-resource';
const AUTHORIZE_URL = 'https://example.com/palisade/authorize';

let env;

before(async () => {
  env = await startThirdParty();
});

after(async () => {
  if (env) {
    const code = await env.stop();
    assert.equal(code, 0, `palisade did not exit 0 within 15 s of SIGTERM (log: ${env.logPath})`);
  }
});

/** Resolves with the first value pushed after it was asked for, or rejects after DEADLINE_MS. */
class Arrivals {
  values = [];
  #waiters = [];
  push(value) {
    this.values.push(value);
    for (const wake of this.#waiters.splice(0)) wake();
  }
  /** Waits until `predicate(values)` holds. */
  until(predicate, what) {
    return new Promise((resolvePromise, reject) => {
      const check = () => {
        if (predicate(this.values)) {
          clearTimeout(timer);
          resolvePromise(this.values);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => reject(new Error(`${what}: not within ${DEADLINE_MS} ms; saw ${JSON.stringify(this.values)}`)), DEADLINE_MS);
      if (check()) return;
      const wait = () => { if (!check()) this.#waiters.push(wait); };
      this.#waiters.push(wait);
    });
  }
}

/** What a connected client was asked and told. */
function recorder() {
  return { sampling: [], elicitation: [], roots: 0, logs: [], updated: new Arrivals() };
}

const samplingReply = (params) => ({
  role: 'assistant',
  model: 'third-party-test-model',
  content: { type: 'text', text: `sampled<${params.messages[0].content.text}>` },
});
const elicitationReply = (params) =>
  params.mode === 'url' ? { action: 'accept' } : { action: 'accept', content: { username: 'ada', email: 'ada@example.com' } };
const ROOTS = { roots: [{ uri: 'file:///srv/project', name: 'project' }, { uri: 'file:///srv/data' }] };
const CAPABILITIES = { sampling: {}, elicitation: { form: {}, url: {} }, roots: { listChanged: true } };

/** The v1 client, legacy era, with every client capability and handlers that record. */
async function connectV1(target) {
  const seen = recorder();
  const client = new ClientV1({ name: 'palisade-third-party-v1', version: '1.0.0' }, { capabilities: CAPABILITIES });
  client.setRequestHandler(CreateMessageRequestSchema, (request) => {
    seen.sampling.push(request.params);
    return samplingReply(request.params);
  });
  client.setRequestHandler(ElicitRequestSchema, (request) => {
    seen.elicitation.push(request.params);
    return elicitationReply(request.params);
  });
  client.setRequestHandler(ListRootsRequestSchema, () => {
    seen.roots++;
    return ROOTS;
  });
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => seen.logs.push(n.params));
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => seen.updated.push(n.params.uri));
  const transport = new TransportV1(new URL(target.url), {
    requestInit: { headers: { Authorization: `Bearer ${target.key}` } },
  });
  await client.connect(transport);
  assert.equal(transport.protocolVersion, '2025-11-25');
  return { client, seen };
}

/** The v2 client, negotiating (`auto`) and required to end up on 2026-07-28. */
async function connectV2(target) {
  const seen = recorder();
  const client = new ClientV2(
    { name: 'palisade-third-party-v2', version: '1.0.0' },
    { capabilities: CAPABILITIES, versionNegotiation: { mode: 'auto' } },
  );
  client.setRequestHandler('sampling/createMessage', (request) => {
    seen.sampling.push(request.params);
    return samplingReply(request.params);
  });
  client.setRequestHandler('elicitation/create', (request) => {
    seen.elicitation.push(request.params);
    return elicitationReply(request.params);
  });
  client.setRequestHandler('roots/list', () => {
    seen.roots++;
    return ROOTS;
  });
  client.setNotificationHandler('notifications/message', (n) => seen.logs.push(n.params));
  client.setNotificationHandler('notifications/resources/updated', (n) => seen.updated.push(n.params.uri));
  const transport = new TransportV2(new URL(target.url), {
    requestInit: { headers: { Authorization: `Bearer ${target.key}` } },
  });
  await client.connect(transport);
  assert.equal(client.getNegotiatedProtocolVersion(), '2026-07-28', 'the v2 client fell back to the legacy era');
  return { client, seen };
}

const textOf = (result) => {
  assert.equal(result.content?.[0]?.type, 'text', JSON.stringify(result));
  return result.content[0].text;
};

/** Runs `body` with a connected client, closing it whatever happens. */
async function withClient(connect, target, body) {
  const { client, seen } = await connect(target);
  try {
    return await body(client, seen);
  } finally {
    await client.close();
  }
}

const ERAS = [
  {
    era: 'legacy',
    sdk: '@modelcontextprotocol/sdk 1.32.2',
    connect: connectV1,
    callTool: (client, params, options) => client.callTool(params, undefined, options),
    /** The legacy era sets the level per session. */
    logAt: async (client, level, params) => {
      await client.setLoggingLevel(level);
      return params;
    },
  },
  {
    era: 'modern',
    sdk: '@modelcontextprotocol/client 2.4.0',
    connect: connectV2,
    callTool: (client, params, options) => client.callTool(params, options),
    /** 2026-07-28 servers log only for requests that opt in via _meta. */
    logAt: async (_client, level, params) => ({ ...params, _meta: { [LOG_LEVEL_META_KEY]: level } }),
  },
];

for (const { era, sdk, connect, callTool, logAt } of ERAS) {
  for (const upstream of UPSTREAMS) {
    describe(`${sdk}, ${era} era, ${upstream}`, () => {
      const target = () => env.targets[upstream];
      const run = (body) => withClient(connect, target(), body);

      test('lists the fixture tools and calls one', () => run(async (client) => {
        const names = (await client.listTools()).tools.map((tool) => tool.name);
        for (const fixture of ['test_simple_text', 'test_tool_with_progress', 'test_sampling', 'test_elicitation_url']) {
          assert.ok(names.includes(target().name(fixture)), names.join(','));
        }
        const result = await callTool(client, { name: target().name('test_simple_text'), arguments: {} });
        assert.equal(textOf(result), 'This is a simple text response for testing.');
      }));

      test('progress notifications reach onprogress (the client\'s own token)', () => run(async (client) => {
        const seen = [];
        const result = await callTool(client, { name: target().name('test_tool_with_progress'), arguments: {} }, {
          onprogress: (progress) => seen.push([progress.progress, progress.total]),
        });
        assert.equal(textOf(result), 'Progress test completed');
        assert.deepEqual(seen, [[0, 100], [50, 100], [100, 100]]);
      }));

      test('log messages', () => run(async (client, seen) => {
        const params = await logAt(client, 'info', { name: target().name('test_tool_with_logging'), arguments: {} });
        const result = await callTool(client, params);
        assert.equal(textOf(result), 'Logging test completed');
        assert.deepEqual(seen.logs.map((l) => [l.level, l.logger, l.data]), [
          ['info', 'test_tool_with_logging', 'Tool execution started'],
          ['info', 'test_tool_with_logging', 'Tool processing data'],
          ['info', 'test_tool_with_logging', 'Tool execution completed'],
        ]);
      }));

      test('log messages below the requested level are not sent', () => run(async (client, seen) => {
        const params = await logAt(client, 'warning', { name: target().name('test_tool_with_logging'), arguments: {} });
        const result = await callTool(client, params);
        assert.equal(textOf(result), 'Logging test completed');
        assert.deepEqual(seen.logs, []);
      }));

      test('sampling', () => run(async (client, seen) => {
        const result = await callTool(client, { name: target().name('test_sampling'), arguments: { prompt: 'what is 6x7?' } });
        assert.deepEqual(seen.sampling.map((p) => [p.messages[0].content.text, p.maxTokens]), [['what is 6x7?', 100]]);
        assert.notEqual(result.isError, true, JSON.stringify(result));
        assert.equal(textOf(result), 'LLM response: sampled<what is 6x7?>');
      }));

      test('elicitation, form mode', () => run(async (client, seen) => {
        const result = await callTool(client, { name: target().name('test_elicitation'), arguments: { message: 'Who are you?' } });
        assert.equal(seen.elicitation.length, 1, JSON.stringify(seen.elicitation));
        const [asked] = seen.elicitation;
        assert.equal(asked.mode ?? 'form', 'form');
        assert.equal(asked.message, 'Who are you?');
        assert.deepEqual(Object.keys(asked.requestedSchema.properties).sort(), ['email', 'username']);
        assert.notEqual(result.isError, true, JSON.stringify(result));
        assert.equal(textOf(result), 'User response: action=accept, content={"username":"ada","email":"ada@example.com"}');
      }));

      test('elicitation, URL mode', () => run(async (client, seen) => {
        const result = await callTool(client, { name: target().name('test_elicitation_url'), arguments: {} });
        assert.notEqual(result.isError, true, JSON.stringify(result));
        assert.equal(seen.elicitation.length, 1, JSON.stringify(seen.elicitation));
        const [asked] = seen.elicitation;
        assert.deepEqual([asked.mode, asked.url, asked.message], ['url', AUTHORIZE_URL, 'Please authorize access at the link']);
        if (era === 'legacy') assert.ok(asked.elicitationId, '2025-11-25 URL elicitation carries an elicitationId');
        assert.equal(textOf(result), 'URL elicitation: action=accept');
      }));

      test('roots', () => run(async (client, seen) => {
        const result = await callTool(client, { name: target().name('test_input_required_result_list_roots'), arguments: {} });
        assert.ok(seen.roots >= 1, 'roots/list reached the client');
        assert.notEqual(result.isError, true, JSON.stringify(result));
        assert.equal(textOf(result), 'Roots: file:///srv/project, file:///srv/data');
      }));

      test('resources: list, templates, read', () => run(async (client) => {
        const resources = Object.fromEntries((await client.listResources()).resources.map((r) => [r.uri, r]));
        for (const uri of ['test://static-text', 'test://static-binary', WATCHED]) {
          assert.ok(resources[target().uri(uri)], Object.keys(resources).join(','));
        }
        assert.equal(resources[target().uri('test://static-text')].mimeType, 'text/plain');
        const templates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate);
        assert.ok(templates.includes(target().uri('test://template/{id}/data')), templates.join(','));
        const stat = await client.readResource({ uri: target().uri('test://static-text') });
        assert.deepEqual(stat.contents.map((c) => [c.uri, c.text]), [
          [target().uri('test://static-text'), 'This is the content of the static text resource.'],
        ]);
        const templated = await client.readResource({ uri: target().uri('test://template/42/data') });
        assert.equal(templated.contents[0].uri, target().uri('test://template/42/data'));
        assert.deepEqual(JSON.parse(templated.contents[0].text), { id: '42', templateTest: true, data: 'Data for ID: 42' });
      }));

      /** Changes the watched resource from another connection than the subscriber's. */
      const triggerUpdate = () => run(async (other) => {
        const result = await callTool(other, { name: target().name('test_update_watched_resource'), arguments: {} });
        assert.notEqual(result.isError, true, JSON.stringify(result));
        assert.match(textOf(result), /^test:\/\/watched-resource updated/);
      });

      if (era === 'legacy') {
        test('resources/subscribe: another client\'s change reaches the subscriber', () => run(async (client, seen) => {
          const uri = target().uri(WATCHED);
          assert.equal(client.getServerCapabilities()?.resources?.subscribe, true);
          await client.subscribeResource({ uri });
          await triggerUpdate();
          await seen.updated.until((uris) => uris.length > 0, 'notifications/resources/updated');
          assert.deepEqual(seen.updated.values, [uri]);
          const reread = await client.readResource({ uri });
          assert.equal(reread.contents[0].text, 'Watched resource content.');
          await client.unsubscribeResource({ uri });
        }));
      } else {
        test('subscriptions/listen resourceSubscriptions: another client\'s change reaches the listener', () =>
          run(async (client, seen) => {
            const uri = target().uri(WATCHED);
            const subscription = await client.listen({ resourceSubscriptions: [uri] });
            try {
              assert.deepEqual(subscription.honoredFilter.resourceSubscriptions, [uri], JSON.stringify(subscription.honoredFilter));
              await triggerUpdate();
              await seen.updated.until((uris) => uris.length > 0, 'notifications/resources/updated');
              assert.deepEqual(seen.updated.values, [uri]);
            } finally {
              await subscription.close();
            }
          }));
      }

      test('prompts: list, get with arguments', () => run(async (client) => {
        const prompts = Object.fromEntries((await client.listPrompts()).prompts.map((p) => [p.name, p]));
        assert.ok(prompts[target().name('test_simple_prompt')], Object.keys(prompts).join(','));
        const listed = prompts[target().name('test_prompt_with_arguments')];
        assert.deepEqual(listed.arguments.map((a) => [a.name, a.required]), [['arg1', true], ['arg2', true]]);
        const simple = await client.getPrompt({ name: target().name('test_simple_prompt') });
        assert.deepEqual(simple.messages.map((m) => [m.role, m.content.text]), [['user', 'This is a simple prompt for testing.']]);
        const withArgs = await client.getPrompt({ name: target().name('test_prompt_with_arguments'), arguments: { arg1: 'x', arg2: 'y' } });
        assert.deepEqual(withArgs.messages.map((m) => [m.role, m.content.text]), [['user', "Prompt with arguments: arg1='x', arg2='y'"]]);
      }));

      test('completion', () => run(async (client) => {
        assert.ok(client.getServerCapabilities()?.completions, JSON.stringify(client.getServerCapabilities()));
        const ref = { type: 'ref/prompt', name: target().name('test_prompt_with_arguments') };
        const some = await client.complete({ ref, argument: { name: 'arg1', value: 'b' } });
        assert.deepEqual(some.completion.values, ['beta']);
        const every = await client.complete({ ref, argument: { name: 'arg1', value: '' } });
        assert.deepEqual(every.completion.values, ['alpha', 'beta', 'gamma']);
      }));
    });
  }
}
