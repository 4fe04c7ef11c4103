//! Refusals: every reason the gateway answers a request itself instead of forwarding it, and
//! the one place each becomes a JSON-RPC error, an HTTP status and a `Retry-After`.
//!
//! A step of the pipeline returns a typed [`Refusal`]; nothing is turned into bytes until the
//! transport asks for the [`Answer`], so the HTTP edge never parses an error back.

use std::sync::Arc;

use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::{Era, Id};
use serde_json::{Value, json};

use crate::catalog::Unresolved;
use crate::limits::Refused;
use crate::upstream::UpstreamError;

/// Why a request was not forwarded.
#[derive(Debug)]
pub enum Refusal {
    /// The params are malformed; the text says how (-32602).
    Malformed(&'static str),
    /// The target is not one of the tenant's (unknown tool, prompt, resource or reference).
    Unresolved(Unresolved),
    /// The tenant's policy does not allow the tool (as the client named it).
    Denied { tool: String },
    /// The caller lacks these scopes (space-separated) for the tool: HTTP 403
    /// `insufficient_scope`, so the client can step up.
    InsufficientScope { tool: String, scopes: String },
    /// The modern era's `Mcp-Param-*` headers disagree with the arguments.
    HeaderMismatch(String),
    /// A rate limit, the tenant's quarantine, a breaker or a bulkhead ([`Refused::limit`]
    /// says which): retry after the time it gives.
    Limited(Refused),
    /// The BEGIN audit record could not be made durable, so the call was not run.
    AuditUnavailable,
    /// The upstream could not take the call.
    Upstream(UpstreamError),
    /// A `requestState` the gateway issued that is unknown, expired or someone else's.
    UnknownRequestState,
    /// A `requestState` that belongs to another replica (a call parked there, or a state a
    /// server process of that replica issued): retryable.
    ParkedElsewhere { replica: String },
    /// A bound on what a tenant may hold at the gateway (sessions opened per second, open
    /// listens, parked calls): HTTP 429 in either era.
    LimitReached {
        message: String,
        data: Value,
        retry_after_ms: Option<u64>,
    },
    /// A method the gateway does not serve in the caller's era.
    MethodNotFound(String),
}

/// A refusal as the transport sends it.
#[derive(Debug)]
pub struct Answer {
    /// The complete JSON-RPC error message.
    pub body: Vec<u8>,
    /// `None`: an ordinary message, sent like any other answer (JSON or SSE, status 200);
    /// `Some`: a plain JSON response with this HTTP status.
    pub status: Option<u16>,
    /// `Retry-After`, in seconds (429 only).
    pub(crate) retry_after_secs: Option<u64>,
    /// The scopes of an `insufficient_scope` challenge (403 only).
    pub(crate) challenge_scopes: Option<String>,
}

impl Refusal {
    /// The answer to request `id` from a client of `era`.
    pub fn answer(&self, id: &Id, era: Era) -> Answer {
        let (code, message, data) = self.error(era);
        let status = match self {
            Refusal::InsufficientScope { .. } => Some(403),
            Refusal::LimitReached { .. } => Some(429),
            _ if era == Era::Modern => Some(modern_status(code)),
            _ => None,
        };
        let retry_after_ms = match self {
            Refusal::Limited(refused) => Some(refused.retry_after_ms()),
            Refusal::LimitReached { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        };
        Answer {
            body: jsonrpc::error(Some(id), code, &message, data.as_ref()),
            status,
            retry_after_secs: retry_after_ms
                .filter(|_| status == Some(429))
                .map(|ms| ms.div_ceil(1000).max(1)),
            challenge_scopes: match self {
                Refusal::InsufficientScope { scopes, .. } => Some(scopes.clone()),
                _ => None,
            },
        }
    }

    /// The JSON-RPC error: code, message, data.
    fn error(&self, era: Era) -> (ErrorCode, String, Option<Value>) {
        match self {
            Refusal::Malformed(what) => (ErrorCode::INVALID_PARAMS, (*what).to_owned(), None),
            Refusal::Unresolved(Unresolved::Malformed(what)) => {
                (ErrorCode::INVALID_PARAMS, (*what).to_owned(), None)
            }
            Refusal::Unresolved(Unresolved::UnknownName { what, name }) => (
                ErrorCode::INVALID_PARAMS,
                format!("unknown {what}: {name}"),
                None,
            ),
            Refusal::Unresolved(Unresolved::UnknownResource { uri }) => {
                // The legacy era has its own code for this; 2026-07-28 folded it into -32602.
                let code = match era {
                    Era::Legacy => ErrorCode::RESOURCE_NOT_FOUND,
                    Era::Modern => ErrorCode::INVALID_PARAMS,
                };
                let message = format!("resource not found: {uri}");
                (code, message, Some(json!({ "uri": uri })))
            }
            Refusal::Unresolved(Unresolved::UnknownReference) => (
                ErrorCode::INVALID_PARAMS,
                "unknown completion reference".to_owned(),
                None,
            ),
            Refusal::Denied { tool } => (
                ErrorCode::INVALID_PARAMS,
                format!("tool `{tool}` is not allowed by the tenant's policy"),
                None,
            ),
            Refusal::InsufficientScope { tool, scopes } => (
                ErrorCode::INVALID_REQUEST,
                format!(
                    "insufficient scope: tool `{tool}` needs the scopes `{scopes}`; obtain a token or key that carries them"
                ),
                Some(json!({ "requiredScopes": scopes.split(' ').collect::<Vec<_>>() })),
            ),
            Refusal::HeaderMismatch(problem) => (ErrorCode::HEADER_MISMATCH, problem.clone(), None),
            Refusal::Limited(refused) => (
                ErrorCode::RATE_LIMITED,
                refused.message(),
                Some(json!({
                    "limit": refused.limit,
                    "retryAfterMs": refused.retry_after_ms(),
                })),
            ),
            Refusal::AuditUnavailable => (
                ErrorCode::INTERNAL_ERROR,
                "the audit trail cannot record this call right now, so it was not run; retry later"
                    .to_owned(),
                None,
            ),
            Refusal::Upstream(e) => upstream_error_parts(e),
            Refusal::UnknownRequestState => (
                ErrorCode::INVALID_PARAMS,
                "requestState is unknown or expired: send the request again without it".to_owned(),
                None,
            ),
            Refusal::ParkedElsewhere { replica } => (
                ErrorCode::INTERNAL_ERROR,
                format!(
                    "this call's input round trip belongs to gateway replica `{replica}` (a call parked there, or a server process of its own), and this retry reached another: retry (the load balancer may send it there), or send the request again without requestState"
                ),
                Some(json!({ "replica": replica, "retryable": true })),
            ),
            Refusal::LimitReached { message, data, .. } => (
                ErrorCode::LIMIT_REACHED,
                message.clone(),
                Some(data.clone()),
            ),
            Refusal::MethodNotFound(method) => (
                ErrorCode::METHOD_NOT_FOUND,
                format!("method not found: {method}"),
                None,
            ),
        }
    }
}

impl From<Unresolved> for Refusal {
    fn from(unresolved: Unresolved) -> Refusal {
        Refusal::Unresolved(unresolved)
    }
}

/// The error message for a call its upstream could not answer.
pub(super) fn upstream_error(id: &Id, e: &UpstreamError) -> Vec<u8> {
    let (code, message, data) = upstream_error_parts(e);
    jsonrpc::error(Some(id), code, &message, data.as_ref())
}

fn upstream_error_parts(e: &UpstreamError) -> (ErrorCode, String, Option<Value>) {
    let server: &Arc<str> = match e {
        UpstreamError::Unavailable { server, .. }
        | UpstreamError::Lost { server, .. }
        | UpstreamError::Timeout { server, .. }
        | UpstreamError::Failed { server, .. }
        | UpstreamError::Busy { server, .. } => server,
    };
    let code = match e {
        UpstreamError::Busy { .. } => ErrorCode::LIMIT_REACHED,
        _ => ErrorCode::UPSTREAM_UNAVAILABLE,
    };
    (code, e.to_string(), Some(json!({ "server": &**server })))
}

/// The HTTP status the modern era gives a JSON-RPC error of `code` sent as the answer.
pub(super) fn modern_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::METHOD_NOT_FOUND => 404,
        // The whole request was refused by a limit: 429, with Retry-After.
        ErrorCode::RATE_LIMITED => 429,
        ErrorCode::HEADER_MISMATCH
        | ErrorCode::MISSING_CLIENT_CAPABILITY
        | ErrorCode::UNSUPPORTED_PROTOCOL_VERSION => 400,
        _ => 200,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn code_of(answer: &Answer) -> i64 {
        let message: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        message["error"]["code"].as_i64().unwrap_or_default()
    }

