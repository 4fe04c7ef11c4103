//! Resources, resource templates, prompts and completion.
//!
//! Names, URIs and texts match what the official conformance suite checks
//! (`test://static-text`, `test_simple_prompt`, …) so the suite can run
//! against this server and against the gateway in front of it.

use std::sync::atomic::Ordering;

use rmcp::{
    ErrorData as McpError, RoleServer,
    model::{
        CompleteResult, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
        ReadResourceResult,
    },
    service::RequestContext,
};
use serde_json::{Value, json};

use crate::{
    inputs::{self, Ask, Gathered},
    server::{Shared, Testkit, from_json},
    tools::PNG_BASE64,
};

pub const STATIC_TEXT: &str = "This is the content of the static text resource.";
pub const EMBEDDED_TEXT: &str = "This is an embedded resource content.";

/// Direct resources (`resources/list`).
pub fn resources() -> Value {
    json!([
        {
            "uri": "test://static-text",
            "name": "static-text",
            "title": "Static text",
            "description": "A static text resource",
            "mimeType": "text/plain",
        },
        {
            "uri": "test://static-binary",
            "name": "static-binary",
            "title": "Static binary",
            "description": "A static binary resource (1x1 PNG)",
            "mimeType": "image/png",
        },
        {
            "uri": "test://watched-resource",
            "name": "watched-resource",
            "description": "A resource clients may subscribe to",
            "mimeType": "text/plain",
        },
        {
            "uri": "test://embedded",
            "name": "embedded",
            "description": "The text resource the embedded_resource tool embeds",
            "mimeType": "text/plain",
        },
    ])
}

/// Resource templates (`resources/templates/list`).
pub fn resource_templates() -> Value {
    json!([{
        "uriTemplate": "test://template/{id}/data",
        "name": "template-data",
        "title": "Templated data",
        "description": "JSON data for an id",
        "mimeType": "application/json",
    }])
}

/// Reads one resource; unknown URIs are `-32002` (rmcp turns that into
/// `-32602` for 2026-07-28 peers) with the URI in `data`.
pub fn read(uri: &str) -> Result<ReadResourceResult, McpError> {
    let contents = match uri {
        "test://static-text" => {
            json!({ "uri": uri, "mimeType": "text/plain", "text": STATIC_TEXT })
        }
        "test://static-binary" => {
            json!({ "uri": uri, "mimeType": "image/png", "blob": PNG_BASE64 })
        }
        "test://watched-resource" => {
            json!({ "uri": uri, "mimeType": "text/plain", "text": "Watched resource content." })
        }
        "test://embedded" => json!({ "uri": uri, "mimeType": "text/plain", "text": EMBEDDED_TEXT }),
        _ => match template_id(uri) {
            Some(id) => json!({
                "uri": uri,
                "mimeType": "application/json",
                "text": json!({
                    "id": id,
                    "templateTest": true,
                    "data": format!("Data for ID: {id}"),
                })
                .to_string(),
            }),
            None => {
                return Err(McpError::resource_not_found(
                    "Resource not found",
                    Some(json!({ "uri": uri })),
                ));
            }
        },
    };
    from_json(json!({ "resultType": "complete", "contents": [contents] }))
}

