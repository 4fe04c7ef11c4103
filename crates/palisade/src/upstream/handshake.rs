//! The gateway as an MCP client: the handshake that opens a link, in the upstream's era.
//!
//! Legacy upstreams get `initialize` + `notifications/initialized`; modern ones `server/discover`.
//! With `protocol = "auto"` the gateway asks `server/discover` first. An error, a server that
//! dies of an unknown request before `initialize`, or one that passes over it (after half the
//! handshake time the gateway sends `ping`, which legacy servers answer before `initialize`; a
//! server that answers that first never read discover as its own) makes the upstream legacy
//! until the gateway restarts, so an old server costs at most one restart. A slow starter
//! answers neither for a while and is not mistaken for a legacy one. A server that answers is
//! spoken to in the modern era
//! by 2026-07-28 clients and by the gateway itself (lists, `subscriptions/listen`); what legacy
//! clients get is `Upstream::call`'s business:
//! - over HTTP, each legacy client session has its own upstream session, opened with
//!   `initialize` and the client's own capabilities, so it gets what the server gives it
//!   directly; a server that refuses `initialize` has its legacy clients bridged;
//! - over stdio, a process speaks one era, fixed by its first exchange, and one process is what
//!   a server may expect: legacy clients are bridged (an `InputRequiredResult` becomes
//!   server→client requests the gateway answers with the client's). A server whose tools use
//!   only server→client requests, which the modern era removed, wants `protocol = "legacy"`.
//!
//! `protocol = "legacy"` or `"modern"` forces one era for every client; the other era's clients
//! are bridged, with what a bridge cannot carry (see the README's era table).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mcp_wire::era::{self, meta};
use mcp_wire::{Era, ErrorCode};
use serde_json::Value;

use super::{Link, Upstream, UpstreamError};
use crate::config::UpstreamProtocol;

/// What the gateway tells upstreams it can do as a client: it relays sampling, elicitation (form
/// and URL) and roots requests to the client whose call caused them. A client session's own
/// upstream session declares that client's capabilities instead.
pub(crate) const CLIENT_CAPABILITIES: &str =
    r#"{"sampling":{},"elicitation":{"form":{},"url":{}},"roots":{"listChanged":true}}"#;

pub(crate) fn client_info() -> String {
    serde_json::json!({ "name": "palisade", "version": env!("CARGO_PKG_VERSION") }).to_string()
}

/// What the handshake learnt about an upstream.
#[derive(Clone, Debug)]
pub struct UpstreamInfo {
    pub era: Era,
    pub protocol_version: String,
    pub capabilities: Arc<Value>,
    pub(crate) instructions: Option<String>,
}

impl UpstreamInfo {
    /// Whether the upstream declared the capability a list needs.
    pub(crate) fn offers(&self, kind: super::ListKind) -> bool {
        let key = match kind {
            super::ListKind::Tools => "tools",
            super::ListKind::Prompts => "prompts",
            super::ListKind::Resources | super::ListKind::ResourceTemplates => "resources",
        };
        self.capabilities.get(key).is_some()
    }

    /// Whether the upstream says any of its lists can change (`listChanged`); one that does not
    /// has nothing to send on a `subscriptions/listen` stream.
    pub(crate) fn announces_list_changes(&self) -> bool {
        ["tools", "prompts", "resources"]
            .iter()
            .any(|key| self.capabilities[key]["listChanged"] == Value::Bool(true))
    }
}

/// The info of a link whose handshake is still running.
pub(crate) fn provisional() -> &'static UpstreamInfo {
    static P: OnceLock<UpstreamInfo> = OnceLock::new();
    P.get_or_init(|| UpstreamInfo {
        era: Era::Legacy,
        protocol_version: era::LATEST_LEGACY.into(),
        capabilities: Arc::new(Value::Object(Default::default())),
        instructions: None,
    })
}

/// How long `auto` waits for `server/discover` alone before asking `ping` too: half the
/// handshake's time, so a server that ignores discover is found well within it.
fn discover_probe(up: &Upstream) -> Duration {
    Duration::from_millis(up.config.connect_timeout_ms / 2)
}

pub(super) async fn run(up: &Arc<Upstream>, link: &Arc<Link>) -> Result<UpstreamInfo, String> {
    match up.config.protocol {
        UpstreamProtocol::Legacy => initialize(up, link).await?.map_err(|code| {
            up.refused.store(true, Ordering::Relaxed);
            format!("initialize failed with error {code}")
        }),
        // A server that answered, but not with the modern era, refused it.
        UpstreamProtocol::Modern => discover(up, link).await.inspect_err(|_| {
            if !link.closed.is_cancelled() {
                up.refused.store(true, Ordering::Relaxed);
            }
        }),
        UpstreamProtocol::Auto if up.legacy_only.load(Ordering::Relaxed) => legacy(up, link).await,
        UpstreamProtocol::Auto => match probe(up, link).await {
            Ok(info) => Ok(info),
            Err(reason) => {
                up.legacy_only.store(true, Ordering::Relaxed);
                tracing::info!(server = %up.name, %reason, "upstream does not speak 2026-07-28; using the legacy era");
                legacy(up, link).await
            }
        },
    }
}

