//! Asking the client for input (sampling, elicitation, roots) in either era.
//!
//! Legacy sessions (2025-11-25 and older) get real server→client requests on
//! the peer. 2026-07-28 forbids those, so the same tool answers with an
//! `InputRequiredResult` and completes when the client retries with
//! `inputResponses`; the accumulated answers travel in an HMAC-sealed
//! `requestState`, so the server keeps nothing between rounds and a tampered
//! state is rejected.
//!
//! Requests are sent as raw JSON (rmcp `CustomRequest`) so schemas the typed
//! model cannot express (titled enums, `enumNames`, defaults) reach the
//! client unchanged.
#![allow(deprecated)]

use std::collections::BTreeMap;

use rmcp::{
    ErrorData as McpError, RoleServer,
    model::{ClientCapabilities, CustomRequest, InputRequests, InputRequiredResult, ServerRequest},
    service::RequestContext,
};
use serde_json::{Map, Value, json};

use crate::server::{Testkit, from_json, is_modern};

/// One question for the client: a key (the `inputRequests` key) and the request.
#[derive(Debug, Clone)]
pub struct Ask {
    pub key: &'static str,
    pub method: &'static str,
    pub params: Value,
}

impl Ask {
    pub fn sampling(key: &'static str, prompt: &str, max_tokens: u32) -> Self {
        Self {
            key,
            method: "sampling/createMessage",
            params: json!({
                "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
                "maxTokens": max_tokens,
            }),
        }
    }

    pub fn elicitation(key: &'static str, message: &str, schema: Value) -> Self {
        Self {
            key,
            method: "elicitation/create",
            params: json!({ "mode": "form", "message": message, "requestedSchema": schema }),
        }
    }

    pub fn roots(key: &'static str) -> Self {
        Self {
            key,
            method: "roots/list",
            params: json!({}),
        }
    }

    /// The client capability this request needs.
    fn capability(&self) -> &'static str {
        match self.method {
            "sampling/createMessage" => "sampling",
            "elicitation/create" => "elicitation",
            _ => "roots",
        }
    }

    /// Whether `answer` has the shape of a result to this request.
    fn accepts(&self, answer: &Value) -> bool {
        match self.method {
            "elicitation/create" => answer.get("action").is_some_and(Value::is_string),
            "sampling/createMessage" => answer.get("content").is_some() && answer.is_object(),
            _ => answer.get("roots").is_some_and(Value::is_array),
        }
    }
}

/// The outcome of one gathering round.
pub enum Gathered {
    /// Every answer, keyed like the asks, plus what earlier rounds carried.
    Complete(Map<String, Value>),
    /// The client must answer and retry (2026-07-28 only).
    InputRequired(InputRequiredResult),
}

/// Previous-round data carried in `requestState`.
#[derive(Debug, Default)]
pub struct Carried {
    /// Which multi-round step the client is answering (0 on the first call).
    pub round: u64,
    /// Answers from earlier rounds.
    pub answers: Map<String, Value>,
}

