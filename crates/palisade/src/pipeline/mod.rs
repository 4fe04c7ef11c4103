//! The pipeline: the ordered steps of one forwarded call (`tools/call`, `resources/read`,
//! `prompts/get`, and the other requests that go to exactly one upstream).
//!
//! [`forward`] is the whole story of a call, one line per step, in the order they run. The order
//! is the point: a call is authorized before it costs anything (a denied tool never spends the
//! tenant's rate); limits run before the BEGIN record, so a refused call leaves a DENIED record
//! and no half-open call; BEGIN is durable before anything leaves (docs/ARCHITECTURE.md,
//! invariant 2), and its id goes into the tenant assertion a shared server is told.
//!
//! - `steps.rs`: each check, returning a typed [`Refusal`] (`refusal.rs` turns it into bytes,
//!   HTTP status and `Retry-After`, in one place);
//! - `relay.rs`: the call in flight ([`Forward`]), which writes END when it ends;
//! - `bridge.rs`: input requests across the eras, and [`Parked`] calls waiting for a modern
//!   client's retry.
//!
//! Files here other than this one do not import the gateway: `gateway.rs` holds [`Parked`] and
//! this file reads the gateway, with no cycle between them.

mod bridge;
mod refusal;
mod relay;
mod steps;

use mcp_wire::Id;
use serde_json::value::RawValue;

pub use bridge::PARK_PREFIX;
pub use bridge::Parked;
pub use refusal::Answer;
pub use refusal::Refusal;
pub use relay::{Caller, Forward};
pub(crate) use relay::{Out, complete_modern_result};
pub(crate) use steps::tell_the_tenant;

use crate::catalog::{self, Addressing};
use crate::gateway::Gateway;

/// The methods whose calls are audited (docs/ARCHITECTURE.md, invariant 3).
/// Requests that can carry a tenant's data: rate-limited, audited, and sent to a shared server
/// with the tenant's signed context.
const AUDITED: [&str; 6] = [
    "tools/call",
    "resources/read",
    "prompts/get",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
];

/// Forwards one request to the upstream that owns its target.
pub async fn forward(
    gw: &Gateway,
    caller: &Caller<'_>,
    id: &Id,
    method: &str,
    params: Option<&RawValue>,
    addressing: Addressing,
) -> Result<Forward, Refusal> {
    let mut params = steps::params_of(caller.era, params)?;
    // A retry carrying a `requestState` the gateway issued resumes its parked call: every
    // step below ran when the call was first made.
    if let Some(state) = bridge::issued_state(&params) {
        let who = (&*caller.tenant.id, &*caller.subject);
        return gw.parked.resume(who, id, &state, &params).await;
    }
    gw.parked.unbind(&mut params)?;
    let audited = AUDITED.contains(&method);

    // 1. Resolve the target: which of the tenant's upstreams, under which name.
    let resolved = catalog::resolve(&gw.names, caller.tenant, addressing, &mut params).await?;
    let call = steps::Call {
        gw,
        caller,
        method,
        resolved: &resolved,
    };
    // 2. Authorize a tool call: the tenant's policy and the principal's scopes.
    if addressing == Addressing::Tool {
        steps::authorize(&call, &params).await?;
    }
    // 3. Rate limits, quarantine, breakers, bulkheads (audited methods only).
    let admission = match audited {
        true => Some(steps::admit(&call, &params).await?),
        false => None,
    };
    // 4. BEGIN, durable before anything leaves.
    let audit = match audited {
        true => steps::begin(&call, &params).await?,
        false => None,
    };
    // 5. The tenant assertion, for a shared server.
    let audit_id = audit.as_ref().map(|a| a.id.as_str());
    tell_the_tenant(gw, caller, resolved.target.upstream, audit_id, &mut params);
    // 6. Send; the relay gives the client what comes back and writes END when the call ends.
    relay::send(
        &gw.metrics,
        &gw.parked,
        caller,
        id,
        method,
        params,
        addressing,
        resolved,
        admission,
        audit,
    )
    .await
}