/// `auto`'s question: the modern era's info, or why the upstream is legacy. It waits as long as
/// the handshake may (a slow starter, an interpreter importing its SDK, answers late); only an
/// answer decides, and discover wins a tie with the `ping` sent after `discover_probe`.
async fn probe(up: &Arc<Upstream>, link: &Arc<Link>) -> Result<UpstreamInfo, String> {
    let discover = discover(up, link);
    tokio::pin!(discover);
    tokio::select! {
        outcome = &mut discover => return outcome,
        () = tokio::time::sleep(discover_probe(up)) => {}
    }
    // Silent so far: a slow starter, or a legacy server that drops requests before
    // `initialize` (as the Python SDK 1.x does) but answers `ping`.
    let ping = up.request_on(link, "ping", "{}", None);
    tokio::select! {
        biased;
        outcome = &mut discover => return outcome,
        answer = ping => if let Err(UpstreamError::Lost { reason, .. }) = answer {
            return Err(reason);
        },
    }
    // A server that answered `ping` has read discover, which it received first; one that
    // handles requests concurrently may still be answering it, so it has a moment more.
    match tokio::time::timeout(discover_probe(up) / 5, discover).await {
        Ok(outcome) => outcome,
        Err(_) => Err("it answered ping but not server/discover".into()),
    }
}

async fn legacy(up: &Arc<Upstream>, link: &Arc<Link>) -> Result<UpstreamInfo, String> {
    match initialize(up, link).await? {
        Ok(info) => Ok(info),
        Err(code) => Err(format!("initialize failed with error {code}")),
    }
}

/// `Ok(Err(code))` when the upstream answered with a JSON-RPC error.
async fn initialize(
    up: &Arc<Upstream>,
    link: &Arc<Link>,
) -> Result<Result<UpstreamInfo, i64>, String> {
    let capabilities = up
        .declared
        .as_deref()
        .map_or(CLIENT_CAPABILITIES, |c| c.get());
    let params = format!(
        r#"{{"protocolVersion":"{}","capabilities":{},"clientInfo":{}}}"#,
        era::LATEST_LEGACY,
        capabilities,
        client_info()
    );
    let result = match up.request_on(link, "initialize", &params, None).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => return Ok(Err(error_code(error.get()))),
        Err(e) => return Err(describe(e)),
    };
    let v: Value = serde_json::from_str(result.get())
        .map_err(|e| format!("malformed initialize result: {e}"))?;
    let version = v["protocolVersion"].as_str().unwrap_or_default().to_owned();
    if Era::of_version(&version) != Some(Era::Legacy) {
        return Err(format!(
            "upstream answered initialize with unsupported protocol version `{version}`"
        ));
    }
    up.notify_on(link, "notifications/initialized", None);
    Ok(Ok(UpstreamInfo {
        era: Era::Legacy,
        protocol_version: version,
        capabilities: Arc::new(v["capabilities"].clone()),
        instructions: v["instructions"].as_str().map(str::to_owned),
    }))
}

fn discover_params() -> String {
    format!(
        r#"{{"_meta":{{"{}":"{}","{}":{},"{}":{}}}}}"#,
        meta::PROTOCOL_VERSION,
        era::MODERN,
        meta::CLIENT_CAPABILITIES,
        CLIENT_CAPABILITIES,
        meta::CLIENT_INFO,
        client_info()
    )
}

/// A health check on an established link: `ping` in the legacy era, `server/discover` in the
/// modern one (which has no `ping`). Any answer, even an error, means the server is alive.
pub(super) async fn health(
    up: &Arc<Upstream>,
    link: &Arc<Link>,
    within: Duration,
) -> Result<(), String> {
    let outcome = match link.info().era {
        Era::Legacy => up.request_on(link, "ping", "{}", Some(within)).await,
        Era::Modern => {
            up.request_on(link, "server/discover", &discover_params(), Some(within))
                .await
        }
    };
    outcome.map(drop).map_err(|e| e.to_string())
}

async fn discover(up: &Arc<Upstream>, link: &Arc<Link>) -> Result<UpstreamInfo, String> {
    let params = discover_params();
    let result = match up.request_on(link, "server/discover", &params, None).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => {
            return Err(format!(
                "server/discover failed with error {}",
                error_code(error.get())
            ));
        }
        Err(e) => return Err(describe(e)),
    };
    let v: Value = serde_json::from_str(result.get())
        .map_err(|e| format!("malformed server/discover result: {e}"))?;
    let supported = v["supportedVersions"]
        .as_array()
        .is_some_and(|vs| vs.iter().any(|x| x.as_str() == Some(era::MODERN)));
    if !supported {
        return Err(format!(
            "upstream does not support protocol version {}",
            era::MODERN
        ));
    }
    Ok(UpstreamInfo {
        era: Era::Modern,
        protocol_version: era::MODERN.into(),
        capabilities: Arc::new(v["capabilities"].clone()),
        instructions: v["instructions"].as_str().map(str::to_owned),
    })
}

fn error_code(error: &str) -> i64 {
    serde_json::from_str::<Value>(error)
        .ok()
        .and_then(|v| v["code"].as_i64())
        .unwrap_or(ErrorCode::INTERNAL_ERROR.0)
}

fn describe(e: UpstreamError) -> String {
    match e {
        UpstreamError::Lost { reason, .. }
        | UpstreamError::Unavailable { reason, .. }
        | UpstreamError::Failed { reason, .. } => reason,
        UpstreamError::Timeout { ms, .. } => format!("no answer within {ms} ms"),
        busy @ UpstreamError::Busy { .. } => busy.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(capabilities: Value) -> UpstreamInfo {
        UpstreamInfo {
            capabilities: Arc::new(capabilities),
            ..provisional().clone()
        }
    }

    #[test]
    fn list_changes_are_announced_per_list() {
        assert!(info(serde_json::json!({"tools": {"listChanged": true}})).announces_list_changes());
        assert!(
            info(serde_json::json!({"tools": {}, "resources": {"listChanged": true}}))
                .announces_list_changes()
        );
        assert!(!info(serde_json::json!({"tools": {}})).announces_list_changes());
        assert!(!info(serde_json::json!({"tools": {"listChanged": false}, "logging": {"listChanged": true}})).announces_list_changes());
    }
}
