//! Resumable event streams for legacy sessions (2025-11-25: SSE resumability and redelivery).
//!
//! Every SSE stream the gateway serves to a legacy session gets a number in that session, and
//! every event on it the id `<stream>_<seq>`; a stream opens with a priming event (an id, a
//! `retry` delay, no data). The session keeps the newest events of its streams in [`Log`]s, so a
//! client whose stream broke reopens it with `GET` and `Last-Event-ID` and gets what it missed,
//! then the rest live. Only that stream's events are replayed, never another stream's or
//! another session's. A resume that would skip events no longer kept is refused rather than
//! replayed with a gap.
//!
//! Memory is bounded: [`MAX_LOG_BYTES`] per stream (the newest event is always kept),
//! [`MAX_SESSION_BYTES`] and [`MAX_LOGS`] per session (the oldest streams are forgotten first),
//! and a finished stream is forgotten [`FINISHED_KEPT`] after it ended. The 2026-07-28 era
//! removed resumability, so modern clients get none of this.
//!
//! With a fleet key, a session's streams are also copied to the fleet's store ([`Mirror`],
//! written in batches off the hot path, `session::shared`), and their numbers start at random
//! so that they are unique in the fleet: a client whose stream broke resumes it on any replica.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcp_wire::sse;
use tokio::sync::mpsc;

/// Events kept for replay, per stream.
pub(crate) const MAX_LOG_BYTES: usize = 1024 * 1024;
/// Events kept for replay, per session, over all its streams.
pub(crate) const MAX_SESSION_BYTES: usize = 4 * 1024 * 1024;
/// Streams a session can resume.
pub(crate) const MAX_LOGS: usize = 32;
/// How long a stream that ended can still be replayed.
pub(crate) const FINISHED_KEPT: Duration = Duration::from_secs(60);
/// The reconnection delay the gateway asks for in its priming events.
pub(crate) const RETRY_MS: u64 = 1000;

/// One resumable stream: its number and the newest events it carried.
pub struct Log {
    pub stream: u64,
    /// The session's standalone (`GET`) stream, which a resume reopens rather than rejoins.
    pub(crate) standalone: bool,
    state: Mutex<State>,
    mirror: Option<Mirror>,
}

/// Where a fleet session's events are copied: the session's handle, and the channel to the
/// writer that stores them.
#[derive(Clone)]
pub(crate) struct Mirror {
    pub(crate) handle: Arc<str>,
    pub(crate) tx: mpsc::Sender<Mirrored>,
}

/// What the writer stores.
pub(crate) enum Mirrored {
    /// A stream opened (a resume from its priming event finds it).
    Opened {
        handle: Arc<str>,
        stream: u64,
        standalone: bool,
    },
    Event {
        handle: Arc<str>,
        stream: u64,
        standalone: bool,
        event: Bytes,
    },
    /// A call's stream is complete.
    Finished { handle: Arc<str>, stream: u64 },
}

/// What another replica kept of a stream: its events after the resume point, and whether it
/// is a standalone stream.
pub(crate) struct Replayed {
    pub(crate) missed: Vec<Bytes>,
    pub(crate) standalone: bool,
}

struct State {
    /// `(seq, encoded event)`, oldest first; seqs are consecutive.
    kept: VecDeque<(u64, Bytes)>,
    bytes: usize,
    next_seq: u64,
    /// The reader currently connected, if any (at most one: an event is never sent twice).
    live: Option<mpsc::Sender<Bytes>>,
    finished: Option<Instant>,
}

/// Why a stream cannot be resumed from a `Last-Event-ID`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("Last-Event-ID `{0}` is not an event id this gateway issued")]
    Malformed(String),
    #[error(
        "the stream of Last-Event-ID `{0}` is unknown or expired in this session: send the request again"
    )]
    Unknown(String),
    #[error(
        "events after Last-Event-ID `{0}` are no longer kept (the stream outgrew its replay buffer): send the request again"
    )]
    Gap(String),
}

