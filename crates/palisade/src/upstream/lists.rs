//! The list cache: every page of an upstream's tools, prompts, resources and templates,
//! fetched on first use and dropped when the upstream announces a change (or reconnects).
//! A generation counter keeps a fetch that raced a change from caching stale items.
//!
//! Bounded: one list (every page) is at most [`MAX_LIST_BYTES`], or the fetch fails; all cached
//! lists of the gateway hold at most [`MAX_CACHED_BYTES`], beyond which lists are served
//! without being cached.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mcp_wire::RawObject;
use mcp_wire::param_headers::{self, HeaderParam};
use serde_json::value::RawValue;

use super::{ClientDefaults, Route, Step, Upstream, UpstreamError, truncate};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The result field holding the items.
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resource_templates",
        }
    }

    pub(crate) fn changed_notification(self) -> Option<&'static str> {
        match self {
            ListKind::Tools => Some("notifications/tools/list_changed"),
            ListKind::Prompts => Some("notifications/prompts/list_changed"),
            ListKind::Resources => Some("notifications/resources/list_changed"),
            ListKind::ResourceTemplates => None,
        }
    }
}

/// The bytes of one list, all pages, at most.
pub(super) const MAX_LIST_BYTES: usize = 16 << 20;
/// The bytes every cached list of the gateway holds together, at most.
pub(super) const MAX_CACHED_BYTES: usize = 256 << 20;
/// What cached lists hold now: process-wide, as the memory it bounds is.
static CACHED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Counts `bytes` more against [`MAX_CACHED_BYTES`]; `false` when they do not fit.
fn reserve(bytes: usize) -> bool {
    CACHED_BYTES
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            held.checked_add(bytes).filter(|&b| b <= MAX_CACHED_BYTES)
        })
        .is_ok()
}

/// One upstream list, all pages, with the names it holds (for bounded metric labels).
pub(super) struct CachedList {
    items: Arc<Vec<Box<RawValue>>>,
    /// Reserved in [`CACHED_BYTES`] until dropped.
    bytes: usize,
    names: std::collections::HashSet<String>,
    /// Tools only: the `x-mcp-header` annotations of the tools that have any.
    header_params: HashMap<String, Vec<HeaderParam>>,
}

impl Drop for CachedList {
    fn drop(&mut self) {
        CACHED_BYTES.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    tools: Option<Vec<Box<RawValue>>>,
    prompts: Option<Vec<Box<RawValue>>>,
    resources: Option<Vec<Box<RawValue>>>,
    resource_templates: Option<Vec<Box<RawValue>>>,
    next_cursor: Option<String>,
}

impl Upstream {
    pub(super) fn invalidate(&self, kind: ListKind) {
        self.list_generation.fetch_add(1, Ordering::Relaxed);
        self.lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&kind);
    }

    pub(super) fn invalidate_all(&self) {
        self.list_generation.fetch_add(1, Ordering::Relaxed);
        self.lists.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// All items of one list (every page), from the cache or fetched.
    pub async fn list(
        self: &Arc<Self>,
        kind: ListKind,
    ) -> Result<Arc<Vec<Box<RawValue>>>, UpstreamError> {
        if let Some(cached) = self
            .lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&kind)
        {
            self.metrics.catalog_cache(&self.name, kind.label(), true);
            return Ok(cached.items.clone());
        }
        self.metrics.catalog_cache(&self.name, kind.label(), false);
        let generation = self.list_generation.load(Ordering::Relaxed);
        let link = self
            .link(Duration::from_millis(self.config.list_timeout_ms))
            .await?;
        if !link.info().offers(kind) {
            return Ok(Arc::new(Vec::new()));
        }
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut cursor: Option<String> = None;
        for _page in 0..100 {
            let mut params = RawObject::default();
            if let Some(c) = &cursor {
                params.set_str("cursor", c);
            }
            let mut handle = self.call_on(
                &link,
                kind.method(),
                Some(&params),
                Route::Internal,
                ClientDefaults::default(),
            )?;
            let result = loop {
                match handle.next().await {
                    Step::Event(_) => continue,
                    Step::Done(outcome) => break outcome?,
                }
            };
            let result = result.map_err(|e| UpstreamError::Failed {
                server: self.name.clone(),
                reason: format!(
                    "{} returned an error: {}",
                    kind.method(),
                    truncate(e.get(), 200)
                ),
            })?;
            let page: ListPage =
                serde_json::from_str(result.get()).map_err(|e| UpstreamError::Failed {
                    server: self.name.clone(),
                    reason: format!("{} returned a malformed result: {e}", kind.method()),
                })?;
            let field = match kind {
                ListKind::Tools => page.tools,
                ListKind::Prompts => page.prompts,
                ListKind::Resources => page.resources,
                ListKind::ResourceTemplates => page.resource_templates,
            };
            let field = field.unwrap_or_default();
            bytes += field.iter().map(|i| i.get().len()).sum::<usize>();
            if bytes > MAX_LIST_BYTES {
                return Err(UpstreamError::Failed {
                    server: self.name.clone(),
                    reason: format!(
                        "{} is larger than {MAX_LIST_BYTES} bytes in all; the gateway does not serve it",
                        kind.method()
                    ),
                });
            }
            items.extend(field);
            match page.next_cursor {
                Some(c) if !c.is_empty() => cursor = Some(c),
                _ => break,
            }
        }
        let items = Arc::new(items);
        if self.list_generation.load(Ordering::Relaxed) != generation {
            return Ok(items);
        }
        if !reserve(bytes) {
            tracing::warn!(server = %self.name, list = kind.label(), "the list cache is full ({MAX_CACHED_BYTES} bytes); serving this list uncached");
            return Ok(items);
        }
        let key = if matches!(kind, ListKind::Tools | ListKind::Prompts) {
            "name"
        } else {
            "uri"
        };
        let mut names = std::collections::HashSet::new();
        let mut header_params = HashMap::new();
        for item in items.iter() {
            let Some(name) = RawObject::parse(item.get()).and_then(|o| o.get_str(key)) else {
                continue;
            };
            if kind == ListKind::Tools && item.get().contains("x-mcp-header") {
                header_params.insert(name.clone(), param_headers::annotations(item.get()));
            }
            names.insert(name);
        }
        self.lists.lock().unwrap_or_else(|e| e.into_inner()).insert(
            kind,
            CachedList {
                items: items.clone(),
                bytes,
                names,
                header_params,
            },
        );
        Ok(items)
    }

    /// The `x-mcp-header` annotations of a tool, from the cached tool list only.
    pub(crate) fn cached_header_params(&self, tool: &str) -> Vec<HeaderParam> {
        self.lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ListKind::Tools)
            .and_then(|l| l.header_params.get(tool).cloned())
            .unwrap_or_default()
    }

    /// The `x-mcp-header` annotations of a tool, listing the tools first if they are not cached.
    pub(crate) async fn header_params(self: &Arc<Self>, tool: &str) -> Vec<HeaderParam> {
        let cached = self
            .lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&ListKind::Tools);
        if !cached {
            let _ = self.list(ListKind::Tools).await;
        }
        self.cached_header_params(tool)
    }

    /// Whether the cached list of `kind` holds `name`.
    pub(crate) fn has_listed(&self, kind: ListKind, name: &str) -> bool {
        self.lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&kind)
            .is_some_and(|l| l.names.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_lists_never_exceed_the_gateways_budget() {
        assert!(!reserve(MAX_CACHED_BYTES + 1));
        assert!(!reserve(usize::MAX), "no overflow either");
    }
}
