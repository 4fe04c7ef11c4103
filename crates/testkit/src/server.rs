//! The MCP server handler: capabilities, era detection, logging policy and the
//! `subscriptions/listen` stream, delegating tools, resources and prompts to
//! their modules.
//!
//! One [`Testkit`] exists per connection (stdio) or per HTTP session/request
//! (rmcp calls the service factory for each); everything that must outlive a
//! request — the dynamic tool/prompt toggles, the list-change broadcast, the
//! requestState key — lives in the shared [`Shared`].
#![allow(deprecated)] // rmcp marks logging/sampling/roots deprecated (SEP-2577); we serve them.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult,
        GetPromptRequestParams, GetPromptResponse, ListPromptsResult, ListResourceTemplatesResult,
        ListResourcesResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
        PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
        RequestStateCodec, ServerConfig, SetLevelRequestParams, SubscribeRequestParams,
        SubscriptionFilter, Tool, UnsubscribeRequestParams,
    },
    service::{RequestContext, SubscriptionContext},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{catalog, tools};

/// Which transport this process serves; a few tools only make sense on stdio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Stdio,
    Http,
}

/// A change to one of the lists, fanned out to open `subscriptions/listen` streams.
#[derive(Debug, Clone, Copy)]
pub enum ListChange {
    Tools,
    Prompts,
}

/// Process-wide state shared by every handler instance.
pub struct Shared {
    pub mode: Mode,
    /// HTTP `--stateless`: legacy clients have no session, so they cannot
    /// answer server→client requests (their reply POST would be refused).
    pub legacy_stateless: bool,
    /// Whether the dynamic `extra` tool is currently listed (`toggle_tool`).
    pub extra_tool: AtomicBool,
    /// Whether the dynamic `test_extra_prompt` is listed (`test_trigger_prompt_change`).
    pub extra_prompt: AtomicBool,
    pub changes: broadcast::Sender<ListChange>,
    /// Seals MRTR `requestState` so tampering is detected.
    pub state_codec: RequestStateCodec,
}

impl Shared {
    pub fn new(mode: Mode, legacy_stateless: bool) -> Arc<Self> {
        let (changes, _) = broadcast::channel(64);
        Arc::new(Self {
            mode,
            legacy_stateless,
            extra_tool: AtomicBool::new(false),
            extra_prompt: AtomicBool::new(false),
            changes,
            state_codec: RequestStateCodec::new_unchecked(state_key()),
        })
    }
}

/// A per-process secret for requestState sealing; falls back to a fixed key
/// (this is a test server) when the kernel RNG cannot be read.
fn state_key() -> Vec<u8> {
    use std::io::Read;
    let mut key = vec![0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    if read.is_err() {
        key = b"palisade-testkit-fallback-state-key!".to_vec();
    }
    key
}

/// The handler. Cheap to clone; rmcp creates one per session.
#[derive(Clone)]
pub struct Testkit {
    pub shared: Arc<Shared>,
    /// Minimum level set by legacy `logging/setLevel` for this session.
    log_level: Arc<Mutex<Option<LoggingLevel>>>,
}

impl Testkit {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            log_level: Arc::new(Mutex::new(None)),
        }
    }

    /// Sends `notifications/message` if the request's era and level allow it.
    ///
    /// 2026-07-28 requests get logs only when their `_meta` names a
    /// `logLevel`; legacy sessions get everything until `logging/setLevel`
    /// narrows it.
    pub async fn log(
        &self,
        ctx: &RequestContext<RoleServer>,
        level: LoggingLevel,
        logger: &str,
        data: Value,
    ) {
        let threshold = if is_modern(ctx) {
            match ctx.meta.log_level() {
                Some(level) => Some(level),
                None => return,
            }
        } else {
            self.log_level.lock().ok().and_then(|guard| *guard)
        };
        if threshold.is_some_and(|min| rank(level) < rank(min)) {
            return;
        }
        let param: Result<LoggingMessageNotificationParam, _> =
            serde_json::from_value(json!({ "level": level, "logger": logger, "data": data }));
        if let Ok(param) = param
            && let Err(error) = ctx.peer.notify_logging_message(param).await
        {
            tracing::debug!(%error, "dropping log notification");
        }
    }

    /// Records a list change: legacy peers get the notification on their
    /// session, 2026-07-28 listeners get it on their `subscriptions/listen` stream.
    pub async fn list_changed(&self, ctx: &RequestContext<RoleServer>, change: ListChange) {
        // No receivers is fine: nobody is listening.
        let _ = self.shared.changes.send(change);
        if is_modern(ctx) {
            return;
        }
        let sent = match change {
            ListChange::Tools => ctx.peer.notify_tool_list_changed().await,
            ListChange::Prompts => ctx.peer.notify_prompt_list_changed().await,
        };
        if let Err(error) = sent {
            tracing::debug!(%error, "dropping list_changed notification");
        }
    }
}

