//! The lifecycle the gateway answers itself: a legacy session's `initialize` (and the 429 when
//! the tenant may not open one now), the modern era's `server/discover`, and the modern era's
//! checks of a request's `_meta` against its headers ([`check_modern`]).

use std::sync::Arc;
use std::time::Duration;

use mcp_wire::era::{self, meta};
use mcp_wire::jsonrpc::{self, ErrorCode, Request};
use mcp_wire::{Era, Id, RawObject};
use serde_json::{Value, json};

use super::Reply;
use crate::auth::Principal;
use crate::gateway::Gateway;
use crate::pipeline::Refusal;
use crate::registry::Tenant;
use crate::session::{self};

pub(super) async fn initialize(
    gw: &Arc<Gateway>,
    principal: &Principal,
    tenant: &Tenant,
    req: &Request,
) -> Reply {
    let requested = req
        .params
        .as_ref()
        .and_then(|p| RawObject::parse(p.get()))
        .and_then(|o| o.get_str("protocolVersion"));
    let Some(requested) = requested else {
        return Reply::Message(jsonrpc::error(
            Some(&req.id),
            ErrorCode::INVALID_PARAMS,
            "params.protocolVersion must be a string",
            None,
        ));
    };
    let version = era::negotiate_legacy(&requested);
    let (capabilities, instructions) = merged_capabilities(tenant).await;
    let mut body = json!({
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": server_info(),
    });
    if let Some(instructions) = instructions {
        body["instructions"] = Value::String(instructions);
    }
    let capabilities = req
        .params
        .as_ref()
        .and_then(|p| RawObject::parse(p.get()))
        .and_then(|o| o.get("capabilities").map(ToOwned::to_owned))
        .filter(|c| c.get().starts_with('{'))
        .unwrap_or_else(|| RawObject::default().to_raw());
    if capabilities.get().len() > session::MAX_CAPABILITIES_BYTES {
        gw.metrics.rejected("session_limit");
        return Reply::Message(jsonrpc::error(
            Some(&req.id),
            ErrorCode::INVALID_PARAMS,
            &format!(
                "params.capabilities is larger than {} bytes; declare only the capabilities the client has",
                session::MAX_CAPABILITIES_BYTES
            ),
            None,
        ));
    }
    let session = match gw.sessions.create(principal, version, capabilities) {
        Ok(session) => session,
        Err(refused) => {
            gw.metrics.rejected("session_limit");
            return session_refused(tenant, &req.id, &refused);
        }
    };
    gw.sessions.announce(&session).await;
    Reply::Initialized {
        body: jsonrpc::result(&req.id, &body.to_string()),
        session,
    }
}

/// The 429 answer to an `initialize` the tenant may not make now.
pub(super) fn session_refused(tenant: &Tenant, id: &Id, refused: &session::Refused) -> Reply {
    let (message, data, retry_after_ms) = match refused {
        session::Refused::Full(limit) => (
            format!(
                "tenant `{}` already has {limit} open sessions (limits.max_sessions_per_tenant): end unused ones with DELETE, or raise the limit",
                tenant.id
            ),
            json!({ "limit": "limits.max_sessions_per_tenant", "value": limit }),
            None,
        ),
        session::Refused::Memory(budget) => (
            format!(
                "tenant `{}`'s sessions already store {budget} bytes (limits.session_memory_per_tenant): end unused ones with DELETE, or raise the limit",
                tenant.id
            ),
            json!({ "limit": "limits.session_memory_per_tenant", "value": budget }),
            None,
        ),
        session::Refused::Rate { retry_after } => (
            format!(
                "tenant `{}` opens sessions faster than limits.initialize_rate allows; retry later",
                tenant.id
            ),
            json!({ "limit": "limits.initialize_rate", "retryAfterMs": retry_after.as_millis() as u64 }),
            Some(retry_after.as_millis() as u64),
        ),
    };
    let refusal = Refusal::LimitReached {
        message,
        data,
        retry_after_ms,
    };
    Reply::Refused(refusal.answer(id, Era::Legacy))
}

pub(super) async fn discover(tenant: &Tenant, id: &Id) -> Vec<u8> {
    let (capabilities, instructions) = merged_capabilities(tenant).await;
    let mut body = json!({
        "resultType": "complete",
        "supportedVersions": era::ALL_VERSIONS,
        "capabilities": capabilities,
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": { "io.modelcontextprotocol/serverInfo": server_info() },
    });
    if let Some(instructions) = instructions {
        body["instructions"] = Value::String(instructions);
    }
    jsonrpc::result(id, &body.to_string())
}

pub(super) fn server_info() -> Value {
    json!({ "name": "palisade", "title": "Palisade MCP gateway", "version": env!("CARGO_PKG_VERSION") })
}

