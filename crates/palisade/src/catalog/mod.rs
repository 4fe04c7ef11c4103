//! The catalog: what a tenant sees of its upstreams' tools, prompts, resources and templates.
//!
//! Lists fan out to the tenant's upstreams in parallel (each cached per upstream and
//! invalidated on `list_changed`), skip an upstream that is down or slow, and merge. With
//! namespacing on, tool and prompt names become `<server>__<name>` (always, so names do not
//! change when a server is added) and resource URIs `<server>+<uri>`; a name longer than 64
//! characters is shortened with a hash and kept in a reverse map. The same rules run backwards
//! to find the upstream and original name of a call. Tools the tenant's policy denies are left
//! out of `tools/list`. On a server with per-tenant tools (`tenant_tools`), `<tenant>__<tool>`
//! is shown to that tenant alone, as `<tool>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use mcp_wire::RawObject;
use palisade_ids::TenantId;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::MAX_NAME_LEN;
use crate::registry::Tenant;
use crate::upstream::ListKind;

mod resolve;

pub use resolve::Target;
pub(crate) use resolve::{Addressing, Resolved, Unresolved, resolve, resolve_uri};

/// Items per page of a merged list.
const PAGE: usize = 1000;

/// Shortened names most a gateway remembers; past it the map starts again (it is a cache: a
/// shortened name it no longer knows is found again by listing).
const MAX_SHORT_NAMES: usize = 65_536;

/// The reverse map of shortened names, per tenant: (tenant, short name) → (server, original
/// name). A short name ends in 64 bits of the full name's SHA-256, so only a server can make
/// two of its own names collide; the first one keeps the short name.
#[derive(Default)]
pub struct Names {
    short: Mutex<HashMap<(TenantId, String), Original>>,
}

/// The server and original name a short name stands for.
type Original = (Arc<str>, String);

impl Names {
    /// The namespaced form of `name` on `server`, as `tenant` sees it.
    pub(crate) fn expose(&self, tenant: &TenantId, server: &Arc<str>, name: &str) -> String {
        let full = format!("{server}__{name}");
        if full.len() <= MAX_NAME_LEN {
            return full;
        }
        let digest = hex::encode(&Sha256::digest(full.as_bytes())[..8]);
        let mut keep = MAX_NAME_LEN - digest.len() - 1;
        while !full.is_char_boundary(keep) {
            keep -= 1;
        }
        let short = format!("{}_{digest}", &full[..keep]);
        let mut map = self.short.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.clone(), short.clone());
        if map.len() >= MAX_SHORT_NAMES && !map.contains_key(&key) {
            map.clear();
        }
        let entry = map
            .entry(key)
            .or_insert_with(|| (server.clone(), name.to_owned()));
        if entry.0 != *server || entry.1 != name {
            tracing::warn!(%server, "two names shorten alike; the first keeps the short name");
        }
        short
    }

    fn lookup(&self, tenant: &TenantId, name: &str) -> Option<Original> {
        self.short
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.clone(), name.to_owned()))
            .cloned()
    }
}

/// The client-facing form of an upstream's resource URI.
pub(crate) fn expose_uri(tenant: &Tenant, server: &str, uri: &str) -> String {
    if tenant.namespacing {
        format!("{server}+{uri}")
    } else {
        uri.to_owned()
    }
}

