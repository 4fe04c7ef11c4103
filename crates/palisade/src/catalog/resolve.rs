//! Resolution: which of a tenant's upstreams a call goes to, and under which name.
//!
//! The catalog's rules run backwards: a namespaced name or URI leads to its server and original
//! name; a shortened name is found in [`Names`]; on a `tenant_tools` server the tenant's own
//! `<tenant>__<tool>` is chosen over a common tool. A name outside the tenant's servers leads
//! nowhere ([`Unresolved`]); another tenant's names are never reachable.

use std::sync::Arc;

use mcp_wire::RawObject;
use palisade_ids::TenantId;

use super::{Names, list_items};
use crate::config::MAX_NAME_LEN;
use crate::registry::Tenant;
use crate::upstream::{ListKind, Upstream};

/// How a request addresses its upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// `params.name` is a tool name.
    Tool,
    /// `params.name` is a prompt name.
    Prompt,
    /// `params.uri` is a resource URI.
    Resource,
    /// `params.ref` is a prompt or resource reference (`completion/complete`).
    CompletionRef,
}

/// Why a request's target was not found.
#[derive(Debug)]
pub enum Unresolved {
    /// A field the addressing needs is missing or mistyped; the text says which.
    Malformed(&'static str),
    /// No tool or prompt of that name for this tenant (`what` is "tool" or "prompt").
    UnknownName { what: &'static str, name: String },
    /// No resource of that URI for this tenant.
    UnknownResource { uri: String },
    /// A completion reference that leads nowhere.
    UnknownReference,
}

/// A resolved call: where it goes, and how its metrics name it.
pub(crate) struct Resolved<'a> {
    pub target: Target<'a>,
    /// The name the client used (what the tenant's policy and error messages speak of).
    pub exposed: String,
    /// The metric label: a listed tool or prompt's name, `other`, `resource` or `completion`.
    pub(crate) metric_label: String,
}

/// Finds the target of a request and rewrites `params` to name it as its upstream does.
/// Policy, rate limits, audit and metrics all know a tool by the name the tenant sees
/// ([`Target::name`]); only the upstream is told its own name for it.
pub(crate) async fn resolve<'a>(
    names: &Names,
    tenant: &'a Tenant,
    addressing: Addressing,
    params: &mut RawObject,
) -> Result<Resolved<'a>, Unresolved> {
    match addressing {
        Addressing::Tool | Addressing::Prompt => {
            let (kind, what) = match addressing {
                Addressing::Tool => (ListKind::Tools, "tool"),
                _ => (ListKind::Prompts, "prompt"),
            };
            let name = params
                .get_str("name")
                .ok_or(Unresolved::Malformed("params.name must be a string"))?;
            let unknown = || Unresolved::UnknownName {
                what,
                name: name.clone(),
            };
            let target = resolve_name(names, tenant, kind, &name)
                .await
                .ok_or_else(unknown)?;
            // A server with per-tenant tools: the caller's own, or a common one; never
            // another tenant's.
            let upstream_name = if kind == ListKind::Tools && target.upstream.config.tenant_tools {
                tenant_tool(tenant, target.upstream, &target.name)
                    .await
                    .ok_or_else(unknown)?
            } else {
                target.name.clone()
            };
            params.set_str("name", &upstream_name);
            let metric_label = metric_label(target.upstream, kind, &target.name);
            Ok(Resolved {
                target,
                exposed: name,
                metric_label,
            })
        }
        Addressing::Resource => {
            let uri = params
                .get_str("uri")
                .ok_or(Unresolved::Malformed("params.uri must be a string"))?;
            let target = resolve_uri(tenant, &uri)
                .ok_or_else(|| Unresolved::UnknownResource { uri: uri.clone() })?;
            params.set_str("uri", &target.name);
            Ok(Resolved {
                target,
                exposed: uri,
                metric_label: "resource".to_owned(),
            })
        }
        Addressing::CompletionRef => {
            let mut reference = params
                .get_object("ref")
                .ok_or(Unresolved::Malformed("params.ref must be an object"))?;
            let (field, exposed, target) = match reference.get_str("type").as_deref() {
                Some("ref/prompt") => {
                    let name = reference
                        .get_str("name")
                        .ok_or(Unresolved::Malformed("params.ref.name must be a string"))?;
                    let target = resolve_name(names, tenant, ListKind::Prompts, &name).await;
                    ("name", name, target)
                }
                Some("ref/resource") => {
                    let uri = reference
                        .get_str("uri")
                        .ok_or(Unresolved::Malformed("params.ref.uri must be a string"))?;
                    let target = resolve_uri(tenant, &uri);
                    ("uri", uri, target)
                }
                _ => {
                    return Err(Unresolved::Malformed(
                        "params.ref.type must be ref/prompt or ref/resource",
                    ));
                }
            };
            let target = target.ok_or(Unresolved::UnknownReference)?;
            reference.set_str(field, &target.name);
            params.set_object("ref", &reference);
            Ok(Resolved {
                target,
                exposed,
                metric_label: "completion".to_owned(),
            })
        }
    }
}

