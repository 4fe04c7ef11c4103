//! The era bridge: a call whose upstream asks the client for input (sampling, elicitation,
//! roots) when the client and the upstream speak different eras, or the client cannot be asked
//! on an open stream.
//!
//! - A legacy client of a modern upstream that answers `input_required`: each input request is
//!   asked on the call's stream as a server→client request ([`Forward::ask_legacy_client`]); with
//!   the answers, the call is issued again ([`Forward::reissue_with_answers`]).
//! - A modern client, whatever the upstream: the upstream's request becomes an
//!   `InputRequiredResult` whose `requestState` ([`PARK_PREFIX`] and 256 random bits) names the
//!   call, which waits in [`Parked`] until the client retries with its answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_wire::jsonrpc::{self, ErrorCode};
use mcp_wire::{Era, Id, RawObject};
use palisade_ids::TenantId;
use rand::RngCore;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::refusal::{Answer, Refusal, modern_status, upstream_error};
use super::relay::{Forward, Out, client_defaults};
use crate::session::{Awaiting, ClientAnswer};
use crate::upstream::Upstream;

/// The prefix of every `requestState` the gateway issues itself.
pub const PARK_PREFIX: &str = "palisade.";
/// The prefix of a server's own `requestState` that the gateway bound to its replica
/// (`palisade@<replica>/<the server's state>`): a fleet's stdio server runs on each replica, and
/// its state resumes only in the process that issued it.
const BOUND_PREFIX: &str = "palisade@";

/// The `requestState` of a retry, if the gateway issued it (not the upstream).
pub(super) fn issued_state(params: &RawObject) -> Option<String> {
    params
        .get_str("requestState")
        .filter(|s| s.starts_with(PARK_PREFIX))
}

/// Answers one of the upstream's requests with an error of the gateway's own.
pub(super) async fn refuse_request(
    upstream: &Arc<Upstream>,
    id: &Id,
    code: ErrorCode,
    message: &str,
) {
    let error = jsonrpc::error_object(code, message, None);
    if let Ok(raw) = RawValue::from_string(error) {
        upstream.respond(id, Err(&raw)).await;
    }
}

/// Answers a legacy client owes for a modern upstream's `InputRequiredResult`.
pub(super) struct Collecting {
    answers: Vec<(String, oneshot::Receiver<ClientAnswer>)>,
    request_state: Option<Box<RawValue>>,
}

