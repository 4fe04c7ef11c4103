#!/usr/bin/env node
// Conformance fixture server on the official MCP TypeScript SDK v2
// (@modelcontextprotocol/server + @modelcontextprotocol/node).
//
// It serves both protocol eras from one set of tools, resources and prompts:
// 2025-11-25 clients (initialize, sessions, server→client requests) and
// 2026-07-28 clients (stateless, per-request `_meta`, server/discover,
// inputRequired results). The fixtures carry the names and texts the official
// conformance suite checks and mirror palisade-testkit (crates/testkit), so the
// suite can be run against this server directly and through the gateway.
//
//   node everything.mjs stdio              stdio; the opening exchange picks the era
//   node everything.mjs http [--port N]    Streamable HTTP on 127.0.0.1:N at /mcp,
//                                          both eras on the one endpoint; prints
//                                          `listening on http://127.0.0.1:PORT/mcp`
//
// Needs Node >= 20 (tests/conformance pins Node 22). Logs go to stderr.

import { randomBytes, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import {
    CLIENT_CAPABILITIES_META_KEY,
    InMemoryServerEventBus,
    McpServer,
    ProtocolError,
    ProtocolErrorCode,
    ResourceTemplate,
    WebStandardStreamableHTTPServerTransport,
    completable,
    createMcpHandler,
    createRequestStateCodec,
    fromJsonSchema,
    inputRequired,
    inputResponse,
    isInitializeRequest,
    isLegacyRequest
} from '@modelcontextprotocol/server';
import { serveStdio } from '@modelcontextprotocol/server/stdio';
import { localhostHostValidation, localhostOriginValidation, toNodeHandler } from '@modelcontextprotocol/node';
import * as z from 'zod';

/** A 1x1 red PNG. */
const PNG_BASE64 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC';
/** A 16-bit mono 8 kHz WAV with eight silent samples. */
const WAV_BASE64 = 'UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA';

const log = (...args) => console.error('[everything]', ...args);

// ---------------------------------------------------------------------------
// Process-wide state. Server instances are per HTTP request (2026-07-28), per
// session (2025 HTTP) or per connection (stdio); what must outlive them lives here.

/** Whether the dynamic `extra` tool and `test_extra_prompt` are listed. */
const listed = { tool: false, prompt: false };
/** Tells long-lived instances (sessions, stdio) that `listed` changed: one listener per instance. */
const listChanges = new EventEmitter().setMaxListeners(0);
/** Feeds `subscriptions/listen` streams of 2026-07-28 HTTP clients. */
const bus = new InMemoryServerEventBus(error => log('listen stream listener failed:', error));

/** The legacy server instances (2025 sessions, stdio connections) subscribed to each resource URI. */
const subscribers = new Map();

/** Announces a resource update to its legacy subscribers and the 2026-07-28 listen streams. */
async function announceResourceUpdated(uri) {
    bus.publish({ kind: 'resource_updated', uri });
    let notified = 0;
    for (const server of subscribers.get(uri) ?? []) {
        try {
            await server.sendResourceUpdated({ uri });
            notified++;
        } catch (error) {
            log(`dropping a subscriber of ${uri}:`, error.message);
            subscribers.get(uri).delete(server);
        }
    }
    return notified;
}

/** Flips one dynamic entry and announces it to every era; returns whether it is now listed. */
function toggleListed(what) {
    listed[what] = !listed[what];
    listChanges.emit('change');
    bus.publish({ kind: what === 'tool' ? 'tools_list_changed' : 'prompts_list_changed' });
    return listed[what];
}

/**
 * Seals `requestState` (HMAC) so a tampered one is refused with -32602 before
 * a handler runs. The key is per process: one process serves every round.
 */
const stateCodec = createRequestStateCodec({ key: randomBytes(32) });

// ---------------------------------------------------------------------------
// Results and input requests.

const text = value => ({ content: [{ type: 'text', text: value }] });
const userText = value => ({ role: 'user', content: { type: 'text', text: value } });
const objectSchema = (properties, required) => ({ type: 'object', properties, ...(required && { required }) });

/** One question for the client: its `inputRequests` key, the answer kind it takes, the request. */
const ask = {
    elicit: (key, message, requestedSchema) => ({ key, kind: 'elicit', request: inputRequired.elicit({ message, requestedSchema }) }),
    sample: (key, prompt, maxTokens) => ({
        key,
        kind: 'sampling',
        request: inputRequired.createMessage({ messages: [userText(prompt)], maxTokens })
    }),
    elicitUrl: (key, message, url) => ({ key, kind: 'elicit', request: inputRequired.elicitUrl({ message, url }) }),
    roots: key => ({ key, kind: 'roots', request: inputRequired.listRoots() })
};

/** The verified state carried by this round (see `gather`); a first call carries none. */
function openState(ctx, subject) {
    const state = ctx.mcpReq.requestState();
    if (state === undefined) return { round: 0, answers: {} };
    // The MAC only proves this server minted it; it must also be for this tool or prompt.
    if (state.subject !== subject) {
        throw new ProtocolError(ProtocolErrorCode.InvalidParams, 'requestState was issued for another request', {
            reason: 'invalid_request_state'
        });
    }
    return state;
}

/**
 * Collects answers to `asks`. Answers carried in the sealed requestState and
 * well-formed ones in this request's `inputResponses` count; the rest are asked
 * for with an inputRequired result. A 2026-07-28 client answers and retries; on
 * a 2025 session the SDK's legacy shim sends real server→client requests and
 * calls the handler again, so each fixture is written once for both eras.
 *
 * Returns `{ answers }` once complete, else `{ pending }` to return as is.
 */
async function gather(ctx, subject, asks, { round = 1, carried = openState(ctx, subject), responses = ctx.mcpReq.inputResponses } = {}) {
    const answers = { ...carried.answers };
    const inputRequests = {};
    for (const { key, kind, request } of asks) {
        if (inputResponse(responses, key).kind === kind) answers[key] = responses[key];
        else inputRequests[key] = request;
    }
    if (Object.keys(inputRequests).length === 0) return { answers };
    // Answers accepted this round ride along, so a partial retry loses nothing.
    const requestState = await stateCodec.mint({ subject, round, answers });
    return { pending: inputRequired({ inputRequests, requestState }) };
}

/** Asks, then renders the complete answers as a text result. */
async function askThen(ctx, subject, asks, render) {
    const { pending, answers } = await gather(ctx, subject, asks);
    return pending ?? text(render(answers));
}

const elicitationText = answer => `action=${answer?.action ?? 'unknown'}, content=${JSON.stringify(answer?.content ?? null)}`;
const samplingText = answer => {
    const content = answer?.content;
    return typeof content?.text === 'string' ? content.text : content === undefined ? '' : JSON.stringify(content);
};
const rootUris = answer => (answer?.roots ?? []).map(root => root.uri).filter(uri => typeof uri === 'string');

/** Sends a progress notification when the request asked for progress. */
async function progress(ctx, value, total, message) {
    const progressToken = ctx.mcpReq._meta?.progressToken;
    if (progressToken === undefined) return;
    await ctx.mcpReq.notify({
        method: 'notifications/progress',
        params: { progressToken, progress: value, total, ...(message && { message }) }
    });
}

const nameSchema = objectSchema({ name: { type: 'string' } }, ['name']);
const confirmSchema = objectSchema({ ok: { type: 'boolean' } }, ['ok']);

/** The input schema `json-schema-2020-12` checks is passed through unchanged. */
const JSON_SCHEMA_2020_12 = {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    type: 'object',
    $defs: {
        address: {
            $anchor: 'addressDef',
            type: 'object',
            properties: { street: { type: 'string' }, city: { type: 'string' } }
        }
    },
    properties: {
        name: { type: 'string' },
        address: { $ref: '#/$defs/address' },
        contactMethod: { type: 'string', enum: ['phone', 'email'] },
        phone: { type: 'string' },
        email: { type: 'string' }
    },
    allOf: [{ anyOf: [{ required: ['phone'] }, { required: ['email'] }] }],
    if: { properties: { contactMethod: { const: 'phone' } }, required: ['contactMethod'] },
    then: { required: ['phone'] },
    else: { required: ['email'] },
    additionalProperties: false
};

// ---------------------------------------------------------------------------
// The server factory: one definition serves every era and transport.

/**
 * Builds a server instance. `live` instances (a 2025 HTTP session, a stdio
 * connection) outlast a request, so they follow later list changes themselves;
 * the SDK then sends `list_changed` on their connection (legacy) or routes it to
 * the connection's `subscriptions/listen` streams (stdio, 2026-07-28).
 */
function buildServer({ live = false } = {}) {
    const mcp = new McpServer(
        { name: 'palisade-ts-everything', title: 'Palisade conformance fixture (TypeScript SDK v2)', version: '1.0.0' },
        {
            capabilities: {
                tools: { listChanged: true },
                resources: { subscribe: true, listChanged: true },
                prompts: { listChanged: true },
                logging: {},
                completions: {}
            },
            instructions: 'Conformance fixture: every fixture tool, resource and prompt of the MCP conformance suite, both protocol eras.',
            requestState: { verify: stateCodec.verify }
        }
    );

    /** The client's declared capabilities: the request's `_meta` (2026-07-28) or initialize (2025). */
    const declares = (ctx, capability) =>
        Boolean((ctx.mcpReq.envelope?.[CLIENT_CAPABILITIES_META_KEY] ?? mcp.server.getClientCapabilities())?.[capability]);

    registerTools(mcp, declares);
    registerResources(mcp);
    registerPrompts(mcp);

    const extraTool = mcp.registerTool('extra', { description: 'Listed while test_trigger_tool_change has toggled it on' }, () =>
        text('extra')
    );
    const extraPrompt = mcp.registerPrompt(
        'test_extra_prompt',
        { description: 'Listed while test_trigger_prompt_change has toggled it on' },
        () => ({ description: 'The dynamic prompt', messages: [userText('Extra prompt.')] })
    );
    // enable()/disable() on a connected McpServer announce the change themselves.
    const follow = () => {
        if (extraTool.enabled !== listed.tool) listed.tool ? extraTool.enable() : extraTool.disable();
        if (extraPrompt.enabled !== listed.prompt) listed.prompt ? extraPrompt.enable() : extraPrompt.disable();
    };
    follow();
    if (live) {
        listChanges.on('change', follow);
        mcp.server.onclose = () => {
            listChanges.off('change', follow);
            for (const servers of subscribers.values()) servers.delete(mcp.server);
        };
    }
    return mcp;
}

function registerTools(mcp, declares) {
    const tool = (name, description, handler, inputSchema) => mcp.registerTool(name, { description, inputSchema }, handler);

    tool('test_simple_text', 'Returns simple text', () => text('This is a simple text response for testing.'));
    tool('test_image_content', 'Returns an image', () => ({ content: [{ type: 'image', data: PNG_BASE64, mimeType: 'image/png' }] }));
    tool('test_audio_content', 'Returns audio', () => ({ content: [{ type: 'audio', data: WAV_BASE64, mimeType: 'audio/wav' }] }));
    tool('test_embedded_resource', 'Returns an embedded resource', () => ({
        content: [
            {
                type: 'resource',
                resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' }
            }
        ]
    }));
    tool('test_multiple_content_types', 'Returns text, image and resource content', () => ({
        content: [
            { type: 'text', text: 'Multiple content types test:' },
            { type: 'image', data: PNG_BASE64, mimeType: 'image/png' },
            {
                type: 'resource',
                resource: {
                    uri: 'test://mixed-content-resource',
                    mimeType: 'application/json',
                    text: JSON.stringify({ test: 'data', value: 123 })
                }
            }
        ]
    }));
    tool('test_tool_with_logging', 'Sends three info log messages ~50ms apart', async ctx => {
        const messages = ['Tool execution started', 'Tool processing data', 'Tool execution completed'];
        for (const [i, message] of messages.entries()) {
            if (i > 0) await sleep(50);
            // The SDK applies logging/setLevel (2025) or the request's logLevel (2026-07-28).
            await ctx.mcpReq.log('info', message, 'test_tool_with_logging');
        }
        return text('Logging test completed');
    });
    tool('test_tool_with_progress', 'Reports progress 0, 50, 100 of 100', async ctx => {
        for (const [i, value] of [0, 50, 100].entries()) {
            if (i > 0) await sleep(50);
            await progress(ctx, value, 100);
        }
        return text('Progress test completed');
    });
    tool('test_error_handling', 'Always returns an isError result', () => ({
        ...text('This tool intentionally returns an error for testing'),
        isError: true
    }));
    tool(
        'test_sampling',
        'Requests LLM sampling from the client',
        ({ prompt }, ctx) =>
            askThen(ctx, 'tool:test_sampling', [ask.sample('reply', prompt, 100)], a => `LLM response: ${samplingText(a.reply)}`),
        z.object({ prompt: z.string().describe('The prompt to send') })
    );
    tool(
        'test_elicitation',
        'Requests user input (username, email) from the client',
        ({ message }, ctx) => {
            const schema = objectSchema(
                {
                    username: { type: 'string', description: "User's response" },
                    email: { type: 'string', description: "User's email address" }
                },
                ['username', 'email']
            );
            return askThen(ctx, 'tool:test_elicitation', [ask.elicit('answer', message, schema)], a => `User response: ${elicitationText(a.answer)}`);
        },
        z.object({ message: z.string().describe('The message to show') })
    );
    tool('test_elicitation_sep1034_defaults', 'Elicitation with default values for every primitive type (SEP-1034)', ctx => {
        const schema = objectSchema({
            name: { type: 'string', default: 'John Doe' },
            age: { type: 'integer', default: 30 },
            score: { type: 'number', default: 95.5 },
            status: { type: 'string', enum: ['active', 'inactive', 'pending'], default: 'active' },
            verified: { type: 'boolean', default: true }
        });
        return askThen(
            ctx,
            'tool:test_elicitation_sep1034_defaults',
            [ask.elicit('answer', 'Please review the defaults', schema)],
            a => `Elicitation completed: ${elicitationText(a.answer)}`
        );
    });
    tool('test_elicitation_sep1330_enums', 'Elicitation with every enum schema variant (SEP-1330)', ctx => {
        const titled = (prefix, word) => ['1', '2', '3'].map((n, i) => ({ const: `${prefix}${n}`, title: `${['First', 'Second', 'Third'][i]} ${word}` }));
        const schema = objectSchema({
            untitledSingle: { type: 'string', enum: ['option1', 'option2', 'option3'] },
            titledSingle: { type: 'string', oneOf: titled('value', 'Option') },
            legacyEnum: { type: 'string', enum: ['opt1', 'opt2', 'opt3'], enumNames: ['Option One', 'Option Two', 'Option Three'] },
            untitledMulti: { type: 'array', items: { type: 'string', enum: ['option1', 'option2', 'option3'] } },
            titledMulti: { type: 'array', items: { anyOf: titled('value', 'Choice') } }
        });
        return askThen(
            ctx,
            'tool:test_elicitation_sep1330_enums',
            [ask.elicit('answer', 'Please choose', schema)],
            a => `Elicitation completed: ${elicitationText(a.answer)}`
        );
    });
    tool(
        'json_schema_2020_12_tool',
        'Tool with JSON Schema 2020-12 features',
        args => text(`Received: ${JSON.stringify(args)}`),
        fromJsonSchema(JSON_SCHEMA_2020_12)
    );
    tool('test_reconnection', 'Closes its SSE stream mid-call; the answer arrives after the client reconnects', async ctx => {
        // Only offered on a 2025 session with an event store (the client resumes with Last-Event-ID).
        ctx.http?.closeSSE?.();
        await sleep(100);
        return text('Reconnection test completed');
    });
    // Undeclared sampling: the SDK answers -32021 on 2026-07-28 and an isError result on 2025 sessions.
    tool('test_missing_capability', 'Needs the client sampling capability (-32021 without it)', ctx =>
        askThen(ctx, 'tool:test_missing_capability', [ask.sample('reply', 'Say something', 50)], a => `Sampled: ${samplingText(a.reply)}`)
    );
    tool('test_streaming_elicitation', 'Reports progress, then needs elicitation (inputRequired on 2026-07-28)', async ctx => {
        // The legacy shim calls the handler again with the answer: report progress once.
        if (ctx.mcpReq.requestState() === undefined) await progress(ctx, 0, 1, 'asking the user');
        return askThen(ctx, 'tool:test_streaming_elicitation', [ask.elicit('user_name', 'What is your name?', nameSchema)], a =>
            elicitationText(a.user_name)
        );
    });
    tool('test_logging_tool', "Logs three messages, honouring the request's logLevel", async ctx => {
        for (const message of ['first log message', 'second log message', 'third log message']) {
            await ctx.mcpReq.log('info', message, 'test_logging_tool');
        }
        return text('Logging tool completed');
    });
    tool('test_elicitation_url', 'Asks the user to open a URL (URL-mode elicitation)', ctx =>
        // The SDK refuses the request (-32021) unless the client declared elicitation.url.
        askThen(
            ctx,
            'tool:test_elicitation_url',
            [ask.elicitUrl('authorize', 'Please authorize access at the link', 'https://example.com/palisade/authorize')],
            a => `URL elicitation: action=${a.authorize?.action ?? 'unknown'}`
        )
    );
    tool('test_update_watched_resource', 'Announces an update of test://watched-resource to its subscribers', async () => {
        const notified = await announceResourceUpdated('test://watched-resource');
        return text(`test://watched-resource updated; legacy subscribers notified: ${notified}`);
    });
    tool('test_trigger_tool_change', 'Toggles the `extra` tool and announces tools/list_changed', () =>
        text(`extra tool listed: ${toggleListed('tool')}`)
    );
    tool('test_trigger_prompt_change', 'Toggles `test_extra_prompt` and announces prompts/list_changed', () =>
        text(`test_extra_prompt listed: ${toggleListed('prompt')}`)
    );
    tool(
        'test_custom_header',
        'Echoes `region`, which clients mirror in the Mcp-Param-Region header',
        ({ region }) => text(`region=${region}`),
        z.object({ region: z.string().meta({ 'x-mcp-header': 'Region' }) })
    );

    tool('test_input_required_result_elicitation', 'inputRequired: asks for a name', ctx =>
        askThen(
            ctx,
            'tool:test_input_required_result_elicitation',
            [ask.elicit('user_name', 'What is your name?', nameSchema)],
            a => `Hello, ${a.user_name?.content?.name ?? 'stranger'}!`
        )
    );
    tool('test_input_required_result_sampling', 'inputRequired: asks for a sampled answer', ctx =>
        askThen(
            ctx,
            'tool:test_input_required_result_sampling',
            [ask.sample('capital_question', 'What is the capital of France?', 100)],
            a => samplingText(a.capital_question)
        )
    );
    tool('test_input_required_result_list_roots', "inputRequired: asks for the client's roots", ctx =>
        askThen(ctx, 'tool:test_input_required_result_list_roots', [ask.roots('client_roots')], a => `Roots: ${rootUris(a.client_roots).join(', ')}`)
    );
    for (const name of ['test_input_required_result_request_state', 'test_input_required_result_tampered_state']) {
        const description =
            name.endsWith('tampered_state') ? 'inputRequired: rejects a tampered requestState' : 'inputRequired: round-trips requestState';
        tool(name, description, async ctx => {
            // Answers count only alongside the state this server issued; a forged one never reaches here.
            const stateful = ctx.mcpReq.requestState() !== undefined;
            const { pending } = await gather(ctx, `tool:${name}`, [ask.elicit('confirm', 'Please confirm', confirmSchema)], {
                responses: stateful ? ctx.mcpReq.inputResponses : undefined
            });
            return pending ?? text('state-ok: requestState verified');
        });
    }
    tool('test_input_required_result_multiple_inputs', 'inputRequired: elicitation, sampling and roots at once', ctx =>
        askThen(
            ctx,
            'tool:test_input_required_result_multiple_inputs',
            [
                ask.elicit('user_name', 'What is your name?', nameSchema),
                ask.sample('greeting', 'Generate a greeting', 50),
                ask.roots('client_roots')
            ],
            a =>
                `name=${a.user_name?.content?.name ?? ''}, greeting=${samplingText(a.greeting)}, roots=${rootUris(a.client_roots).join(', ')}`
        )
    );
    tool('test_input_required_result_multi_round', 'inputRequired: two rounds with evolving requestState', async ctx => {
        const subject = 'tool:test_input_required_result_multi_round';
        const step1 = [ask.elicit('step1', 'Step 1: What is your name?', nameSchema)];
        const step2 = [ask.elicit('step2', 'Step 2: What is your favorite color?', objectSchema({ color: { type: 'string' } }, ['color']))];
        const render = a => `name=${a.step1?.content?.name ?? ''}, color=${a.step2?.content?.color ?? ''}`;
        let carried = openState(ctx, subject);
        if (carried.round < 2) {
            const first = await gather(ctx, subject, step1, { carried });
            if (first.pending) return first.pending;
            // Step 2 is asked fresh: this request's answers were for step 1.
            carried = { round: 2, answers: first.answers };
            const second = await gather(ctx, subject, step2, { round: 2, carried, responses: undefined });
            return second.pending ?? text(render(second.answers));
        }
        const last = await gather(ctx, subject, step2, { round: 2, carried });
        return last.pending ?? text(render(last.answers));
    });
    tool('test_input_required_result_capabilities', 'inputRequired: asks only for declared capabilities', ctx => {
        const asks = [
            ...(declares(ctx, 'elicitation') ? [ask.elicit('confirm', 'Please confirm', objectSchema({ ok: { type: 'boolean' } }))] : []),
            ...(declares(ctx, 'sampling') ? [ask.sample('question', 'Say hello', 20)] : [])
        ];
        if (asks.length === 0) return text('no input capabilities declared');
        return askThen(ctx, 'tool:test_input_required_result_capabilities', asks, a => `answered: ${Object.keys(a).length}`);
    });
}

function registerResources(mcp) {
    const fixed = (name, uri, metadata, contents) =>
        mcp.registerResource(name, uri, metadata, url => ({ contents: [{ uri: url.href, mimeType: metadata.mimeType, ...contents }] }));

    fixed(
        'static-text',
        'test://static-text',
        { title: 'Static text', description: 'A static text resource', mimeType: 'text/plain' },
        { text: 'This is the content of the static text resource.' }
    );
    fixed(
        'static-binary',
        'test://static-binary',
        { title: 'Static binary', description: 'A static binary resource (1x1 PNG)', mimeType: 'image/png' },
        { blob: PNG_BASE64 }
    );
    fixed(
        'watched-resource',
        'test://watched-resource',
        { description: 'A resource clients may subscribe to', mimeType: 'text/plain' },
        { text: 'Watched resource content.' }
    );
    fixed(
        'embedded',
        'test://embedded',
        { description: 'The text resource the embedded_resource tool embeds', mimeType: 'text/plain' },
        { text: 'This is an embedded resource content.' }
    );
    mcp.registerResource(
        'template-data',
        new ResourceTemplate('test://template/{id}/data', { list: undefined }),
        { title: 'Templated data', description: 'JSON data for an id', mimeType: 'application/json' },
        (url, { id }) => ({
            contents: [
                {
                    uri: url.href,
                    mimeType: 'application/json',
                    text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` })
                }
            ]
        })
    );

    // 2025 resource subscriptions: test_update_watched_resource notifies the subscribed instances.
    for (const method of ['resources/subscribe', 'resources/unsubscribe']) {
        mcp.server.setRequestHandler(method, request => {
            const { uri } = request.params;
            log(`${method} ${uri}`);
            if (!subscribers.has(uri)) subscribers.set(uri, new Set());
            if (method === 'resources/subscribe') subscribers.get(uri).add(mcp.server);
            else subscribers.get(uri).delete(mcp.server);
            return {};
        });
    }
}

function registerPrompts(mcp) {
    const prompt = (name, description, handler, argsSchema) => mcp.registerPrompt(name, { description, argsSchema }, handler);

    prompt('test_simple_prompt', 'A prompt with no arguments', () => ({
        description: 'A simple prompt',
        messages: [userText('This is a simple prompt for testing.')]
    }));
    prompt(
        'test_prompt_with_arguments',
        'A prompt with two required arguments',
        ({ arg1, arg2 }) => ({
            description: 'A prompt with arguments',
            messages: [userText(`Prompt with arguments: arg1='${arg1}', arg2='${arg2}'`)]
        }),
        z.object({
            arg1: completable(z.string().describe('First test argument'), typed =>
                ['alpha', 'beta', 'gamma'].filter(value => value.startsWith(typed ?? ''))
            ),
            arg2: z.string().describe('Second test argument')
        })
    );
    prompt(
        'test_prompt_with_embedded_resource',
        'A prompt that embeds a resource',
        ({ resourceUri }) => ({
            description: 'A prompt with an embedded resource',
            messages: [
                {
                    role: 'user',
                    content: {
                        type: 'resource',
                        resource: { uri: resourceUri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' }
                    }
                },
                userText('Please process the embedded resource above.')
            ]
        }),
        z.object({ resourceUri: z.string().describe('URI of the resource to embed') })
    );
    prompt('test_prompt_with_image', 'A prompt with image content', () => ({
        description: 'A prompt with an image',
        messages: [{ role: 'user', content: { type: 'image', data: PNG_BASE64, mimeType: 'image/png' } }, userText('Please analyze the image above.')]
    }));
    prompt('test_input_required_result_prompt', 'A prompt that needs elicited context first (inputRequired on 2026-07-28)', async ctx => {
        const { pending, answers } = await gather(ctx, 'prompt:test_input_required_result_prompt', [
            ask.elicit('user_context', 'What context should the prompt use?', objectSchema({ context: { type: 'string' } }, ['context']))
        ]);
        return (
            pending ?? {
                description: 'A prompt built from elicited context',
                messages: [userText(`Prompt with context: ${answers.user_context?.content?.context ?? '(none)'}`)]
            }
        );
    });
}

// ---------------------------------------------------------------------------
// Transports.

/**
 * Keeps each 2025 session's SSE events so a client that lost a stream can
 * resume it with Last-Event-ID. Bounded: the oldest events are dropped.
 */
class SessionEventStore {
    static LIMIT = 1000;
    #events = new Map();
    #next = 0;

    async storeEvent(streamId, message) {
        const eventId = `${streamId}_${++this.#next}`;
        this.#events.set(eventId, { streamId, message });
        if (this.#events.size > SessionEventStore.LIMIT) this.#events.delete(this.#events.keys().next().value);
        return eventId;
    }

    async getStreamIdForEventId(eventId) {
        return this.#events.get(eventId)?.streamId;
    }

    async replayEventsAfter(lastEventId, { send }) {
        const streamId = this.#events.get(lastEventId)?.streamId;
        if (streamId === undefined) throw new Error(`unknown event id ${lastEventId}`);
        let after = false;
        for (const [eventId, event] of this.#events) {
            // Priming events carry no message and are not replayed.
            if (after && event.streamId === streamId && 'jsonrpc' in event.message) await send(eventId, event.message);
            after ||= eventId === lastEventId;
        }
        return streamId;
    }
}

const jsonRpcError = (status, code, message) =>
    Response.json({ jsonrpc: '2.0', error: { code, message }, id: null }, { status });

/**
 * 2025-era traffic: one sessionful Streamable HTTP transport per session, with
 * an event store for resumable streams, so tools can send real server→client
 * requests (through the SDK's legacy shim) and test_reconnection can close its
 * stream mid-call.
 */
function legacySessions() {
    const sessions = new Map();
    return async request => {
        const sessionId = request.headers.get('mcp-session-id');
        if (sessionId) {
            const transport = sessions.get(sessionId);
            return transport ? transport.handleRequest(request) : jsonRpcError(404, -32001, 'Session not found');
        }
        const body = request.method === 'POST' ? await request.clone().json().catch(() => undefined) : undefined;
        if (!isInitializeRequest(body)) return jsonRpcError(400, -32000, 'Bad Request: Mcp-Session-Id header is required');

        const transport = new WebStandardStreamableHTTPServerTransport({
            sessionIdGenerator: () => randomUUID(),
            eventStore: new SessionEventStore(),
            retryInterval: 500,
            onsessioninitialized: id => sessions.set(id, transport)
        });
        transport.onclose = () => sessions.delete(transport.sessionId);
        await buildServer({ live: true }).connect(transport);
        return transport.handleRequest(request);
    };
}

async function serveHttp(port) {
    // 2026-07-28 requests: a fresh instance per request; legacy traffic is routed below.
    const modern = createMcpHandler(() => buildServer(), { legacy: 'reject', bus, onerror: error => log('modern:', error.message) });
    const legacy = legacySessions();
    const handle = toNodeHandler(
        { fetch: async request => ((await isLegacyRequest(request)) ? legacy(request) : modern.fetch(request)) },
        { onerror: error => log('http:', error) }
    );
    // DNS-rebinding protection: loopback Host and Origin only (403 otherwise).
    const hostAllowed = localhostHostValidation();
    const originAllowed = localhostOriginValidation();

    const server = createServer((req, res) => {
        if (new URL(req.url ?? '/', 'http://localhost').pathname !== '/mcp') {
            res.writeHead(404).end();
            return;
        }
        if (!hostAllowed(req, res) || !originAllowed(req, res)) return;
        handle(req, res).catch(error => {
            log('request failed:', error);
            if (!res.headersSent) res.writeHead(500);
            res.end();
        });
    });
    server.listen(port, '127.0.0.1', () => {
        console.log(`listening on http://127.0.0.1:${server.address().port}/mcp`);
    });
}

const { positionals, values } = parseArgs({ allowPositionals: true, options: { port: { type: 'string', default: '0' } } });
switch (positionals[0]) {
    case 'stdio':
        serveStdio(() => buildServer({ live: true }), { onerror: error => log('stdio:', error.message) });
        break;
    case 'http':
        await serveHttp(Number(values.port));
        break;
    default:
        console.error('usage: everything.mjs stdio | http [--port N]');
        process.exit(2);
}