/// What a resuming reader gets: the events it missed, then live ones until the stream ends
/// (`None` when it already has, and for a standalone stream, whose new response goes on).
pub struct Attached {
    pub missed: Vec<Bytes>,
    pub live: Option<mpsc::Receiver<Bytes>>,
}

/// A session's resumable streams.
#[derive(Default)]
pub struct Logs {
    next_stream: AtomicU64,
    list: Mutex<VecDeque<Arc<Log>>>,
    mirror: Option<Mirror>,
}

impl Logs {
    /// A fleet session's streams: numbered from a random start (below 2^52), copied to `mirror`.
    pub(crate) fn mirrored(mirror: Mirror) -> Logs {
        Logs {
            next_stream: AtomicU64::new(rand::random::<u64>() >> 12),
            list: Mutex::default(),
            mirror: Some(mirror),
        }
    }

    /// Opens a stream for a call's messages; forgets expired and surplus ones.
    pub fn open(&self) -> Arc<Log> {
        self.open_as(false)
    }

    /// Opens a standalone stream (the session's `GET` stream).
    pub fn open_standalone(&self) -> Arc<Log> {
        self.open_as(true)
    }

    fn open_as(&self, standalone: bool) -> Arc<Log> {
        let log = Arc::new(Log {
            stream: self.next_stream.fetch_add(1, Ordering::Relaxed) + 1,
            standalone,
            state: Mutex::new(State {
                kept: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                live: None,
                finished: None,
            }),
            mirror: self.mirror.clone(),
        });
        if let Some(m) = &self.mirror {
            let _ = m.tx.try_send(Mirrored::Opened {
                handle: m.handle.clone(),
                stream: log.stream,
                standalone,
            });
        }
        let mut list = lock(&self.list);
        list.retain(|l| {
            lock(&l.state)
                .finished
                .is_none_or(|at| at.elapsed() < FINISHED_KEPT)
        });
        // Finished streams go first, oldest first; streams still live only when none are.
        while list.len() >= MAX_LOGS {
            let finished = list.iter().position(|l| lock(&l.state).finished.is_some());
            list.remove(finished.unwrap_or(0));
        }
        list.push_back(log.clone());
        log
    }

    /// Records a message on `log` and returns its event, and the reader to send it to.
    pub fn push(&self, log: &Log, message: &[u8]) -> (Bytes, Option<mpsc::Sender<Bytes>>) {
        let (event, live) = {
            let mut st = lock(&log.state);
            let seq = st.next_seq;
            st.next_seq += 1;
            let event = Bytes::from(sse::encode(Some(&event_id(log.stream, seq)), message));
            st.bytes += event.len();
            st.kept.push_back((seq, event.clone()));
            while st.bytes > MAX_LOG_BYTES && st.kept.len() > 1 {
                if let Some((_, old)) = st.kept.pop_front() {
                    st.bytes -= old.len();
                }
            }
            (event, st.live.clone())
        };
        if let Some(m) = &log.mirror {
            // A full writer drops the copy, never the event: this replica still replays it.
            let _ = m.tx.try_send(Mirrored::Event {
                handle: m.handle.clone(),
                stream: log.stream,
                standalone: log.standalone,
                event: event.clone(),
            });
        }
        self.enforce_budget(log);
        (event, live)
    }

    /// Forgets the oldest other streams while the session keeps more than its budget.
    fn enforce_budget(&self, current: &Log) {
        let mut list = lock(&self.list);
        let mut total: usize = list.iter().map(|l| lock(&l.state).bytes).sum();
        while total > MAX_SESSION_BYTES {
            let Some(i) = list.iter().position(|l| l.stream != current.stream) else {
                break;
            };
            if let Some(old) = list.remove(i) {
                total -= lock(&old.state).bytes;
            }
        }
    }

