//! What the test tools ask of the client while they run: progress, log messages, and the
//! server→client requests (sampling, elicitation, roots, and one the server withdraws).
// Logging is deprecated in rmcp (SEP-2577); the gateway still relays it, so it is tested.
#![allow(deprecated)]

use std::time::Duration;

use rmcp::{
    ErrorData as McpError, RoleServer,
    model::{CallToolRequestParams, CallToolResponse, LoggingLevel, ProgressNotificationParam},
    service::RequestContext,
};
use serde_json::json;

use crate::tools::{Args, failure, text};
use crate::{
    conformance,
    inputs::{self, Ask, Gathered},
    server::Testkit,
};

/// Sends one progress notification for the request's token, if it has one.
pub async fn send_progress(
    ctx: &RequestContext<RoleServer>,
    progress: f64,
    total: Option<f64>,
    message: Option<&str>,
) {
    let Some(token) = ctx.meta.get_progress_token() else {
        return;
    };
    let param: Result<ProgressNotificationParam, _> = serde_json::from_value(json!({
        "progressToken": token,
        "progress": progress,
        "total": total,
        "message": message,
    }));
    match param {
        Ok(param) => {
            if let Err(error) = ctx.peer.notify_progress(param).await {
                tracing::debug!(%error, "dropping progress notification");
            }
        }
        Err(error) => tracing::warn!(%error, "bad progress notification"),
    }
}

pub(crate) async fn log(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    args: &Args<'_>,
) -> Result<CallToolResponse, String> {
    let message = args.string("message")?;
    let level_name = args.string_or("level", "info")?;
    let level: LoggingLevel = serde_json::from_value(json!(level_name))
        .map_err(|_| format!("unknown log level '{level_name}'"))?;
    if args.0.get("after_ms").is_some() {
        let ms = args.uint("after_ms")?;
        let peer = ctx.peer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let log = serde_json::from_value(
                json!({ "level": level, "logger": "testkit", "data": message }),
            );
            if let Ok(log) = log {
                let _ = peer.notify_logging_message(log).await;
            }
            let params = json!({
                "messages": [{ "role": "user", "content": { "type": "text", "text": message } }],
                "maxTokens": 10,
            });
            let request = rmcp::model::ServerRequest::CustomRequest(
                rmcp::model::CustomRequest::new("sampling/createMessage", Some(params)),
            );
            let _ = peer.send_request(request).await;
        });
        return Ok(text("will log"));
    }
    kit.log(ctx, level, "testkit", json!(message)).await;
    Ok(text("logged"))
}

/// Sends a sampling request and cancels it: the client must see the cancellation name the
/// request it received (legacy era; 2026-07-28 has no server→client requests).
pub(crate) async fn withdrawn_request(
    ctx: &RequestContext<RoleServer>,
    ms: u64,
) -> Result<CallToolResponse, String> {
    let params = json!({
        "messages": [{ "role": "user", "content": { "type": "text", "text": "never mind" } }],
        "maxTokens": 10,
    });
    let request = rmcp::model::ServerRequest::CustomRequest(rmcp::model::CustomRequest::new(
        "sampling/createMessage",
        Some(params),
    ));
    let handle = ctx
        .peer
        .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
        .await
        .map_err(|error| format!("sampling/createMessage could not be sent: {error}"))?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    handle
        .cancel(Some("withdrawn by the test upstream".into()))
        .await
        .map_err(|error| format!("cancelling failed: {error}"))?;
    Ok(text("withdrawn"))
}

pub(crate) async fn sampling(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    request: &CallToolRequestParams,
    args: &Args<'_>,
) -> Result<CallToolResponse, McpError> {
    let prompt = match args.string("prompt") {
        Ok(prompt) => prompt,
        Err(error) => return Ok(failure(error)),
    };
    let asks = [Ask::sampling("reply", &prompt, 100)];
    match conformance::gather_once(kit, ctx, "tool:sampling", &asks, request).await? {
        Gathered::InputRequired(result) => Ok(result.into()),
        Gathered::Complete(answers) => Ok(text(inputs::sampling_text(answers.get("reply")))),
    }
}

pub(crate) async fn elicitation(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    request: &CallToolRequestParams,
    args: &Args<'_>,
) -> Result<CallToolResponse, McpError> {
    let message = match args.string("message") {
        Ok(message) => message,
        Err(error) => return Ok(failure(error)),
    };
    let schema = json!({
        "type": "object",
        "properties": { "name": { "type": "string", "description": "Your name" } },
        "required": ["name"],
    });
    let asks = [Ask::elicitation("answer", &message, schema)];
    match conformance::gather_once(kit, ctx, "tool:elicitation", &asks, request).await? {
        Gathered::InputRequired(result) => Ok(result.into()),
        Gathered::Complete(answers) => Ok(text(
            inputs::elicitation_summary(answers.get("answer")).to_string(),
        )),
    }
}

pub(crate) async fn roots(
    kit: &Testkit,
    ctx: &RequestContext<RoleServer>,
    request: &CallToolRequestParams,
) -> Result<CallToolResponse, McpError> {
    let asks = [Ask::roots("roots")];
    match conformance::gather_once(kit, ctx, "tool:roots", &asks, request).await? {
        Gathered::InputRequired(result) => Ok(result.into()),
        Gathered::Complete(answers) => Ok(text(
            json!(inputs::root_uris(answers.get("roots"))).to_string(),
        )),
    }
}
