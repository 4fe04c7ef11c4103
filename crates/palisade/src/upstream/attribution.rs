//! Who owns a message an upstream sends on its own (a log, a server→client request). Never a
//! guess: on a shared upstream a wrong guess would hand one tenant's data to another, and within
//! a tenant one user's to another.
//!
//! The rule: a message reaches a client only when its owner is established:
//! 1. a progress token the gateway gave the call, or the call's own HTTP response stream (the
//!    caller of [`owner`] checks these first);
//! 2. otherwise only on a link (one process, one upstream connection or session) whose calls
//!    have all been one principal's since it started — then nothing another principal set going
//!    can be speaking — and then to the one client session among the calls in flight and those
//!    that just finished.
//!
//! Anything else is dropped (a request is refused to the upstream) and counted in
//! `palisade_upstream_unattributed_total`. A shared server that many principals use must
//! therefore correlate what it sends (progress tokens, or its HTTP response streams) for it to
//! reach a client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use palisade_ids::TenantId;

use super::{PendingCall, Route};

/// How long a finished call still counts when attributing messages the upstream sends on its
/// own: they may trail the response on another stream (an HTTP upstream's GET stream).
pub(super) const TRAILING: Duration = Duration::from_millis(250);

/// Who receives a message the upstream sent on its own.
#[derive(Debug, PartialEq)]
pub(super) enum Owner {
    /// The call in flight it belongs to.
    Call(u64),
    /// The session whose call just finished.
    Session(Route),
}

/// The principals whose calls a link has carried.
#[derive(Default)]
pub(super) struct Served(Mutex<Principals>);

#[derive(Default)]
enum Principals {
    #[default]
    None,
    One {
        tenant: TenantId,
        subject: std::sync::Arc<str>,
    },
    Many,
}

impl Served {
    pub(super) fn record(&self, tenant: &TenantId, subject: &std::sync::Arc<str>) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *p = match &*p {
            Principals::None => Principals::One {
                tenant: tenant.clone(),
                subject: subject.clone(),
            },
            Principals::One {
                tenant: t,
                subject: s,
            } if t == tenant && s == subject => return,
            _ => Principals::Many,
        };
    }

    /// Whether every client call so far was one principal's.
    pub(super) fn by_one(&self) -> bool {
        matches!(
            *self.0.lock().unwrap_or_else(|e| e.into_inner()),
            Principals::One { .. }
        )
    }
}

/// Rule 2: the one client session among the calls in flight and those that just finished;
/// `None` when there are several. Calls parked for a modern client's input are not candidates.
pub(super) fn owner<'r>(
    calls: &HashMap<u64, PendingCall>,
    trailing: impl Iterator<Item = &'r Route>,
) -> Option<Owner> {
    let mut route: Option<&Route> = None;
    let mut newest: Option<u64> = None;
    for (id, call) in calls {
        if call.route == Route::Internal || call.waiting_on_client {
            continue;
        }
        if route.is_some_and(|r| r != &call.route) {
            return None;
        }
        route = Some(&call.route);
        newest = newest.max(Some(*id));
    }
    let mut owner_route = route.cloned();
    for r in trailing {
        match &owner_route {
            Some(o) if o != r => return None,
            Some(_) => {}
            None => owner_route = Some(r.clone()),
        }
    }
    match (owner_route, newest) {
        (Some(_), Some(id)) => Some(Owner::Call(id)),
        (Some(route), None) => Some(Owner::Session(route)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::{mpsc, oneshot};

    fn pending(route: Route) -> PendingCall {
        let (events, _) = mpsc::channel(1);
        let (done, _) = oneshot::channel();
        PendingCall {
            route,
            waiting_on_client: false,
            events,
            queued: Default::default(),
            done,
            client_progress_token: None,
            link: 1,
            started: 0,
        }
    }

    #[test]
    fn unsolicited_messages_have_at_most_one_owner() {
        let client = |tenant: &str, session: &str| Route::Client {
            tenant: TenantId::parse(tenant).unwrap(),
            subject: "key:1".into(),
            session: Some(session.into()),
        };
        let (a, b) = (client("acme", "s-a"), client("globex", "s-b"));
        let mut calls = HashMap::new();
        calls.insert(1, pending(a.clone()));
        calls.insert(2, pending(a.clone()));
        assert_eq!(
            owner(&calls, [].iter()),
            Some(Owner::Call(2)),
            "newest call of the one session"
        );
        // A call of another session that just finished makes it ambiguous: dropped, not leaked.
        assert_eq!(owner(&calls, [b.clone()].iter()), None);
        calls.insert(3, pending(b.clone()));
        assert_eq!(owner(&calls, [].iter()), None);
        // Nothing in flight: the session whose call just ended gets it on its GET stream.
        assert_eq!(
            owner(&HashMap::new(), [a.clone(), a.clone()].iter()),
            Some(Owner::Session(a))
        );
        assert_eq!(owner(&HashMap::new(), [].iter()), None);
    }

    #[test]
    fn a_link_is_one_principals_until_another_uses_it() {
        let served = Served::default();
        assert!(!served.by_one(), "nobody yet");
        let (acme, globex) = (
            TenantId::parse("acme").unwrap(),
            TenantId::parse("globex").unwrap(),
        );
        let (alice, bob): (Arc<str>, Arc<str>) = ("key:alice".into(), "key:bob".into());
        served.record(&acme, &alice);
        served.record(&acme, &alice);
        assert!(served.by_one());
        served.record(&acme, &bob);
        assert!(!served.by_one(), "another user of the same tenant");
        served.record(&acme, &alice);
        assert!(!served.by_one(), "for good");
        let other = Served::default();
        other.record(&globex, &alice);
        assert!(other.by_one());
        other.record(&acme, &alice);
        assert!(!other.by_one(), "the same subject in another tenant");
    }
}