    /// The stream a `Last-Event-ID` names, with the events after it and its live rest.
    pub fn resume(&self, last_event_id: &str) -> Result<(Arc<Log>, Attached), ResumeError> {
        let (stream, seq) = parse_event_id(last_event_id)
            .ok_or_else(|| ResumeError::Malformed(last_event_id.to_owned()))?;
        let log = lock(&self.list)
            .iter()
            .find(|l| l.stream == stream)
            .cloned()
            .ok_or_else(|| ResumeError::Unknown(last_event_id.to_owned()))?;
        let attached = log.attach(seq, last_event_id)?;
        Ok((log, attached))
    }
}

impl Log {
    /// The event that opens the stream (seq 0: resuming from it replays everything).
    pub fn priming(&self) -> Bytes {
        Bytes::from(sse::priming(&event_id(self.stream, 0), RETRY_MS))
    }

    /// Connects a reader from the start (the stream's first connection).
    pub fn connect(&self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(64);
        lock(&self.state).live = Some(tx);
        rx
    }

    /// The events after `seq` and, for a call's stream still going, a live receiver for the
    /// rest, replacing any reader still connected. (A standalone stream has no reader to
    /// replace: the response serving it records its events itself.)
    fn attach(&self, seq: u64, id: &str) -> Result<Attached, ResumeError> {
        let mut st = lock(&self.state);
        if seq >= st.next_seq {
            return Err(ResumeError::Unknown(id.to_owned()));
        }
        let oldest = st.kept.front().map_or(st.next_seq, |(s, _)| *s);
        if seq + 1 < oldest {
            return Err(ResumeError::Gap(id.to_owned()));
        }
        let missed = st
            .kept
            .iter()
            .filter(|(s, _)| *s > seq)
            .map(|(_, e)| e.clone())
            .collect();
        let live = if st.finished.is_some() || self.standalone {
            None
        } else {
            let (tx, rx) = mpsc::channel(64);
            st.live = Some(tx);
            Some(rx)
        };
        Ok(Attached { missed, live })
    }

    /// The reader currently connected, if any.
    pub fn live(&self) -> Option<mpsc::Sender<Bytes>> {
        lock(&self.state).live.clone()
    }

    /// Disconnects the live reader (its stream ends) but keeps the stream resumable.
    pub(crate) fn detach(&self) {
        lock(&self.state).live = None;
    }

    /// The stream is complete: readers end after what they have, and it expires later.
    pub fn finish(&self) {
        let mut st = lock(&self.state);
        st.live = None;
        st.finished = Some(Instant::now());
        if let Some(m) = &self.mirror
            && !self.standalone
        {
            let _ = m.tx.try_send(Mirrored::Finished {
                handle: m.handle.clone(),
                stream: self.stream,
            });
        }
    }

    /// A standalone stream goes on after a resume: it no longer expires.
    pub(crate) fn reopen(&self) {
        lock(&self.state).finished = None;
    }
}