/// True when the request runs under the stateless 2026-07-28 lifecycle.
pub fn is_modern(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

/// Severity order of log levels (RFC 5424 order, debug lowest).
pub fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// Deserializes a model type from JSON, mapping failure to an internal error.
///
/// Results are built from JSON literals: rmcp's model structs are
/// `#[non_exhaustive]` and change shape between releases, JSON does not.
pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, McpError> {
    serde_json::from_value(value)
        .map_err(|error| McpError::internal_error(format!("building result: {error}"), None))
}

impl ServerHandler for Testkit {
    fn get_info(&self) -> ServerConfig {
        let info = json!({
            "protocolVersion": ProtocolVersion::LATEST_WITH_INITIALIZE,
            "capabilities": {
                "tools": { "listChanged": true },
                "resources": { "subscribe": true, "listChanged": true },
                "prompts": { "listChanged": true },
                "logging": {},
                "completions": {},
            },
            "serverInfo": {
                "name": "palisade-testkit",
                "title": "Palisade test upstream",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "instructions": "Test upstream for the Palisade gateway: every relayed MCP feature, both protocol eras.",
        });
        match serde_json::from_value(info) {
            Ok(info) => info,
            Err(error) => {
                tracing::error!(%error, "server info literal no longer matches rmcp's model");
                ServerConfig::default()
            }
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools::list(&self.shared)))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::find(&self.shared, name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        tools::call(self, request, context).await
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        from_json(json!({ "resultType": "complete", "resources": catalog::resources() }))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        from_json(json!({
            "resultType": "complete",
            "resourceTemplates": catalog::resource_templates(),
        }))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        catalog::read(&request.uri).map(ReadResourceResponse::from)
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::debug!(uri = %request.uri, "resources/subscribe acknowledged");
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::debug!(uri = %request.uri, "resources/unsubscribe acknowledged");
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        from_json(json!({
            "resultType": "complete",
            "prompts": catalog::prompts(&self.shared),
        }))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        catalog::get_prompt(self, request, context).await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let request = serde_json::to_value(&request)
            .map_err(|error| McpError::internal_error(error.to_string(), None))?;
        catalog::complete(&request)
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if let Ok(mut level) = self.log_level.lock() {
            *level = Some(request.level);
        }
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // rmcp intersects this with what get_info advertises.
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let mut changes = self.shared.changes.subscribe();
        loop {
            let change = tokio::select! {
                () = context.cancelled() => return Ok(()),
                change = changes.recv() => change,
            };
            let sent = match change {
                Ok(ListChange::Tools) => context.sink().notify_tool_list_changed().await,
                Ok(ListChange::Prompts) => context.sink().notify_prompt_list_changed().await,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            // A filter that did not opt into this list is not an error.
            if let Err(error) = sent {
                tracing::trace!(%error, "listen stream skipped a change");
            }
        }
    }
}

/// Flips a toggle and returns the new state.
pub fn toggle(flag: &AtomicBool) -> bool {
    !flag.fetch_xor(true, Ordering::SeqCst)
}