/// Opens a `requestState` sealed for `subject`; `None` input means a first call.
pub fn open_state(kit: &Testkit, subject: &str, state: Option<&str>) -> Result<Carried, McpError> {
    let Some(state) = state else {
        return Ok(Carried::default());
    };
    let value: Value = kit
        .shared
        .state_codec
        .open_json_with(state, subject.as_bytes())
        .map_err(|error| {
            McpError::invalid_params(
                format!("requestState failed verification: {error}"),
                Some(json!({ "reason": "invalid_request_state" })),
            )
        })?;
    Ok(Carried {
        round: value.get("round").and_then(Value::as_u64).unwrap_or(0),
        answers: value
            .get("answers")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

/// Seals round data for the next retry of `subject`.
pub fn seal_state(
    kit: &Testkit,
    subject: &str,
    round: u64,
    answers: &Map<String, Value>,
) -> Result<String, McpError> {
    kit.shared
        .state_codec
        .seal_json_with(
            &json!({ "round": round, "answers": answers }),
            &rmcp::model::SealOptions::new().associated_data(subject.as_bytes()),
        )
        .map_err(|error| McpError::internal_error(format!("sealing requestState: {error}"), None))
}

/// Gets answers to `asks`, by peer requests (legacy) or by an MRTR round (2026-07-28).
///
/// `subject` binds the sealed state to one tool or prompt; `round` is stored
/// in the state so multi-round fixtures can tell their steps apart.
pub async fn gather(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    subject: &str,
    asks: &[Ask],
    responses: Option<&BTreeMap<String, Value>>,
    carried: Carried,
    round: u64,
) -> Result<Gathered, McpError> {
    let mut answers = carried.answers;
    if !is_modern(ctx) {
        if kit.shared.legacy_stateless {
            return Err(McpError::invalid_request(
                "this tool sends a server-to-client request, which a legacy client can only \
                 answer within a session: run palisade-testkit http without --stateless",
                None,
            ));
        }
        for ask in asks {
            let answer = peer_request(ctx, ask.method, ask.params.clone()).await?;
            answers.insert(ask.key.to_owned(), answer);
        }
        return Ok(Gathered::Complete(answers));
    }

    let missing_capability: Vec<&Ask> = asks
        .iter()
        .filter(|ask| !client_declares(ctx, ask.capability()))
        .collect();
    if let Some(ask) = missing_capability.first() {
        let required: ClientCapabilities = from_json(json!({ ask.capability(): {} }))?;
        return Err(McpError::missing_required_client_capability(required));
    }

    let mut pending = InputRequests::new();
    for ask in asks {
        let answer = responses.and_then(|r| r.get(ask.key));
        match answer {
            Some(answer) if ask.accepts(answer) => {
                answers.insert(ask.key.to_owned(), answer.clone());
            }
            _ => {
                let request = from_json(json!({ "method": ask.method, "params": ask.params }))?;
                pending.insert(ask.key.to_owned(), request);
            }
        }
    }
    if pending.is_empty() {
        return Ok(Gathered::Complete(answers));
    }
    // Answers accepted this round ride along so a partial retry is not lost.
    let state = seal_state(kit, subject, round, &answers)?;
    Ok(Gathered::InputRequired(InputRequiredResult::new(
        Some(pending),
        Some(state),
    )))
}

/// Whether the request's client declared `capability` (per-request `_meta`
/// on 2026-07-28, the `initialize` capabilities on legacy sessions).
pub fn client_declares(ctx: &RequestContext<RoleServer>, capability: &str) -> bool {
    ctx.client_capabilities()
        .and_then(|caps| serde_json::to_value(caps).ok())
        .is_some_and(|caps| caps.get(capability).is_some_and(|v| !v.is_null()))
}

/// Sends a server→client request as raw JSON and returns the raw result.
pub async fn peer_request(
    ctx: &RequestContext<RoleServer>,
    method: &str,
    params: Value,
) -> Result<Value, McpError> {
    let request = ServerRequest::CustomRequest(CustomRequest::new(method, Some(params)));
    let result = ctx.peer.send_request(request).await.map_err(|error| {
        McpError::internal_error(format!("{method} to the client failed: {error}"), None)
    })?;
    serde_json::to_value(result)
        .map_err(|error| McpError::internal_error(format!("{method} result: {error}"), None))
}

/// Text summary of an elicitation answer: `{"action": …, "content": …}`.
pub fn elicitation_summary(answer: Option<&Value>) -> Value {
    let answer = answer.cloned().unwrap_or(Value::Null);
    json!({
        "action": answer.get("action").cloned().unwrap_or(Value::Null),
        "content": answer.get("content").cloned().unwrap_or(Value::Null),
    })
}

/// The text of a sampling answer (`content.text`, or the JSON of the content).
pub fn sampling_text(answer: Option<&Value>) -> String {
    let content = answer.and_then(|a| a.get("content"));
    match content.and_then(|c| c.get("text")).and_then(Value::as_str) {
        Some(text) => text.to_owned(),
        None => content.map(Value::to_string).unwrap_or_default(),
    }
}

/// The root URIs of a `roots/list` answer.
pub fn root_uris(answer: Option<&Value>) -> Vec<String> {
    answer
        .and_then(|a| a.get("roots"))
        .and_then(Value::as_array)
        .map(|roots| {
            roots
                .iter()
                .filter_map(|root| root.get("uri").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
