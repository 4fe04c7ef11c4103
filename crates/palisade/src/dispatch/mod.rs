//! Dispatch: what each MCP method means at the gateway.
//!
//! Some methods are answered here (the legacy lifecycle: `initialize`, `ping`,
//! `logging/setLevel`; the modern one: `server/discover`, `subscriptions/listen`), lists go to
//! the [`catalog`], and calls that reach one upstream go through the [`pipeline`].
//! Notifications and responses from the client are routed back to the upstream and call they
//! belong to. A request's method is parsed once, with the caller's era, into a [`Method`].
//! Nothing here knows about HTTP beyond the status codes the modern era assigns to some errors.
//!
//! `lifecycle.rs`: `initialize`, `server/discover`, the modern era's header checks.
//! `streams.rs`: `subscriptions/listen`, legacy resource subscriptions, notice relays.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mcp_wire::jsonrpc::{self, ErrorCode, Notification, Request, Response};
use mcp_wire::{Era, Id, RawObject};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

mod lifecycle;
mod streams;

pub(crate) use lifecycle::{ModernHeaders, check_modern};
pub(crate) use streams::relay_to_session;

use crate::auth::Principal;
use crate::catalog::{self, Addressing};
use crate::gateway::Gateway;
use crate::listens::Listen;
use crate::pipeline::{self, Answer, Caller, Forward, Refusal, complete_modern_result};
use crate::session::shared::Event;
use crate::session::{self, Session};
use crate::upstream::ListKind;

/// What the transport sends back.
pub(crate) enum Reply {
    /// One JSON-RPC message (HTTP 200).
    Message(Vec<u8>),
    /// The `initialize` result, and the session it opened.
    Initialized {
        body: Vec<u8>,
        session: Arc<Session>,
    },
    /// A notification or response was taken (HTTP 202).
    Accepted,
    /// A forwarded call: relay its messages, then its response.
    Call(Box<Forward>),
    /// A long-lived stream of notifications (`subscriptions/listen`), open while `listen` is.
    Stream {
        rx: mpsc::Receiver<Vec<u8>>,
        listen: Listen,
    },
    /// The request was refused (see [`Answer`] for how it is sent).
    Refused(Answer),
}

/// What a client request asks of the gateway, parsed once from its method and the caller's
/// era. A method of the other era is [`Method::Unknown`], as the spec has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method<'m> {
    /// `initialize` (legacy): opens a session.
    Initialize,
    /// `server/discover`: the gateway's merged capabilities.
    Discover,
    /// `ping` (legacy).
    Ping,
    /// `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`.
    List(ListKind),
    /// A call that goes to one upstream, through the pipeline.
    Forward(Addressing),
    /// `resources/subscribe` (legacy; `true`) or `resources/unsubscribe` (`false`).
    Subscribe(bool),
    /// `logging/setLevel` (legacy).
    SetLevel,
    /// `subscriptions/listen` (modern).
    Listen,
    Unknown(&'m str),
}

