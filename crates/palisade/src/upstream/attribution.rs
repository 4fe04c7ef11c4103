//! Who owns a message an upstream sends on its own (a log, a server→client request): the one
//! client session among the calls in flight, or nobody. Never a guess: on a shared upstream a
//! wrong guess would hand one tenant's data to another.

use std::collections::HashMap;
use std::time::Duration;

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

/// The one client session among the calls in flight and those that just finished; `None` when
/// there are several (a message is never guessed to belong to one of them). Calls parked for a
/// modern client's input are not candidates.
pub(super) fn owner<'r>(
    calls: &HashMap<u64, PendingCall>,
    origin: Option<u64>,
    trailing: impl Iterator<Item = &'r Route>,
) -> Option<Owner> {
    if let Some(id) = origin {
        return calls.contains_key(&id).then_some(Owner::Call(id));
    }
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
    use tokio::sync::{mpsc, oneshot};

    fn pending(route: Route) -> PendingCall {
        let (events, _) = mpsc::channel(1);
        let (done, _) = oneshot::channel();
        PendingCall {
            route,
            waiting_on_client: false,
            events,
            done,
            client_progress_token: None,
            link: 1,
            started: 0,
        }
    }

    #[test]
    fn unsolicited_messages_have_at_most_one_owner() {
        let a = Route::Client {
            tenant: "acme".into(),
            session: Some("s-a".into()),
        };
        let b = Route::Client {
            tenant: "globex".into(),
            session: Some("s-b".into()),
        };
        let mut calls = HashMap::new();
        calls.insert(1, pending(a.clone()));
        calls.insert(2, pending(a.clone()));
        assert_eq!(
            owner(&calls, None, [].iter()),
            Some(Owner::Call(2)),
            "newest call of the one session"
        );
        // A call of another session that just finished makes it ambiguous: dropped, not leaked.
        assert_eq!(owner(&calls, None, [b.clone()].iter()), None);
        calls.insert(3, pending(b.clone()));
        assert_eq!(owner(&calls, None, [].iter()), None);
        assert_eq!(
            owner(&calls, Some(3), [].iter()),
            Some(Owner::Call(3)),
            "the stream it came on decides"
        );
        // Nothing in flight: the session whose call just ended gets it on its GET stream.
        assert_eq!(
            owner(&HashMap::new(), None, [a.clone(), a.clone()].iter()),
            Some(Owner::Session(a))
        );
        assert_eq!(owner(&HashMap::new(), None, [].iter()), None);
    }
}