impl Forward {
    /// Modern client, upstream asks for input mid-call: answer with an `InputRequiredResult`
    /// whose `requestState` names this call, which the transport then parks. A request the
    /// client did not declare the capability for ends the call with -32021, as the spec has a
    /// server do.
    pub(super) async fn park(
        &mut self,
        upstream_id: Id,
        method: &str,
        params: Option<&RawValue>,
    ) -> Out {
        let needed = match method {
            "sampling/createMessage" => Some("sampling"),
            "elicitation/create" => Some("elicitation"),
            "roots/list" => Some("roots"),
            _ => None,
        };
        let declared = |cap: &str| {
            self.client_caps
                .as_ref()
                .and_then(|c| RawObject::parse(c.get()))
                .is_some_and(|c| c.get(cap).is_some())
        };
        if let Some(cap) = needed.filter(|cap| !declared(cap)) {
            let code = ErrorCode::MISSING_CLIENT_CAPABILITY;
            let message = "Missing required client capability";
            refuse_request(&self.upstream, &upstream_id, code, message).await;
            self.done = true;
            self.status = modern_status(code);
            let data = serde_json::json!({ "requiredCapabilities": { cap: {} } });
            return Out::Final(jsonrpc::error(
                Some(&self.client_id),
                code,
                message,
                Some(&data),
            ));
        }
        let key = format!("palisade-{}", self.parked_inputs.len() + 1);
        self.parked_inputs.push((key.clone(), upstream_id));
        self.upstream.set_waiting_on_client(self.handle.id(), true);
        let state = self.parking.new_state();
        let request = match params {
            Some(p) => format!(r#"{{"method":{},"params":{}}}"#, json_str(method), p.get()),
            None => format!(r#"{{"method":{}}}"#, json_str(method)),
        };
        let body = format!(
            r#"{{"resultType":"input_required","inputRequests":{{{}:{request}}},"requestState":{}}}"#,
            json_str(&key),
            json_str(&state)
        );
        Out::Park {
            body: jsonrpc::result(&self.client_id, &body),
            state,
        }
    }

    /// Legacy client, modern upstream answered `input_required`: ask the client each input
    /// request as a server→client request on this call's stream, and collect the answers.
    pub(super) fn ask_legacy_client(&mut self, result: &RawValue) -> Result<(), Vec<u8>> {
        let fail =
            |msg: &str| jsonrpc::error(Some(&self.client_id), ErrorCode::INTERNAL_ERROR, msg, None);
        let obj = RawObject::parse(result.get())
            .ok_or_else(|| fail("malformed input_required result from upstream"))?;
        let requests = obj.get_object("inputRequests").unwrap_or_default();
        let Some(session) = &self.session else {
            return Err(fail("no session to ask"));
        };
        let mut answers = Vec::new();
        for key in requests.keys() {
            let Some(req) = requests.get_object(key) else {
                continue;
            };
            let Some(method) = req.get_str("method") else {
                continue;
            };
            let (tx, rx) = oneshot::channel();
            let id = session
                .register_server_request(Awaiting::Gateway(tx))
                .ok_or_else(|| {
                    fail("the client already has too many requests awaiting its answer")
                })?;
            let params = legacy_request_params(&method, req.get_object("params"));
            self.outbox
                .push_back(jsonrpc::request(&id, &method, params.as_deref()));
            answers.push((key.to_owned(), rx));
        }
        self.collecting = Some(Collecting {
            answers,
            request_state: obj.get("requestState").map(ToOwned::to_owned),
        });
        Ok(())
    }

    /// Waits for the legacy client's answers, then re-issues the call upstream with them.
    pub(super) async fn reissue_with_answers(
        &mut self,
        collecting: Collecting,
    ) -> Result<(), Vec<u8>> {
        let timeout = self.timeout();
        let mut responses = RawObject::default();
        for (key, rx) in collecting.answers {
            let answer = tokio::time::timeout(timeout, rx).await;
            match answer {
                Ok(Ok(Ok(result))) => responses.set_raw(&key, result),
                Ok(Ok(Err(error))) => {
                    return Err(jsonrpc::error_raw(Some(&self.client_id), error.get()));
                }
                _ => {
                    return Err(jsonrpc::error(
                        Some(&self.client_id),
                        ErrorCode::INTERNAL_ERROR,
                        "the client did not answer the upstream's input request in time",
                        None,
                    ));
                }
            }
        }
        let mut params = self.params.clone();
        params.set_object("inputResponses", &responses);
        match collecting.request_state {
            Some(state) => params.set_raw("requestState", state),
            None => {
                params.remove("requestState");
            }
        }
        match self
            .upstream
            .call(
                &self.method,
                Some(&params),
                self.route.clone(),
                client_defaults(self.session.as_deref()),
            )
            .await
        {
            Ok(handle) => {
                self.handle = handle;
                Ok(())
            }
            Err(e) => Err(upstream_error(&self.client_id, &e)),
        }
    }
}

/// An input request of a 2026-07-28 upstream as the legacy era has it: a URL-mode elicitation
/// there carries an `elicitationId`, which the modern era's input requests do not.
fn legacy_request_params(method: &str, params: Option<RawObject>) -> Option<String> {
    let mut params = params?;
    let url_mode =
        method == "elicitation/create" && params.get_str("mode").as_deref() == Some("url");
    if url_mode && params.get("elicitationId").is_none() {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        params.set_str("elicitationId", &hex::encode(id));
    }
    Some(params.to_json())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

pub(super) fn is_input_required(result: &RawValue) -> bool {
    // Cheap pre-check before parsing: most results are not.
    result.get().contains("input_required")
        && RawObject::parse(result.get())
            .and_then(|o| o.get_str("resultType"))
            .as_deref()
            == Some("input_required")
}

/// Calls waiting for a modern client to retry with the input an upstream asked for.
///
/// The `requestState` the client gets is [`PARK_PREFIX`], 256 random bits in hex, `.` and the
/// replica's name: a parked call holds a live upstream request on this replica, so a retry
/// that reaches another replica is told which one holds it (retry, and a load balancer may
/// send it there) rather than that the state is unknown. A parked call is resumed only by a
/// retry from the same tenant and subject, and is dropped (cancelling it upstream) when the
/// client does not come back in time.
pub struct Parked {
    calls: Mutex<HashMap<String, ParkedCall>>,
    replica: String,
    /// Other replicas serve the same clients (a fleet key is set): a server's own state from a
    /// process of this replica is bound to it.
    in_fleet: bool,
}

struct ParkedCall {
    fwd: Forward,
    tenant: TenantId,
    subject: Arc<str>,
}

impl Parked {
    /// The calls replica `replica` parks; `in_fleet` when other replicas serve its clients.
    pub fn new(replica: &str, in_fleet: bool) -> Parked {
        Parked {
            calls: Mutex::default(),
            replica: replica.to_owned(),
            in_fleet,
        }
    }

    /// A server's own `requestState`, issued by a process of this replica, as the client gets
    /// it: bound to this replica in a fleet; `None` outside one (it passes untouched).
    pub(crate) fn bind(&self, state: &str) -> Option<String> {
        self.in_fleet
            .then(|| format!("{BOUND_PREFIX}{}/{state}", self.replica))
    }

    /// A retry's `requestState` as the server issued it: unbound when it is bound to this
    /// replica; a retryable refusal naming the replica it is bound to otherwise.
    pub(super) fn unbind(&self, params: &mut RawObject) -> Result<(), Refusal> {
        let Some(state) = params.get_str("requestState") else {
            return Ok(());
        };
        let Some((replica, original)) = state
            .strip_prefix(BOUND_PREFIX)
            .and_then(|rest| rest.split_once('/'))
        else {
            return Ok(());
        };
        if replica != self.replica {
            return Err(Refusal::ParkedElsewhere {
                replica: replica.to_owned(),
            });
        }
        params.set_str("requestState", original);
        Ok(())
    }

    /// A new `requestState`, naming this replica.
    fn new_state(&self) -> String {
        let mut token = [0u8; 32];
        rand::rng().fill_bytes(&mut token);
        format!("{PARK_PREFIX}{}.{}", hex::encode(token), self.replica)
    }

    /// Parks a call; it is dropped after `ttl` unless resumed. A tenant with `limit` calls
    /// parked already gets the answer to send instead, and the call is dropped (which cancels
    /// it upstream).
    pub(crate) fn park(
        self: &Arc<Self>,
        state: String,
        fwd: Forward,
        subject: Arc<str>,
        ttl: Duration,
        limit: usize,
    ) -> Result<(), Answer> {
        let tenant = fwd.tenant.clone();
        {
            let mut calls = self.lock();
            if calls.values().filter(|c| c.tenant == tenant).count() >= limit {
                let refusal = Refusal::LimitReached {
                    message: format!(
                        "tenant `{tenant}` already has {limit} calls waiting for input (limits.max_parked_per_tenant): answer or abandon some first"
                    ),
                    data: serde_json::json!({ "limit": "limits.max_parked_per_tenant", "value": limit }),
                    retry_after_ms: None,
                };
                return Err(refusal.answer(&fwd.client_id, Era::Modern));
            }
            calls.insert(
                state.clone(),
                ParkedCall {
                    fwd,
                    tenant,
                    subject,
                },
            );
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            me.lock().remove(&state);
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ParkedCall>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resumes a parked call with the client's `inputResponses`: only for the tenant and
    /// subject that parked it.
    pub(super) async fn resume(
        &self,
        (tenant, subject): (&str, &str),
        id: &Id,
        state: &str,
        params: &RawObject,
    ) -> Result<Forward, Refusal> {
        let parked = {
            let mut calls = self.lock();
            match calls.get(state) {
                Some(p) if &*p.tenant == tenant && &*p.subject == subject => calls.remove(state),
                _ => None,
            }
        };
        let Some(ParkedCall { mut fwd, .. }) = parked else {
            // Issued by another replica: it holds the call, and says so.
            let elsewhere = state
                .strip_prefix(PARK_PREFIX)
                .and_then(|rest| rest.get(64..)?.strip_prefix('.'))
                .filter(|replica| *replica != self.replica && !replica.is_empty());
            return Err(match elsewhere {
                Some(replica) => Refusal::ParkedElsewhere {
                    replica: replica.to_owned(),
                },
                None => Refusal::UnknownRequestState,
            });
        };
        let responses = params.get_object("inputResponses").unwrap_or_default();
        for (key, upstream_id) in std::mem::take(&mut fwd.parked_inputs) {
            match responses.get(&key) {
                Some(answer) => fwd.upstream.respond(&upstream_id, Ok(answer)).await,
                None => {
                    let message = "the client gave no answer to this request";
                    let code = ErrorCode::INVALID_PARAMS;
                    refuse_request(&fwd.upstream, &upstream_id, code, message).await;
                }
            }
        }
        fwd.upstream.set_waiting_on_client(fwd.handle.id(), false);
        fwd.client_id = id.clone();
        Ok(fwd)
    }
}