/// Every item of a list across the tenant's upstreams, names rewritten for the client.
pub(crate) async fn list_items(
    names: &Names,
    tenant: &Tenant,
    kind: ListKind,
) -> Vec<Box<RawValue>> {
    let fetches = tenant.upstreams.iter().map(|u| async move {
        let wait = Duration::from_millis(u.config.list_timeout_ms);
        (u, tokio::time::timeout(wait, u.list(kind)).await)
    });
    let mut merged = Vec::new();
    for (upstream, result) in futures_util::future::join_all(fetches).await {
        let items = match result {
            Ok(Ok(items)) => items,
            Ok(Err(e)) => {
                upstream
                    .metrics()
                    .list_skipped(&upstream.name, kind.label());
                tracing::warn!(server = %upstream.name, list = kind.method(), error = %e, "list skipped");
                continue;
            }
            Err(_) => {
                upstream
                    .metrics()
                    .list_skipped(&upstream.name, kind.label());
                tracing::warn!(server = %upstream.name, list = kind.method(), "list skipped: upstream too slow");
                continue;
            }
        };
        let filtered = kind == ListKind::Tools && !tenant.policy.allows_all_tools();
        let per_tenant = kind == ListKind::Tools && upstream.config.tenant_tools;
        for item in items.iter() {
            if !tenant.namespacing && !filtered && !per_tenant {
                merged.push(item.clone());
                continue;
            }
            let Some(mut obj) = RawObject::parse(item.get()) else {
                continue;
            };
            if per_tenant && let Some(name) = obj.get_str("name") {
                match own_tool(tenant, &name) {
                    Some(Some(bare)) => obj.set_str("name", bare),
                    Some(None) => {}
                    None => continue,
                }
            }
            if filtered {
                let allowed = obj
                    .get_str("name")
                    .is_some_and(|n| tenant.policy.allows_tool(&upstream.name, &n));
                if !allowed {
                    continue;
                }
            }
            if !tenant.namespacing {
                merged.push(obj.to_raw());
                continue;
            }
            let (field, rewritten) = match kind {
                ListKind::Tools | ListKind::Prompts => {
                    let Some(name) = obj.get_str("name") else {
                        continue;
                    };
                    ("name", names.expose(&tenant.id, &upstream.name, &name))
                }
                ListKind::Resources => {
                    let Some(uri) = obj.get_str("uri") else {
                        continue;
                    };
                    ("uri", expose_uri(tenant, &upstream.name, &uri))
                }
                ListKind::ResourceTemplates => {
                    let Some(t) = obj.get_str("uriTemplate") else {
                        continue;
                    };
                    ("uriTemplate", expose_uri(tenant, &upstream.name, &t))
                }
            };
            obj.set_str(field, &rewritten);
            merged.push(obj.to_raw());
        }
    }
    merged
}

/// On a server whose tools named `<tenant>__<tool>` belong to that tenant (`tenant_tools`):
/// `None` if `name` is another tenant's (hidden), `Some(Some(bare))` if it is this tenant's
/// (shown as `bare`), `Some(None)` if it is common to all.
fn own_tool<'n>(tenant: &Tenant, name: &'n str) -> Option<Option<&'n str>> {
    match name.split_once("__") {
        None => Some(None),
        Some((owner, bare)) if owner == &*tenant.id => Some(Some(bare)),
        Some(_) => None,
    }
}

/// Error for a cursor the gateway did not issue.
pub struct BadCursor;

/// One page of a merged list as a result object (without era-specific fields).
pub fn page(
    kind: ListKind,
    items: &[Box<RawValue>],
    cursor: Option<&str>,
) -> Result<RawObject, BadCursor> {
    let start = match cursor {
        None => 0,
        Some(c) => decode_cursor(c).ok_or(BadCursor)?,
    };
    if start > items.len() {
        return Err(BadCursor);
    }
    let end = (start + PAGE).min(items.len());
    let mut json = String::from("[");
    for (i, item) in items[start..end].iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(item.get());
    }
    json.push(']');
    let mut result = RawObject::default();
    if let Ok(raw) = RawValue::from_string(json) {
        result.set_raw(kind.field(), raw);
    }
    if end < items.len() {
        result.set_str("nextCursor", &encode_cursor(end));
    }
    Ok(result)
}