/// The union of what the tenant's upstreams offer. `listChanged` is always declared: the
/// gateway itself announces changes when an upstream reconnects.
pub(super) async fn merged_capabilities(tenant: &Tenant) -> (Value, Option<String>) {
    let infos = futures_util::future::join_all(tenant.upstreams.iter().map(|u| async move {
        (
            u.name.clone(),
            u.info(Duration::from_millis(u.config.list_timeout_ms))
                .await,
        )
    }))
    .await;
    let mut caps = serde_json::Map::new();
    let mut instructions = Vec::new();
    let mut subscribe = false;
    for (name, info) in infos {
        let Ok(info) = info else { continue };
        let c = &*info.capabilities;
        for key in ["tools", "prompts"] {
            if c.get(key).is_some() {
                caps.insert(key.into(), json!({ "listChanged": true }));
            }
        }
        if let Some(r) = c.get("resources") {
            subscribe |= r.get("subscribe").and_then(Value::as_bool).unwrap_or(false);
            caps.insert(
                "resources".into(),
                json!({ "listChanged": true, "subscribe": subscribe }),
            );
        }
        for key in ["logging", "completions"] {
            if c.get(key).is_some() {
                caps.insert(key.into(), json!({}));
            }
        }
        if let Some(text) = &info.instructions {
            instructions.push(format!("[{name}] {text}"));
        }
    }
    let instructions = (!instructions.is_empty()).then(|| instructions.join("\n\n"));
    (Value::Object(caps), instructions)
}

/// The modern era's checks of a request's `_meta` against its headers. `Err` is the HTTP
/// status and the error message.
pub(crate) fn check_modern(
    req_method: &str,
    params: Option<&serde_json::value::RawValue>,
    id: Option<&Id>,
    headers: &ModernHeaders<'_>,
) -> Result<(), (u16, Vec<u8>)> {
    let bad = |code: ErrorCode, msg: &str, data: Option<Value>| {
        (400, jsonrpc::error(id, code, msg, data.as_ref()))
    };
    let params_obj = params.and_then(|p| RawObject::parse(p.get()));
    let meta_obj = params_obj.as_ref().and_then(|p| p.get_object("_meta"));
    let Some(meta_obj) = meta_obj else {
        return Err(bad(
            ErrorCode::INVALID_PARAMS,
            "params._meta is required in protocol version 2026-07-28",
            None,
        ));
    };
    let Some(version) = meta_obj.get_str(meta::PROTOCOL_VERSION) else {
        return Err(bad(
            ErrorCode::INVALID_PARAMS,
            "params._meta[\"io.modelcontextprotocol/protocolVersion\"] is required",
            None,
        ));
    };
    // A header that disagrees with the body is a mismatch before it is anything else.
    if let Some(h) = headers.protocol_version
        && h != version
    {
        return Err(bad(
            ErrorCode::HEADER_MISMATCH,
            "the MCP-Protocol-Version header must equal params._meta protocolVersion",
            None,
        ));
    }
    if Era::of_version(&version) != Some(Era::Modern) {
        return Err(bad(
            ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
            &format!("unsupported protocol version: {version}"),
            Some(json!({ "supported": era::ALL_VERSIONS, "requested": version })),
        ));
    }
    if headers.protocol_version.is_none() {
        return Err(bad(
            ErrorCode::HEADER_MISMATCH,
            "the MCP-Protocol-Version header is required in protocol version 2026-07-28",
            None,
        ));
    }
    if meta_obj.get(meta::CLIENT_CAPABILITIES).is_none() {
        return Err(bad(
            ErrorCode::INVALID_PARAMS,
            "params._meta[\"io.modelcontextprotocol/clientCapabilities\"] is required",
            None,
        ));
    }
    if let Some(m) = headers.method {
        if m != req_method {
            return Err(bad(
                ErrorCode::HEADER_MISMATCH,
                "the Mcp-Method header does not match the request's method",
                None,
            ));
        }
    } else if id.is_some() {
        return Err(bad(
            ErrorCode::HEADER_MISMATCH,
            "the Mcp-Method header is required",
            None,
        ));
    }
    if let Some(field) = era::name_field(req_method) {
        let body_name = params_obj.as_ref().and_then(|p| p.get_str(field));
        if headers.name != body_name.as_deref() {
            return Err(bad(
                ErrorCode::HEADER_MISMATCH,
                &format!("the Mcp-Name header must equal params.{field}"),
                None,
            ));
        }
    }
    Ok(())
}

/// The modern-era headers of a request.
pub(crate) struct ModernHeaders<'a> {
    pub protocol_version: Option<&'a str>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
}
