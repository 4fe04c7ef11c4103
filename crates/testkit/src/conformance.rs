//! Fixture tools the official conformance suite calls (`test_simple_text`,
//! `test_tool_with_progress`, `test_input_required_result_*`, …), with the
//! exact names, texts and behaviour its scenarios check.
#![allow(deprecated)]

use std::time::Duration;

use rmcp::{
    ErrorData as McpError, RoleServer,
    model::{CallToolRequestParams, CallToolResponse, ClientCapabilities, LoggingLevel},
    service::RequestContext,
};
use serde_json::{Value, json};

use crate::{
    asks::send_progress,
    inputs::{self, Ask, Carried, Gathered},
    server::{ListChange, Testkit, from_json, toggle},
    tools::{Args, PNG_BASE64, WAV_BASE64, def, failure, result_json, text},
};

/// The JSON Schema 2020-12 input schema `json-schema-2020-12` checks for.
fn json_schema_2020_12() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": { "street": { "type": "string" }, "city": { "type": "string" } },
            },
        },
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" },
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": {
            "properties": { "contactMethod": { "const": "phone" } },
            "required": ["contactMethod"],
        },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false,
    })
}

/// The fixture tool definitions.
pub fn definitions() -> Vec<Value> {
    let none = json!({});
    let mut tools = vec![
        def("test_simple_text", "Returns simple text", none.clone(), &[]),
        def("test_image_content", "Returns an image", none.clone(), &[]),
        def("test_audio_content", "Returns audio", none.clone(), &[]),
        def(
            "test_embedded_resource",
            "Returns an embedded resource",
            none.clone(),
            &[],
        ),
        def(
            "test_multiple_content_types",
            "Returns text, image and resource content",
            none.clone(),
            &[],
        ),
        def(
            "test_tool_with_logging",
            "Sends three info log messages ~50ms apart",
            none.clone(),
            &[],
        ),
        def(
            "test_tool_with_progress",
            "Reports progress 0, 50, 100 of 100",
            none.clone(),
            &[],
        ),
        def(
            "test_error_handling",
            "Always returns an isError result",
            none.clone(),
            &[],
        ),
        def(
            "test_sampling",
            "Requests LLM sampling from the client",
            json!({ "prompt": { "type": "string", "description": "The prompt to send" } }),
            &["prompt"],
        ),
        def(
            "test_elicitation",
            "Requests user input (username, email) from the client",
            json!({ "message": { "type": "string", "description": "The message to show" } }),
            &["message"],
        ),
        def(
            "test_elicitation_sep1034_defaults",
            "Elicitation with default values for every primitive type (SEP-1034)",
            none.clone(),
            &[],
        ),
        def(
            "test_elicitation_sep1330_enums",
            "Elicitation with every enum schema variant (SEP-1330)",
            none.clone(),
            &[],
        ),
        json!({
            "name": "json_schema_2020_12_tool",
            "description": "Tool with JSON Schema 2020-12 features",
            "inputSchema": json_schema_2020_12(),
        }),
        def(
            "test_reconnection",
            "Takes a moment to answer (SSE polling scenario)",
            none.clone(),
            &[],
        ),
        def(
            "test_missing_capability",
            "Needs the client's sampling capability (-32021 without it)",
            none.clone(),
            &[],
        ),
        def(
            "test_streaming_elicitation",
            "Reports progress, then needs elicitation (MRTR on 2026-07-28)",
            none.clone(),
            &[],
        ),
        def(
            "test_logging_tool",
            "Logs three messages, honouring the request's logLevel",
            none.clone(),
            &[],
        ),
        def(
            "test_trigger_tool_change",
            "Toggles the `extra` tool and announces tools/list_changed",
            none.clone(),
            &[],
        ),
        def(
            "test_trigger_prompt_change",
            "Toggles `test_extra_prompt` and announces prompts/list_changed",
            none.clone(),
            &[],
        ),
        json!({
            "name": "test_custom_header",
            "description": "Echoes `region`, which clients mirror in the Mcp-Param-Region header",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "region": { "type": "string", "x-mcp-header": "Region" },
                },
                "required": ["region"],
            },
        }),
    ];
    for (name, description) in [
        (
            "test_input_required_result_elicitation",
            "MRTR: asks for a name",
        ),
        (
            "test_input_required_result_sampling",
            "MRTR: asks for a sampled answer",
        ),
        (
            "test_input_required_result_list_roots",
            "MRTR: asks for the client's roots",
        ),
        (
            "test_input_required_result_request_state",
            "MRTR: round-trips requestState",
        ),
        (
            "test_input_required_result_multiple_inputs",
            "MRTR: elicitation, sampling and roots at once",
        ),
        (
            "test_input_required_result_multi_round",
            "MRTR: two rounds with evolving requestState",
        ),
        (
            "test_input_required_result_tampered_state",
            "MRTR: rejects a tampered requestState",
        ),
        (
            "test_input_required_result_capabilities",
            "MRTR: asks only for declared capabilities",
        ),
    ] {
        tools.push(def(name, description, none.clone(), &[]));
    }
    tools
}

