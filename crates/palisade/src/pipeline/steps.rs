//! The steps of [`super::forward`], each a function that lets the call through or returns the
//! [`Refusal`] that ends it. A refusal after the target is known is audited (DENIED).

use std::time::Instant;

use mcp_wire::param_headers;
use mcp_wire::{Era, RawObject};
use serde_json::value::RawValue;

use super::refusal::Refusal;
use super::relay::{Audited, Caller};
use crate::assertion;
use crate::audit::CallFacts;
use crate::catalog::{Resolved, Target};
use crate::config::Placement;
use crate::gateway::Gateway;
use crate::limits::Admission;
use crate::policy::Denied;
use crate::upstream::Upstream;

/// The request's params as an object; in the modern era, its round-trip fields well-formed
/// (checked here whoever answers the call, since a legacy upstream would never look at them):
/// `inputResponses` an object of the client's results or errors (objects), `requestState` a
/// string.
pub(super) fn params_of(era: Era, params: Option<&RawValue>) -> Result<RawObject, Refusal> {
    let Some(params) = params else {
        return Ok(RawObject::default());
    };
    let params =
        RawObject::parse(params.get()).ok_or(Refusal::Malformed("params must be an object"))?;
    if era == Era::Legacy {
        return Ok(params);
    }
    if let Some(responses) = params.get("inputResponses") {
        let well_formed = RawObject::parse(responses.get()).is_some_and(|o| {
            o.keys()
                .all(|k| o.get(k).is_some_and(|v| v.get().starts_with('{')))
        });
        if !well_formed {
            return Err(Refusal::Malformed(
                "params.inputResponses must be an object whose members are the results (objects) of the input requests they answer",
            ));
        }
    }
    if params
        .get("requestState")
        .is_some_and(|s| !s.get().starts_with('"'))
    {
        return Err(Refusal::Malformed(
            "params.requestState must be the string the server gave",
        ));
    }
    Ok(params)
}

/// A call whose target is known, as the steps after resolution see it.
pub(super) struct Call<'c> {
    pub(super) gw: &'c Gateway,
    pub(super) caller: &'c Caller<'c>,
    pub(super) method: &'c str,
    pub(super) resolved: &'c Resolved<'c>,
}

/// The tenant's policy on a tool call, then (modern era) the `Mcp-Param-*` headers against
/// the arguments they mirror.
pub(super) async fn authorize(call: &Call<'_>, params: &RawObject) -> Result<(), Refusal> {
    let (caller, target) = (call.caller, &call.resolved.target);
    let verdict =
        caller
            .tenant
            .policy
            .check_call(&target.upstream.name, &target.name, &caller.scopes);
    let tool = || call.resolved.exposed.clone();
    let (refusal, reason) = match verdict {
        Ok(()) => return check_param_headers(caller, target, params).await,
        Err(Denied::Tool) => {
            call.gw.metrics.rejected("policy");
            let reason = "tool not allowed by the tenant's policy".to_owned();
            (Refusal::Denied { tool: tool() }, reason)
        }
        Err(Denied::Scopes(scopes)) => {
            call.gw.metrics.rejected("insufficient_scope");
            let reason = format!("insufficient scope (needs {scopes})");
            (
                Refusal::InsufficientScope {
                    tool: tool(),
                    scopes,
                },
                reason,
            )
        }
    };
    Err(deny(call, params, refusal, reason).await)
}

/// The modern era's `Mcp-Param-*` headers must agree with the arguments they mirror.
async fn check_param_headers(
    caller: &Caller<'_>,
    target: &Target<'_>,
    params: &RawObject,
) -> Result<(), Refusal> {
    if caller.era != Era::Modern {
        return Ok(());
    }
    let annotated = target.upstream.header_params(&target.name).await;
    if annotated.is_empty() {
        return Ok(());
    }
    let args = params.get_object("arguments");
    let header = |suffix: &str| {
        let suffix = suffix.to_ascii_lowercase();
        caller
            .param_headers
            .iter()
            .find(|(k, _)| *k == suffix)
            .map(|(_, v)| v.as_str())
    };
    param_headers::check(&annotated, args.as_ref(), header).map_err(Refusal::HeaderMismatch)
}