    #[test]
    fn a_limit_is_429_with_retry_after_in_the_modern_era_only() {
        let id = Id::number(7);
        let limited = Refusal::Limited(Refused {
            limit: "tenant",
            retry_after: Duration::from_millis(1_200),
            why: "rate limit exceeded".into(),
        });
        let modern = limited.answer(&id, Era::Modern);
        assert_eq!(
            (modern.status, modern.retry_after_secs),
            (Some(429), Some(2))
        );
        assert_eq!(code_of(&modern), ErrorCode::RATE_LIMITED.0);
        let legacy = limited.answer(&id, Era::Legacy);
        assert_eq!((legacy.status, legacy.retry_after_secs), (None, None));
        assert_eq!(legacy.body, modern.body, "the same message in either era");
    }

    #[test]
    fn each_refusal_has_its_status_and_code() {
        let id = Id::number(1);
        let scope = Refusal::InsufficientScope {
            tool: "kit__echo".into(),
            scopes: "a b".into(),
        };
        for era in [Era::Legacy, Era::Modern] {
            let answer = scope.answer(&id, era);
            assert_eq!(answer.status, Some(403));
            assert_eq!(answer.challenge_scopes.as_deref(), Some("a b"));
            let gone = Refusal::LimitReached {
                message: "too many".into(),
                data: json!({ "limit": "limits.initialize_rate" }),
                retry_after_ms: Some(10),
            };
            let gone = gone.answer(&id, era);
            assert_eq!((gone.status, gone.retry_after_secs), (Some(429), Some(1)));
        }
        let uri = "kit+file:///x".to_owned();
        let unknown = Refusal::Unresolved(Unresolved::UnknownResource { uri });
        assert_eq!(code_of(&unknown.answer(&id, Era::Legacy)), -32002);
        let modern = unknown.answer(&id, Era::Modern);
        assert_eq!((code_of(&modern), modern.status), (-32602, Some(200)));
        let missing = Refusal::MethodNotFound("tools/frobnicate".into());
        assert_eq!(missing.answer(&id, Era::Modern).status, Some(404));
        assert_eq!(missing.answer(&id, Era::Legacy).status, None);
        let busy = Refusal::Upstream(UpstreamError::Busy {
            server: "kit".into(),
            limit: 4,
        });
        let busy = busy.answer(&id, Era::Modern);
        assert_eq!(
            (code_of(&busy), busy.status),
            (ErrorCode::LIMIT_REACHED.0, Some(200))
        );
    }
}