/// Finishes a stream when the response serving it goes away (a standalone stream, whose
/// producer is the response itself).
pub(crate) struct FinishOnDrop(pub Arc<Log>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

fn event_id(stream: u64, seq: u64) -> String {
    format!("{stream}_{seq}")
}

/// The seq of an encoded event (its `id: <stream>_<seq>` line).
pub(crate) fn seq_of(event: &[u8]) -> Option<u64> {
    let line = event.split(|b| *b == b'\n').next()?;
    let id = std::str::from_utf8(line.strip_prefix(b"id: ")?).ok()?;
    parse_event_id(id).map(|(_, seq)| seq)
}

pub(crate) fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (stream, seq) = id.split_once('_')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(event: &Bytes) -> String {
        let mut d = sse::Decoder::new(1 << 20);
        d.push(event);
        d.next_event().unwrap().unwrap().data
    }

    #[tokio::test]
    async fn a_broken_stream_resumes_after_its_last_event() {
        let logs = Logs::default();
        let a = logs.open();
        let b = logs.open();
        let mut first = a.connect();
        let (e1, live) = logs.push(&a, b"one");
        live.unwrap().send(e1).await.unwrap();
        logs.push(&b, b"other stream");
        assert_eq!(data(&first.recv().await.unwrap()), "one");
        // The reader goes away; two more events happen meanwhile.
        drop(first);
        logs.push(&a, b"two");
        logs.push(&a, b"three");
        let (log, attached) = logs.resume(&format!("{}_1", a.stream)).unwrap();
        assert_eq!(log.stream, a.stream);
        let missed: Vec<String> = attached.missed.iter().map(data).collect();
        assert_eq!(
            missed,
            ["two", "three"],
            "only this stream's, only after the id"
        );
        let mut live = attached.live.unwrap();
        let (e4, tx) = logs.push(&a, b"four");
        tx.unwrap().send(e4).await.unwrap();
        assert_eq!(data(&live.recv().await.unwrap()), "four");
        a.finish();
        assert!(live.recv().await.is_none(), "a finished stream ends");
        let (_, again) = logs.resume(&format!("{}_3", a.stream)).unwrap();
        assert_eq!(again.missed.len(), 1);
        assert!(again.live.is_none());
    }

    #[test]
    fn an_encoded_event_says_its_seq() {
        assert_eq!(
            seq_of(&sse::encode(Some("4503599627370495_7"), b"{}")),
            Some(7)
        );
        assert_eq!(seq_of(&sse::encode(None, b"{}")), None);
        assert_eq!(seq_of(b"id: x_y\n"), None);
    }

    #[test]
    fn resumes_that_cannot_be_served_are_refused() {
        let logs = Logs::default();
        let a = logs.open();
        assert!(matches!(logs.resume("x"), Err(ResumeError::Malformed(_))));
        assert!(matches!(logs.resume("99_0"), Err(ResumeError::Unknown(_))));
        assert!(
            matches!(
                logs.resume(&format!("{}_5", a.stream)),
                Err(ResumeError::Unknown(_))
            ),
            "an id from the future"
        );
        // Outgrow the per-stream buffer: the oldest events go, and resuming before them fails.
        let big = vec![b'x'; MAX_LOG_BYTES / 2];
        for _ in 0..4 {
            logs.push(&a, &big);
        }
        assert!(matches!(
            logs.resume(&format!("{}_0", a.stream)),
            Err(ResumeError::Gap(_))
        ));
        assert!(logs.resume(&format!("{}_3", a.stream)).is_ok());
    }

    #[test]
    fn finished_streams_are_forgotten_before_live_ones() {
        let logs = Logs::default();
        let live = logs.open();
        for _ in 0..MAX_LOGS * 2 {
            logs.open().finish();
        }
        assert!(logs.resume(&format!("{}_0", live.stream)).is_ok());
        assert_eq!(lock(&logs.list).len(), MAX_LOGS);
    }

    #[test]
    fn a_session_keeps_a_bounded_number_of_streams_and_bytes() {
        let logs = Logs::default();
        let first = logs.open();
        for _ in 0..MAX_LOGS {
            logs.open();
        }
        assert!(matches!(
            logs.resume(&format!("{}_0", first.stream)),
            Err(ResumeError::Unknown(_))
        ));
        let logs = Logs::default();
        let old = logs.open();
        logs.push(&old, &vec![b'x'; MAX_LOG_BYTES - 100]);
        let mut streams = Vec::new();
        for _ in 0..5 {
            let s = logs.open();
            logs.push(&s, &vec![b'y'; MAX_LOG_BYTES - 100]);
            streams.push(s);
        }
        let kept: usize = lock(&logs.list).iter().map(|l| lock(&l.state).bytes).sum();
        assert!(kept <= MAX_SESSION_BYTES, "{kept}");
        assert!(matches!(
            logs.resume(&format!("{}_0", old.stream)),
            Err(ResumeError::Unknown(_))
        ));
    }
}