impl<'m> Method<'m> {
    fn of(method: &'m str, era: Era) -> Method<'m> {
        let legacy = era == Era::Legacy;
        match method {
            // 2026-07-28 removed the handshake and ping: unknown methods there, like any other.
            "initialize" if legacy => Method::Initialize,
            "ping" if legacy => Method::Ping,
            "server/discover" => Method::Discover,
            "tools/list" => Method::List(ListKind::Tools),
            "prompts/list" => Method::List(ListKind::Prompts),
            "resources/list" => Method::List(ListKind::Resources),
            "resources/templates/list" => Method::List(ListKind::ResourceTemplates),
            "tools/call" => Method::Forward(Addressing::Tool),
            "prompts/get" => Method::Forward(Addressing::Prompt),
            "resources/read" => Method::Forward(Addressing::Resource),
            "completion/complete" => Method::Forward(Addressing::CompletionRef),
            "resources/subscribe" if legacy => Method::Subscribe(true),
            "resources/unsubscribe" if legacy => Method::Subscribe(false),
            "logging/setLevel" if legacy => Method::SetLevel,
            "subscriptions/listen" if !legacy => Method::Listen,
            other => Method::Unknown(other),
        }
    }
}

/// Handles one client request.
pub(crate) async fn request(
    gw: &Arc<Gateway>,
    principal: &Principal,
    caller: &Caller<'_>,
    req: Request,
) -> Reply {
    let id = &req.id;
    let params = req.params.as_deref();
    match Method::of(&req.method, caller.era) {
        Method::Initialize => lifecycle::initialize(gw, principal, caller.tenant, &req).await,
        Method::Discover => Reply::Message(lifecycle::discover(caller.tenant, id).await),
        Method::Ping => Reply::Message(jsonrpc::result(id, "{}")),
        Method::List(kind) => list(gw, caller, id, params, kind).await,
        Method::Forward(addressing) => forward(gw, caller, &req, addressing).await,
        Method::Subscribe(on) => match streams::subscribe(gw, caller, id, params, on).await {
            Some(reply) => reply,
            // The upstream subscribes itself: the call goes there.
            None => forward(gw, caller, &req, Addressing::Resource).await,
        },
        Method::SetLevel => set_level(gw, caller, id, params).await,
        Method::Listen => streams::listen(gw, principal, caller, id, params),
        Method::Unknown(other) => {
            let refusal = Refusal::MethodNotFound(other.to_owned());
            Reply::Refused(refusal.answer(id, caller.era))
        }
    }
}

/// A call through the pipeline to the upstream that owns its target.
async fn forward(
    gw: &Gateway,
    caller: &Caller<'_>,
    req: &Request,
    addressing: Addressing,
) -> Reply {
    let (id, params) = (&req.id, req.params.as_deref());
    match pipeline::forward(gw, caller, id, &req.method, params, addressing).await {
        Ok(fwd) => Reply::Call(Box::new(fwd)),
        Err(refusal) => Reply::Refused(refusal.answer(id, caller.era)),
    }
}

/// `logging/setLevel`: the lowest severity of log messages the session gets (on every
/// replica, with a fleet key: the fleet's store has it before the client is answered).
async fn set_level(gw: &Gateway, caller: &Caller<'_>, id: &Id, params: Option<&RawValue>) -> Reply {
    let level = params
        .and_then(|p| RawObject::parse(p.get()))
        .and_then(|o| o.get_str("level"));
    match (level, &caller.session) {
        (Some(level), Some(session)) => {
            let rank = session::log_rank(&level);
            session.log_level.store(rank, Ordering::Relaxed);
            gw.sessions.share_level(session, rank).await;
            Reply::Message(jsonrpc::result(id, "{}"))
        }
        _ => Reply::Message(jsonrpc::error(
            Some(id),
            ErrorCode::INVALID_PARAMS,
            "params.level must be a log level",
            None,
        )),
    }
}

/// Handles a client notification.
pub(crate) async fn notification(gw: &Gateway, caller: &Caller<'_>, n: &Notification) {
    if n.method == "notifications/cancelled" {
        let request_id = n
            .params
            .as_ref()
            .and_then(|p| RawObject::parse(p.get()))
            .and_then(|o| o.get("requestId").map(|r| r.get().to_owned()));
        if let (Some(session), Some(request_id)) = (&caller.session, request_id)
            && !session.cancel_call(&request_id)
        {
            // The call may be in flight on another replica.
            gw.sessions
                .tell_fleet(Event::Cancel {
                    session: session.handle().to_owned(),
                    id: request_id,
                })
                .await;
        }
    }
    // `notifications/initialized`, `roots/list_changed` and others need nothing from the gateway.
}

/// Handles a client's response to a server→client request: back to the upstream that asked,
/// on this replica or (with a fleet key) on the one holding the request.
pub(crate) async fn response(gw: &Gateway, caller: &Caller<'_>, resp: Response) {
    let (Some(session), Some(id)) = (&caller.session, resp.id.as_ref()) else {
        return;
    };
    let Some(awaiting) = session.take_server_request(id) else {
        if gw.sessions.sharing().is_none() {
            tracing::debug!("client answered an unknown server request; dropped");
            return;
        }
        let event = Event::Answer {
            session: session.handle().to_owned(),
            id: id.as_json().to_owned(),
            outcome: match &resp.outcome {
                Ok(result) => Ok(result.get().to_owned()),
                Err(error) => Err(error.get().to_owned()),
            },
        };
        gw.sessions.tell_fleet(event).await;
        return;
    };
    awaiting.deliver(resp.outcome).await;
}

async fn list(
    gw: &Arc<Gateway>,
    caller: &Caller<'_>,
    id: &Id,
    params: Option<&RawValue>,
    kind: ListKind,
) -> Reply {
    let cursor = params
        .and_then(|p| RawObject::parse(p.get()))
        .and_then(|o| o.get_str("cursor"));
    let items = catalog::list_items(&gw.names, caller.tenant, kind).await;
    let mut page = match catalog::page(kind, &items, cursor.as_deref()) {
        Ok(page) => page,
        Err(catalog::BadCursor) => {
            return Reply::Message(jsonrpc::error(
                Some(id),
                ErrorCode::INVALID_PARAMS,
                "invalid cursor",
                None,
            ));
        }
    };
    if caller.era == Era::Modern {
        complete_modern_result(&mut page, true);
    }
    Reply::Message(jsonrpc::result(id, &page.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_of_the_other_era_is_unknown() {
        for (method, legacy, modern) in [
            (
                "initialize",
                Method::Initialize,
                Method::Unknown("initialize"),
            ),
            ("ping", Method::Ping, Method::Unknown("ping")),
            (
                "logging/setLevel",
                Method::SetLevel,
                Method::Unknown("logging/setLevel"),
            ),
            (
                "resources/subscribe",
                Method::Subscribe(true),
                Method::Unknown("resources/subscribe"),
            ),
            (
                "subscriptions/listen",
                Method::Unknown("subscriptions/listen"),
                Method::Listen,
            ),
            ("server/discover", Method::Discover, Method::Discover),
            (
                "tools/call",
                Method::Forward(Addressing::Tool),
                Method::Forward(Addressing::Tool),
            ),
        ] {
            assert_eq!(Method::of(method, Era::Legacy), legacy, "{method}");
            assert_eq!(Method::of(method, Era::Modern), modern, "{method}");
        }
    }
}