/// One MRTR round for `subject`, using the request's `inputResponses` and `requestState`.
pub async fn gather_once(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    subject: &str,
    asks: &[Ask],
    request: &CallToolRequestParams,
) -> Result<Gathered, McpError> {
    let carried = inputs::open_state(kit, subject, request.request_state.as_deref())?;
    inputs::gather(
        kit,
        ctx,
        subject,
        asks,
        request.input_responses.as_ref(),
        carried,
        1,
    )
    .await
}

/// Runs `asks` and renders the complete answers with `render`.
async fn ask_and<F>(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    name: &str,
    asks: &[Ask],
    request: &CallToolRequestParams,
    render: F,
) -> Result<CallToolResponse, McpError>
where
    F: FnOnce(&serde_json::Map<String, Value>) -> String,
{
    match gather_once(kit, ctx, &format!("tool:{name}"), asks, request).await? {
        Gathered::InputRequired(result) => Ok(result.into()),
        Gathered::Complete(answers) => Ok(text(render(&answers))),
    }
}

fn elicitation_text(answer: Option<&Value>) -> String {
    let summary = inputs::elicitation_summary(answer);
    format!(
        "action={}, content={}",
        summary["action"].as_str().unwrap_or("unknown"),
        summary["content"]
    )
}

/// Dispatches a fixture; unknown names are `-32602`.
pub async fn call(
    kit: &Testkit,
    name: &str,
    request: &CallToolRequestParams,
    args: &Args<'_>,
    ctx: RequestContext<RoleServer>,
) -> Result<CallToolResponse, McpError> {
    match name {
        "test_simple_text" => Ok(text("This is a simple text response for testing.")),
        "test_image_content" => result_json(json!({
            "content": [{ "type": "image", "data": PNG_BASE64, "mimeType": "image/png" }],
        })),
        "test_audio_content" => result_json(json!({
            "content": [{ "type": "audio", "data": WAV_BASE64, "mimeType": "audio/wav" }],
        })),
        "test_embedded_resource" => result_json(json!({
            "content": [{
                "type": "resource",
                "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content.",
                },
            }],
        })),
        "test_multiple_content_types" => result_json(json!({
            "content": [
                { "type": "text", "text": "Multiple content types test:" },
                { "type": "image", "data": PNG_BASE64, "mimeType": "image/png" },
                {
                    "type": "resource",
                    "resource": {
                        "uri": "test://mixed-content-resource",
                        "mimeType": "application/json",
                        "text": json!({ "test": "data", "value": 123 }).to_string(),
                    },
                },
            ],
        })),
        "test_tool_with_logging" => {
            for (i, message) in [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed",
            ]
            .into_iter()
            .enumerate()
            {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                kit.log(
                    &ctx,
                    LoggingLevel::Info,
                    "test_tool_with_logging",
                    json!(message),
                )
                .await;
            }
            Ok(text("Logging test completed"))
        }
        "test_tool_with_progress" => {
            for (i, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                send_progress(&ctx, progress, Some(100.0), None).await;
            }
            Ok(text("Progress test completed"))
        }
        "test_error_handling" => Ok(failure(
            "This tool intentionally returns an error for testing",
        )),
        "test_sampling" => {
            let prompt = match args.string("prompt") {
                Ok(prompt) => prompt,
                Err(error) => return Ok(failure(error)),
            };
            let asks = [Ask::sampling("reply", &prompt, 100)];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                format!(
                    "LLM response: {}",
                    inputs::sampling_text(answers.get("reply"))
                )
            })
            .await
        }
        "test_elicitation" => {
            let message = match args.string("message") {
                Ok(message) => message,
                Err(error) => return Ok(failure(error)),
            };
            let schema = json!({
                "type": "object",
                "properties": {
                    "username": { "type": "string", "description": "User's response" },
                    "email": { "type": "string", "description": "User's email address" },
                },
                "required": ["username", "email"],
            });
            let asks = [Ask::elicitation("answer", &message, schema)];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                format!("User response: {}", elicitation_text(answers.get("answer")))
            })
            .await
        }
        "test_elicitation_sep1034_defaults" => {
            let schema = json!({
                "type": "object",
                "properties": {
                    "name": { "type": "string", "default": "John Doe" },
                    "age": { "type": "integer", "default": 30 },
                    "score": { "type": "number", "default": 95.5 },
                    "status": {
                        "type": "string",
                        "enum": ["active", "inactive", "pending"],
                        "default": "active",
                    },
                    "verified": { "type": "boolean", "default": true },
                },
            });
            let asks = [Ask::elicitation(
                "answer",
                "Please review the defaults",
                schema,
            )];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                format!(
                    "Elicitation completed: {}",
                    elicitation_text(answers.get("answer"))
                )
            })
            .await
        }
        "test_elicitation_sep1330_enums" => {
            let schema = json!({
                "type": "object",
                "properties": {
                    "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
                    "titledSingle": {
                        "type": "string",
                        "oneOf": [
                            { "const": "value1", "title": "First Option" },
                            { "const": "value2", "title": "Second Option" },
                            { "const": "value3", "title": "Third Option" },
                        ],
                    },
                    "legacyEnum": {
                        "type": "string",
                        "enum": ["opt1", "opt2", "opt3"],
                        "enumNames": ["Option One", "Option Two", "Option Three"],
                    },
                    "untitledMulti": {
                        "type": "array",
                        "items": { "type": "string", "enum": ["option1", "option2", "option3"] },
                    },
                    "titledMulti": {
                        "type": "array",
                        "items": {
                            "anyOf": [
                                { "const": "value1", "title": "First Choice" },
                                { "const": "value2", "title": "Second Choice" },
                                { "const": "value3", "title": "Third Choice" },
                            ],
                        },
                    },
                },
            });
            let asks = [Ask::elicitation("answer", "Please choose", schema)];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                format!(
                    "Elicitation completed: {}",
                    elicitation_text(answers.get("answer"))
                )
            })
            .await
        }
        "json_schema_2020_12_tool" => {
            Ok(text(format!("Received: {}", Value::Object(args.0.clone()))))
        }
        "test_reconnection" => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(text("Reconnection test completed"))
        }
        "test_missing_capability" => {
            if !inputs::client_declares(&ctx, "sampling") {
                let required: ClientCapabilities = from_json(json!({ "sampling": {} }))?;
                return Err(McpError::missing_required_client_capability(required));
            }
            let asks = [Ask::sampling("reply", "Say something", 50)];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                format!("Sampled: {}", inputs::sampling_text(answers.get("reply")))
            })
            .await
        }
        "test_streaming_elicitation" => {
            send_progress(&ctx, 0.0, Some(1.0), Some("asking the user")).await;
            let schema = json!({
                "type": "object",
                "properties": { "name": { "type": "string" } },
                "required": ["name"],
            });
            let asks = [Ask::elicitation("user_name", "What is your name?", schema)];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                elicitation_text(answers.get("user_name"))
            })
            .await
        }
        "test_logging_tool" => {
            for message in [
                "first log message",
                "second log message",
                "third log message",
            ] {
                kit.log(
                    &ctx,
                    LoggingLevel::Info,
                    "test_logging_tool",
                    json!(message),
                )
                .await;
            }
            Ok(text("Logging tool completed"))
        }
        "test_trigger_tool_change" => {
            let added = toggle(&kit.shared.extra_tool);
            kit.list_changed(&ctx, ListChange::Tools).await;
            Ok(text(format!("extra tool listed: {added}")))
        }
        "test_trigger_prompt_change" => {
            let added = toggle(&kit.shared.extra_prompt);
            kit.list_changed(&ctx, ListChange::Prompts).await;
            Ok(text(format!("test_extra_prompt listed: {added}")))
        }
        "test_custom_header" => match args.string("region") {
            Ok(region) => Ok(text(format!("region={region}"))),
            Err(error) => Ok(failure(error)),
        },
        "test_input_required_result_elicitation" => {
            let asks = [Ask::elicitation(
                "user_name",
                "What is your name?",
                json!({
                    "type": "object",
                    "properties": { "name": { "type": "string" } },
                    "required": ["name"],
                }),
            )];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                let name = answers
                    .get("user_name")
                    .and_then(|a| a.pointer("/content/name"))
                    .and_then(Value::as_str)
                    .unwrap_or("stranger");
                format!("Hello, {name}!")
            })
            .await
        }
        "test_input_required_result_sampling" => {
            let asks = [Ask::sampling(
                "capital_question",
                "What is the capital of France?",
                100,
            )];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                inputs::sampling_text(answers.get("capital_question"))
            })
            .await
        }
        "test_input_required_result_list_roots" => {
            let asks = [Ask::roots("client_roots")];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                format!(
                    "Roots: {}",
                    inputs::root_uris(answers.get("client_roots")).join(", ")
                )
            })
            .await
        }
        "test_input_required_result_request_state"
        | "test_input_required_result_tampered_state" => {
            state_bound(kit, &ctx, name, request).await
        }
        "test_input_required_result_multiple_inputs" => {
            let asks = [
                Ask::elicitation(
                    "user_name",
                    "What is your name?",
                    json!({
                        "type": "object",
                        "properties": { "name": { "type": "string" } },
                        "required": ["name"],
                    }),
                ),
                Ask::sampling("greeting", "Generate a greeting", 50),
                Ask::roots("client_roots"),
            ];
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                format!(
                    "name={}, greeting={}, roots={}",
                    answers
                        .get("user_name")
                        .and_then(|a| a.pointer("/content/name"))
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    inputs::sampling_text(answers.get("greeting")),
                    inputs::root_uris(answers.get("client_roots")).join(", ")
                )
            })
            .await
        }
        "test_input_required_result_multi_round" => multi_round(kit, &ctx, name, request).await,
        "test_input_required_result_capabilities" => {
            let mut asks = Vec::new();
            if inputs::client_declares(&ctx, "elicitation") {
                asks.push(Ask::elicitation(
                    "confirm",
                    "Please confirm",
                    json!({ "type": "object", "properties": { "ok": { "type": "boolean" } } }),
                ));
            }
            if inputs::client_declares(&ctx, "sampling") {
                asks.push(Ask::sampling("question", "Say hello", 20));
            }
            if asks.is_empty() {
                return Ok(text("no input capabilities declared"));
            }
            ask_and(kit, &ctx, name, &asks, request, |answers| {
                format!("answered: {}", answers.len())
            })
            .await
        }
        other => Err(McpError::invalid_params(
            format!("unknown tool '{other}'"),
            None,
        )),
    }
}