fn encode_cursor(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("palisade:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("palisade:")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_stably_per_tenant() {
        let names = Names::default();
        let (acme, globex) = (
            TenantId::parse("acme").unwrap(),
            TenantId::parse("globex").unwrap(),
        );
        let server: Arc<str> = "kit".into();
        assert_eq!(names.expose(&acme, &server, "echo"), "kit__echo");
        let long = "a".repeat(80);
        let short = names.expose(&acme, &server, &long);
        assert_eq!(short.len(), MAX_NAME_LEN);
        assert_eq!(short, names.expose(&acme, &server, &long));
        assert_ne!(short, names.expose(&acme, &server, &format!("{long}b")));
        assert_eq!(names.lookup(&acme, &short), Some((server, long)));
        assert_eq!(names.lookup(&globex, &short), None, "another tenant's");
    }

    proptest::proptest! {
        /// Names exposed to a tenant lead back to their server and name, never to another's,
        /// and another tenant can never resolve a shortened name it was not shown.
        #[test]
        fn exposed_names_round_trip_and_stay_with_their_tenant(
            server in "[a-z0-9-]{1,32}",
            names_of in proptest::collection::vec("[ -~]{1,120}", 1..8),
        ) {
            let names = Names::default();
            let (acme, globex) = (TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap());
            let server: Arc<str> = server.into();
            let mut exposed = std::collections::HashMap::new();
            for name in &names_of {
                let shown = names.expose(&acme, &server, name);
                proptest::prop_assert!(shown.len() <= MAX_NAME_LEN);
                proptest::prop_assert_eq!(
                    resolve::unexpose(&names, &acme, &shown),
                    Some((server.to_string(), name.clone()))
                );
                if shown.len() == MAX_NAME_LEN && shown != format!("{server}__{name}") {
                    proptest::prop_assert_eq!(names.lookup(&globex, &shown), None);
                }
                if let Some(before) = exposed.insert(shown.clone(), name.clone()) {
                    proptest::prop_assert_eq!(&before, name, "two names collide as {}", shown);
                }
            }
        }
    }

    fn listed(tenant: &str, n: usize) -> Vec<Box<RawValue>> {
        (0..n)
            .map(|i| RawValue::from_string(format!(r#"{{"name":"{tenant}-{i}"}}"#)).unwrap())
            .collect()
    }

    proptest::proptest! {
        /// Whatever cursor a caller sends (one minted for another tenant's longer list, or
        /// any string), a page holds only items of the caller's own list, in order, and the
        /// next cursor continues it.
        #[test]
        fn cursors_never_leave_the_callers_list(
            own in 0usize..2500,
            other in 0usize..5000,
            offset in 0usize..5000,
            junk in "[A-Za-z0-9_-]{0,24}",
            minted in proptest::bool::ANY,
        ) {
            let mine = listed("acme", own);
            let cursor = if minted {
                // A cursor the gateway issued while paging globex's list.
                let theirs = listed("globex", other);
                let at = offset.min(theirs.len());
                encode_cursor(at)
            } else {
                junk
            };
            let Ok(page) = page(ListKind::Tools, &mine, Some(&cursor)) else {
                return Ok(());
            };
            let items: Vec<serde_json::Value> =
                serde_json::from_str(page.get("tools").unwrap().get()).unwrap();
            proptest::prop_assert!(items.len() <= PAGE);
            let start = decode_cursor(&cursor).unwrap();
            for (i, item) in items.iter().enumerate() {
                proptest::prop_assert_eq!(&item["name"], &format!("acme-{}", start + i));
            }
            let next = page.get_str("nextCursor");
            proptest::prop_assert_eq!(next.is_some(), start + items.len() < own);
            if let Some(next) = next {
                proptest::prop_assert_eq!(decode_cursor(&next), Some(start + items.len()));
            }
        }
    }

    #[test]
    fn the_short_name_map_is_bounded() {
        let names = Names::default();
        let (tenant, server): (TenantId, Arc<str>) =
            (TenantId::parse("acme").unwrap(), "kit".into());
        for i in 0..MAX_SHORT_NAMES + 10 {
            names.expose(&tenant, &server, &format!("{}{i}", "n".repeat(70)));
        }
        assert!(names.short.lock().unwrap().len() <= MAX_SHORT_NAMES);
    }

    #[test]
    fn pages_and_cursors() {
        let items: Vec<Box<RawValue>> = (0..(PAGE + 5))
            .map(|i| RawValue::from_string(format!("{{\"name\":\"t{i}\"}}")).unwrap())
            .collect();
        let first = page(ListKind::Tools, &items, None).ok().unwrap();
        let cursor = first.get_str("nextCursor").unwrap();
        let second = page(ListKind::Tools, &items, Some(&cursor)).ok().unwrap();
        assert!(second.get_str("nextCursor").is_none());
        assert!(
            second
                .get("tools")
                .unwrap()
                .get()
                .starts_with("[{\"name\":\"t1000\"}")
        );
        assert!(page(ListKind::Tools, &items, Some("bogus")).is_err());
    }
}