/// Tool names become metric labels only when the upstream listed them (bounded cardinality).
fn metric_label(upstream: &Upstream, kind: ListKind, name: &str) -> String {
    if upstream.has_listed(kind, name) {
        name.to_owned()
    } else {
        "other".to_owned()
    }
}

/// Where a client-facing name or URI leads.
pub struct Target<'a> {
    pub upstream: &'a Arc<Upstream>,
    pub name: String,
}

/// Resolves a tool or prompt name for this tenant. With a shortened name unknown (say, after a
/// restart), `refresh` lists `kind` once to rebuild the reverse map.
async fn resolve_name<'a>(
    names: &Names,
    tenant: &'a Tenant,
    kind: ListKind,
    name: &str,
) -> Option<Target<'a>> {
    if !tenant.namespacing {
        return tenant.upstreams.first().map(|upstream| Target {
            upstream,
            name: name.to_owned(),
        });
    }
    // A shortened name this gateway does not know (say, after a restart): list once to
    // learn it again.
    if name.len() == MAX_NAME_LEN && names.lookup(&tenant.id, name).is_none() {
        let _ = list_items(names, tenant, kind).await;
    }
    let (server, original) = unexpose(names, &tenant.id, name)?;
    Some(Target {
        upstream: tenant.upstream(&server)?,
        name: original,
    })
}

/// What an exposed tool or prompt name stands for, as `tenant` sees it: (server, original name).
pub(super) fn unexpose(names: &Names, tenant: &TenantId, name: &str) -> Option<(String, String)> {
    if let Some((server, original)) = names.lookup(tenant, name) {
        return Some((server.to_string(), original));
    }
    let (server, original) = name.split_once("__")?;
    Some((server.to_owned(), original.to_owned()))
}

/// Resolves a resource URI (or URI template) for this tenant.
pub(crate) fn resolve_uri<'a>(tenant: &'a Tenant, uri: &str) -> Option<Target<'a>> {
    if !tenant.namespacing {
        return tenant.upstreams.first().map(|upstream| Target {
            upstream,
            name: uri.to_owned(),
        });
    }
    let (server, original) = uri.split_once('+')?;
    let upstream = tenant.upstream(server)?;
    Some(Target {
        upstream,
        name: original.to_owned(),
    })
}

/// The upstream's name for a tenant's call of `name` on a `tenant_tools` server: the tenant's
/// own `<tenant>__<name>` if the server has one, else `name` (a common tool). `None` for a
/// name with a prefix: tenants address their tools without it, and never another's.
async fn tenant_tool(tenant: &Tenant, upstream: &Arc<Upstream>, name: &str) -> Option<String> {
    if name.contains("__") {
        return None;
    }
    let own = format!("{}__{name}", tenant.id);
    let listed = upstream.list(ListKind::Tools).await.ok()?;
    // A substring search skips the parse for every tool that cannot be the tenant's own.
    let has_own = listed.iter().any(|item| {
        item.get().contains(own.as_str())
            && RawObject::parse(item.get())
                .and_then(|o| o.get_str("name"))
                .is_some_and(|n| n == own)
    });
    Some(if has_own { own } else { name.to_owned() })
}