/// A confirmation that only completes with a verified `requestState`:
/// a retry without one starts over, a tampered one is `-32602`.
async fn state_bound(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    name: &str,
    request: &CallToolRequestParams,
) -> Result<CallToolResponse, McpError> {
    let subject = format!("tool:{name}");
    let carried = inputs::open_state(kit, &subject, request.request_state.as_deref())?;
    let asks = [Ask::elicitation(
        "confirm",
        "Please confirm",
        json!({
            "type": "object",
            "properties": { "ok": { "type": "boolean" } },
            "required": ["ok"],
        }),
    )];
    // Answers count only alongside the state this server issued.
    let responses = request
        .request_state
        .as_ref()
        .and(request.input_responses.as_ref());
    match inputs::gather(kit, ctx, &subject, &asks, responses, carried, 1).await? {
        Gathered::InputRequired(result) => Ok(result.into()),
        Gathered::Complete(_) => Ok(text("state-ok: requestState verified")),
    }
}

/// Two elicitation rounds; each round's sealed state differs.
async fn multi_round(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    name: &str,
    request: &CallToolRequestParams,
) -> Result<CallToolResponse, McpError> {
    let subject = format!("tool:{name}");
    let step1 = [Ask::elicitation(
        "step1",
        "Step 1: What is your name?",
        json!({
            "type": "object",
            "properties": { "name": { "type": "string" } },
            "required": ["name"],
        }),
    )];
    let step2 = [Ask::elicitation(
        "step2",
        "Step 2: What is your favorite color?",
        json!({
            "type": "object",
            "properties": { "color": { "type": "string" } },
            "required": ["color"],
        }),
    )];
    let mut carried = inputs::open_state(kit, &subject, request.request_state.as_deref())?;
    let responses = request.input_responses.as_ref();
    if carried.round < 2 {
        match inputs::gather(kit, ctx, &subject, &step1, responses, carried, 1).await? {
            Gathered::InputRequired(result) => return Ok(result.into()),
            Gathered::Complete(answers) => {
                carried = Carried { round: 2, answers };
            }
        }
        // Step 2 is asked fresh: answers in this request were for step 1.
        return match inputs::gather(kit, ctx, &subject, &step2, None, carried, 2).await? {
            Gathered::InputRequired(result) => Ok(result.into()),
            Gathered::Complete(answers) => Ok(text(multi_round_text(&answers))),
        };
    }
    match inputs::gather(kit, ctx, &subject, &step2, responses, carried, 2).await? {
        Gathered::InputRequired(result) => Ok(result.into()),
        Gathered::Complete(answers) => Ok(text(multi_round_text(&answers))),
    }
}

fn multi_round_text(answers: &serde_json::Map<String, Value>) -> String {
    let field = |key: &str, field: &str| {
        answers
            .get(key)
            .and_then(|a| a.pointer(&format!("/content/{field}")))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    format!(
        "name={}, color={}",
        field("step1", "name"),
        field("step2", "color")
    )
}
