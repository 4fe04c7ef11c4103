//! What one client connection to the MCP listener may hold, before and between its requests.
//!
//! A connection is *busy* while at least one of its requests is being served (from complete
//! headers to the last byte of the response, so an open SSE stream keeps it busy). A connection
//! that is not busy is closed when its deadline passes: `header_read_timeout_ms` after it was
//! accepted if it has not yet sent a whole request (this covers the HTTP/1-or-2 sniffing step,
//! which no hyper timeout does), `idle_timeout_ms` after its last request ended otherwise. This
//! holds for both HTTP versions alike. Closing a connection that is not busy loses no request.
//!
//! Until a request on it authenticates, a connection also counts against its source address:
//! at most `max_unauthenticated_per_source` such connections per address, so one host that
//! opens connections and sends nothing cannot take every `max_connections` slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a connection was closed by its deadline (a `palisade_http_rejections_total` reason).
pub(crate) enum Expired {
    /// It never sent a whole request.
    FirstRequest,
    /// No request for `idle_timeout_ms`.
    Idle,
}

impl Expired {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Expired::FirstRequest => "first_request_timeout",
            Expired::Idle => "idle_connection",
        }
    }
}

/// The state of one accepted connection, shared by its requests (as a request extension) and
/// its deadline watcher.
pub(crate) struct ClientConn {
    busy: AtomicUsize,
    /// When the connection was accepted, or when its last request ended.
    last: Mutex<Instant>,
    served: AtomicBool,
    /// Woken when the last request in progress ends.
    ended: Notify,
    /// Held until the first request that authenticates, or the connection's end.
    unauthenticated: Mutex<Option<SourceTicket>>,
}

impl ClientConn {
    pub(crate) fn new(ticket: SourceTicket) -> Arc<ClientConn> {
        Arc::new(ClientConn {
            busy: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            served: AtomicBool::new(false),
            ended: Notify::new(),
            unauthenticated: Mutex::new(Some(ticket)),
        })
    }

    /// A request's headers arrived; the connection is busy until the guard drops (when the
    /// response body is finished or abandoned).
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        Busy(self.clone())
    }

    /// A request on this connection authenticated: it no longer counts against its source.
    pub(crate) fn authenticated(&self) {
        if let Ok(mut ticket) = self.unauthenticated.lock() {
            ticket.take();
        }
    }

    /// The deadline that applies to the connection now.
    pub(crate) fn deadline(&self) -> Expired {
        if self.served.load(Ordering::Acquire) {
            Expired::Idle
        } else {
            Expired::FirstRequest
        }
    }

    /// Resolves when the connection is past its deadline while not busy.
    pub(crate) async fn expired(&self, first_request: Duration, idle: Duration) -> Expired {
        loop {
            let served = self.served.load(Ordering::Acquire);
            let limit = if served { idle } else { first_request };
            if self.busy.load(Ordering::Acquire) > 0 {
                self.ended.notified().await;
                continue;
            }
            let deadline = self
                .last
                .lock()
                .map(|l| *l + limit)
                .unwrap_or_else(|_| Instant::now());
            if Instant::now() >= deadline {
                return self.deadline();
            }
            if served {
                // From here on the deadline only moves later: no request needs to wake us.
                tokio::time::sleep_until(deadline).await;
            } else {
                // The first request's end may bring the deadline forward (to `idle`).
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = self.ended.notified() => {}
                }
            }
        }
    }
}

/// Marks its connection busy while alive.
pub(crate) struct Busy(Arc<ClientConn>);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut last) = self.0.last.lock() {
            *last = Instant::now();
        }
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A stored permit if the watcher is not waiting: no end goes unnoticed.
            self.0.ended.notify_one();
        }
    }
}

/// Counts each source address's connections that have not authenticated yet.
#[derive(Clone)]
pub(crate) struct Sources {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Sources {
    pub(crate) fn new(limit: usize) -> Sources {
        Sources {
            limit,
            open: Arc::default(),
        }
    }

    /// A ticket for one more unauthenticated connection from `ip`, or `None` when it already
    /// holds `limit` of them.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<SourceTicket> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(SourceTicket {
            ip,
            sources: self.clone(),
        })
    }
}

/// One unauthenticated connection counted against its source address until dropped.
pub(crate) struct SourceTicket {
    ip: IpAddr,
    sources: Sources,
}

impl Drop for SourceTicket {
    fn drop(&mut self) {
        if let Ok(mut open) = self.sources.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_its_limit_until_one_authenticates_or_goes() {
        let sources = Sources::new(2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = ClientConn::new(sources.admit(ip).unwrap());
        let b = sources.admit(ip).unwrap();
        assert!(sources.admit(ip).is_none(), "a third is refused");
        assert!(
            sources.admit([10, 0, 0, 2].into()).is_some(),
            "other sources are not affected"
        );
        a.authenticated();
        let c = sources
            .admit(ip)
            .expect("an authenticated one no longer counts");
        drop(b);
        drop(c);
        assert!(
            sources.open.lock().unwrap().is_empty(),
            "nothing left behind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_start_when_not_busy() {
        let sources = Sources::new(1);
        let conn = ClientConn::new(sources.admit([127, 0, 0, 1].into()).unwrap());
        let (first, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        let start = Instant::now();
        assert!(matches!(
            conn.expired(first, idle).await,
            Expired::FirstRequest
        ));
        assert_eq!(start.elapsed(), first);

        let busy = conn.begin();
        let watch = conn.clone();
        let expiry = tokio::spawn(async move { watch.expired(first, idle).await });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!expiry.is_finished(), "a busy connection never expires");
        drop(busy);
        let done = Instant::now();
        assert!(matches!(expiry.await.unwrap(), Expired::Idle));
        assert_eq!(
            done.elapsed(),
            idle,
            "the idle deadline starts when the request ends"
        );
    }
}