/// The `{id}` of `test://template/{id}/data`, if `uri` matches.
fn template_id(uri: &str) -> Option<&str> {
    let id = uri
        .strip_prefix("test://template/")?
        .strip_suffix("/data")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Prompts (`prompts/list`); `test_extra_prompt` appears while toggled on.
pub fn prompts(shared: &Shared) -> Value {
    let mut prompts = vec![
        json!({
            "name": "test_simple_prompt",
            "description": "A prompt with no arguments",
        }),
        json!({
            "name": "test_prompt_with_arguments",
            "description": "A prompt with two required arguments",
            "arguments": [
                { "name": "arg1", "description": "First test argument", "required": true },
                { "name": "arg2", "description": "Second test argument", "required": true },
            ],
        }),
        json!({
            "name": "test_prompt_with_embedded_resource",
            "description": "A prompt that embeds a resource",
            "arguments": [
                { "name": "resourceUri", "description": "URI of the resource to embed", "required": true },
            ],
        }),
        json!({
            "name": "test_prompt_with_image",
            "description": "A prompt with image content",
        }),
        json!({
            "name": "test_input_required_result_prompt",
            "description": "A prompt that needs elicited context first (MRTR on 2026-07-28)",
        }),
    ];
    if shared.extra_prompt.load(Ordering::SeqCst) {
        prompts.push(json!({
            "name": "test_extra_prompt",
            "description": "Listed while test_trigger_prompt_change has toggled it on",
        }));
    }
    Value::Array(prompts)
}

fn user_text(text: impl Into<String>) -> Value {
    json!({ "role": "user", "content": { "type": "text", "text": text.into() } })
}

fn prompt_result(description: &str, messages: Vec<Value>) -> Result<GetPromptResponse, McpError> {
    let result: GetPromptResult = from_json(json!({
        "resultType": "complete",
        "description": description,
        "messages": messages,
    }))?;
    Ok(result.into())
}

/// `prompts/get`.
pub async fn get_prompt(
    kit: &Testkit,
    request: GetPromptRequestParams,
    ctx: RequestContext<RoleServer>,
) -> Result<GetPromptResponse, McpError> {
    let args = request.arguments.clone().unwrap_or_default();
    let arg = |name: &str| -> Result<String, McpError> {
        match args.get(name) {
            Some(Value::String(value)) => Ok(value.clone()),
            Some(other) => Ok(other.to_string()),
            None => Err(McpError::invalid_params(
                format!("missing required argument '{name}'"),
                None,
            )),
        }
    };
    match request.name.as_str() {
        "test_simple_prompt" => prompt_result(
            "A simple prompt",
            vec![user_text("This is a simple prompt for testing.")],
        ),
        "test_prompt_with_arguments" => {
            let (arg1, arg2) = (arg("arg1")?, arg("arg2")?);
            prompt_result(
                "A prompt with arguments",
                vec![user_text(format!(
                    "Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
                ))],
            )
        }
        "test_prompt_with_embedded_resource" => {
            let uri = arg("resourceUri")?;
            prompt_result(
                "A prompt with an embedded resource",
                vec![
                    json!({
                        "role": "user",
                        "content": {
                            "type": "resource",
                            "resource": {
                                "uri": uri,
                                "mimeType": "text/plain",
                                "text": "Embedded resource content for testing.",
                            },
                        },
                    }),
                    user_text("Please process the embedded resource above."),
                ],
            )
        }
        "test_prompt_with_image" => prompt_result(
            "A prompt with an image",
            vec![
                json!({
                    "role": "user",
                    "content": { "type": "image", "data": PNG_BASE64, "mimeType": "image/png" },
                }),
                user_text("Please analyze the image above."),
            ],
        ),
        "test_input_required_result_prompt" => {
            let subject = "prompt:test_input_required_result_prompt";
            let carried = inputs::open_state(kit, subject, request.request_state.as_deref())?;
            let asks = [Ask::elicitation(
                "user_context",
                "What context should the prompt use?",
                json!({
                    "type": "object",
                    "properties": { "context": { "type": "string" } },
                    "required": ["context"],
                }),
            )];
            let gathered = inputs::gather(
                kit,
                &ctx,
                subject,
                &asks,
                request.input_responses.as_ref(),
                carried,
                1,
            )
            .await?;
            match gathered {
                Gathered::InputRequired(result) => Ok(result.into()),
                Gathered::Complete(answers) => {
                    let context = answers
                        .get("user_context")
                        .and_then(|a| a.get("content"))
                        .and_then(|c| c.get("context"))
                        .and_then(Value::as_str)
                        .unwrap_or("(none)")
                        .to_owned();
                    prompt_result(
                        "A prompt built from elicited context",
                        vec![user_text(format!("Prompt with context: {context}"))],
                    )
                }
            }
        }
        "test_extra_prompt" if kit.shared.extra_prompt.load(Ordering::SeqCst) => {
            prompt_result("The dynamic prompt", vec![user_text("Extra prompt.")])
        }
        other => Err(McpError::invalid_params(
            format!("unknown prompt '{other}'"),
            None,
        )),
    }
}

const COMPLETIONS: [&str; 3] = ["alpha", "beta", "gamma"];

/// `completion/complete`: prefix matches for `arg1` of `test_prompt_with_arguments`.
pub fn complete(request: &Value) -> Result<CompleteResult, McpError> {
    let is_prompt = request.pointer("/ref/type").and_then(Value::as_str) == Some("ref/prompt")
        && request.pointer("/ref/name").and_then(Value::as_str)
            == Some("test_prompt_with_arguments");
    let argument = request.pointer("/argument/name").and_then(Value::as_str);
    let typed = request
        .pointer("/argument/value")
        .and_then(Value::as_str)
        .unwrap_or("");
    let values: Vec<&str> = if is_prompt && argument == Some("arg1") {
        COMPLETIONS
            .iter()
            .copied()
            .filter(|value| value.starts_with(typed))
            .collect()
    } else {
        Vec::new()
    };
    from_json(json!({
        "resultType": "complete",
        "completion": { "values": values, "total": values.len(), "hasMore": false },
    }))
}