/// Traffic protection: rate limits, then the tenant's quarantine, breakers and bulkheads.
pub(super) async fn admit(call: &Call<'_>, params: &RawObject) -> Result<Admission, Refusal> {
    let (gw, tenant, target) = (call.gw, call.caller.tenant, &call.resolved.target);
    let server = &target.upstream.config;
    let limits = &gw.config().rate_limits;
    let checked = gw
        .protection
        .check(limits, tenant, &call.caller.subject, server, &target.name)
        .await;
    let admitted = match checked {
        Ok(()) => gw.protection.admit(server, &tenant.id).await,
        Err(refused) => Err(refused),
    };
    match admitted {
        Ok(admission) => Ok(admission),
        Err(refused) => {
            gw.metrics.protection_refused(&tenant.id, refused.limit);
            let reason = format!("{}: {}", refused.limit, refused.why);
            Err(deny(call, params, Refusal::Limited(refused), reason).await)
        }
    }
}

/// The BEGIN record, durable before the call leaves (invariant 2), or the call is refused.
/// `None` when the audit trail is off.
pub(super) async fn begin(call: &Call<'_>, params: &RawObject) -> Result<Option<Audited>, Refusal> {
    let Some(auditor) = &call.gw.audit else {
        return Ok(None);
    };
    let facts = call_facts(call);
    let waited = Instant::now();
    let begun = auditor.begin(&facts, params.get("arguments")).await;
    call.gw.metrics.audit_begin(waited.elapsed().as_secs_f64());
    match begun {
        Ok(id) => Ok(Some(Audited {
            auditor: auditor.clone(),
            id,
            facts,
        })),
        Err(e) => {
            call.gw.metrics.rejected("audit_unavailable");
            let tenant = &call.caller.tenant.id;
            tracing::error!(error = %e, %tenant, "audit trail unavailable: call refused");
            Err(Refusal::AuditUnavailable)
        }
    }
}

/// The tenant context a shared server trusts, in `params._meta`: signed here for the caller,
/// never taken from the client (a client's own entry of that name is removed).
pub(crate) fn tell_the_tenant(
    gw: &Gateway,
    caller: &Caller<'_>,
    upstream: &Upstream,
    audit_id: Option<&str>,
    params: &mut RawObject,
) {
    let mut meta = params.get_object("_meta").unwrap_or_default();
    let mut changed = meta.remove(assertion::META_KEY).is_some();
    if upstream.config.placement == Placement::Shared {
        let token = gw.assertions.mint(&assertion::Context {
            tenant: &caller.tenant.id,
            subject: &caller.subject,
            scopes: &caller.scopes,
            audit_id,
            audience: &upstream.name,
        });
        meta.set_str(assertion::META_KEY, &token);
        changed = true;
    }
    if changed {
        params.set_object("_meta", &meta);
    }
}

/// Writes the DENIED record of a refused call (when the audit trail is on), then gives the
/// refusal back.
async fn deny(call: &Call<'_>, params: &RawObject, refusal: Refusal, reason: String) -> Refusal {
    if let Some(audit) = &call.gw.audit {
        let facts = call_facts(call);
        audit.denied(&facts, params.get("arguments"), &reason).await;
    }
    refusal
}

fn call_facts(call: &Call<'_>) -> CallFacts {
    let (caller, target) = (call.caller, &call.resolved.target);
    CallFacts {
        tenant: caller.tenant.id.clone(),
        subject: caller.subject.clone(),
        session: caller.session.as_ref().map(|s| s.id.clone()),
        method: call.method.to_owned(),
        server: target.upstream.name.clone(),
        target: target.name.clone(),
    }
}
