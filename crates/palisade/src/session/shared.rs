//! What the fleet's replicas share about legacy sessions, in Redis: each session's changing
//! state, the index the admin API lists, and the channel that tells every replica what
//! happened to a session elsewhere.
//!
//! Keys, under the fleet's name (`[fleet] name`, so that fleets can share one Redis), all
//! expiring `session_idle_secs` after the fleet last saw the session:
//! - `<fleet>:session:<handle>`: a hash of what a replica needs to continue the session and
//!   an admin to see it (tenant, subject, key id, version, opened, the client's capabilities,
//!   log level). Its absence means the session ended or expired, everywhere.
//! - `<fleet>:session:<handle>:subs`: the resources it is subscribed to.
//! - `<fleet>:sessions`: every live session's handle, scored by when it expires.
//! - `<fleet>:session:<handle>:sse:<stream>`: the newest [`MIRRORED_EVENTS`] events of one of
//!   its SSE streams, and `…:kind` (`get`, `post`, or `done` once a call's stream is complete),
//!   for `Last-Event-ID` on another replica; a complete stream expires after `FINISHED_KEPT`.
//!
//! The channel `<fleet>:events` carries [`Event`]s: a session ended, its level or
//! subscriptions changed, a client answered (or cancelled) a request that a session's copy on
//! another replica holds.
//!
//! Invariants: no call waits on Redis when its replica already holds the session (only the
//! first request a replica sees of a session reads it); every command is bounded by
//! [`TIMEOUT`]; the hot path writes nothing (last activity is flushed in batches).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::resume::{Mirrored, Replayed};
use crate::session::handle_of;
use crate::upstream::{Notice, UpdateOwner, Upstream};

/// The longest a command may take.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Events of one stream kept for a resume on another replica.
const MIRRORED_EVENTS: isize = 512;
/// Mirrored events written in one pipeline, at most.
const MIRROR_BATCH: usize = 256;

/// The most sessions one admin listing reads.
pub(crate) const MAX_LISTED: isize = 10_000;

/// Redis could not be reached (or answered nonsense) in time.
#[derive(Debug, thiserror::Error)]
#[error("the session store (Redis) cannot be reached")]
pub(crate) struct Down;

/// A session's record as the fleet keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub handle: String,
    pub tenant: String,
    pub subject: String,
    /// The API key's id, when a key opened it.
    pub key: Option<String>,
    pub protocol_version: String,
    /// Unix milliseconds.
    pub opened_at: i64,
    pub client_capabilities: String,
    pub log_level: u64,
    /// The replica that opened it.
    pub replica: String,
}

/// What one replica tells the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The session ended (DELETE, revoked by an admin): every copy closes.
    Ended {
        session: String,
    },
    Level {
        session: String,
        rank: u64,
    },
    Subscribed {
        session: String,
        uri: String,
        on: bool,
    },
    /// A client's response to a server→client request, which landed on a replica that does not
    /// hold the request: the request's id and the response's `result` or `error`, as JSON text
    /// (raw JSON does not pass through serde's tagged enums).
    Answer {
        session: String,
        id: String,
        outcome: Result<String, String>,
    },
    /// `notifications/cancelled` for a call in flight on another replica.
    Cancel {
        session: String,
        id: String,
    },
    /// What upstream `server` said on one replica for a session, or a tenant's sessions, whose
    /// GET stream another replica may hold.
    Notice {
        server: String,
        target: Target,
        said: Said,
    },
}

/// Whose GET stream a relayed notice is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// One session, by handle.
    Session(String),
    /// The tenant's sessions subscribed to the resource.
    Tenant(String),
}

/// A relayed notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Said {
    /// `notifications/resources/updated` of `uri` (the upstream's name), with its params.
    Updated { uri: String, params: String },
    /// A message for the session's GET stream (JSON text).
    Message(String),
}

/// An event and the replica it came from.
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    event: Event,
}

/// The fleet's session store.
pub struct Shared {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    replica: String,
    idle: Duration,
    /// The channel every replica listens on, and the index of live sessions.
    channel: String,
    index: String,
    prefix: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.write_str("Shared(<redis>)")
    }
}

impl Shared {
    /// The store of fleet `fleet` at `url`; nothing connects until it is used.
    pub fn new(url: &str, fleet: &str, replica: &str, idle: Duration) -> Option<Shared> {
        Some(Shared {
            client: redis::Client::open(url).ok()?,
            conn: OnceCell::new(),
            replica: replica.to_owned(),
            idle,
            channel: format!("{fleet}:events"),
            index: format!("{fleet}:sessions"),
            prefix: format!("{fleet}:session:"),
        })
    }

    fn state_key(&self, handle: &str) -> String {
        format!("{}{handle}", self.prefix)
    }

    fn subs_key(&self, handle: &str) -> String {
        format!("{}{handle}:subs", self.prefix)
    }

    fn sse_key(&self, handle: &str, stream: u64) -> String {
        format!("{}{handle}:sse:{stream}", self.prefix)
    }

    /// Stores the events sessions' streams carry ([`Mirrored`]), in batches, until every
    /// sender is gone. A batch that cannot be written is dropped (and counted by the caller's
    /// metrics through `failed`): the replica that served the stream still replays it.
    pub(crate) fn mirror_writer(
        self: &Arc<Self>,
        mut rx: mpsc::Receiver<Mirrored>,
        failed: impl Fn() + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MIRROR_BATCH);
            while rx.recv_many(&mut batch, MIRROR_BATCH).await > 0 {
                let idle = me.idle.as_secs().max(1);
                let done = crate::resume::FINISHED_KEPT.as_secs().max(1);
                let mut pipe = redis::pipe();
                let kind = |standalone: bool| if standalone { "get" } else { "post" };
                for item in batch.drain(..) {
                    match item {
                        Mirrored::Opened {
                            handle,
                            stream,
                            standalone,
                        } => {
                            let key = me.sse_key(&handle, stream);
                            pipe.cmd("SET")
                                .arg(format!("{key}:kind"))
                                .arg(kind(standalone))
                                .arg("EX")
                                .arg(idle)
                                .ignore();
                        }
                        Mirrored::Event {
                            handle,
                            stream,
                            standalone,
                            event,
                        } => {
                            let key = me.sse_key(&handle, stream);
                            pipe.rpush(&key, event.as_ref())
                                .ignore()
                                .ltrim(&key, -MIRRORED_EVENTS, -1)
                                .ignore()
                                .expire(&key, idle as i64)
                                .ignore()
                                // Events of a stream come before its end (one writer, in order).
                                .cmd("SET")
                                .arg(format!("{key}:kind"))
                                .arg(kind(standalone))
                                .arg("EX")
                                .arg(idle)
                                .ignore();
                        }
                        Mirrored::Finished { handle, stream } => {
                            let key = me.sse_key(&handle, stream);
                            pipe.expire(&key, done as i64)
                                .ignore()
                                .cmd("SET")
                                .arg(format!("{key}:kind"))
                                .arg("done")
                                .arg("EX")
                                .arg(done)
                                .ignore();
                        }
                    }
                }
                if me.run::<()>(&pipe).await.is_err() {
                    failed();
                }
            }
        })
    }

    /// What the fleet kept of a session's stream after `seq`; `None` when it keeps nothing of
    /// it, `Some(Err(()))` when events after `seq` are no longer kept.
    pub(crate) async fn replay(
        &self,
        handle: &str,
        stream: u64,
        seq: u64,
    ) -> Result<Option<Result<Replayed, ()>>, Down> {
        let key = self.sse_key(handle, stream);
        let mut pipe = redis::pipe();
        pipe.lrange(&key, 0, -1).get(format!("{key}:kind"));
        let (events, kind): (Vec<Vec<u8>>, Option<String>) = self.run(&pipe).await?;
        let Some(kind) = kind else {
            return Ok(None);
        };
        let oldest = events.first().and_then(|e| crate::resume::seq_of(e));
        if oldest.is_some_and(|oldest| seq + 1 < oldest) {
            return Ok(Some(Err(())));
        }
        let missed = events
            .into_iter()
            .filter(|e| crate::resume::seq_of(e).is_some_and(|s| s > seq))
            .map(bytes::Bytes::from)
            .collect();
        Ok(Some(Ok(Replayed {
            missed,
            standalone: kind == "get",
        })))
    }

    async fn conn(&self) -> Result<ConnectionManager, Down> {
        let connect = || async {
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT));
            ConnectionManager::new_with_config(self.client.clone(), config)
                .await
                .map_err(|_| Down)
        };
        self.conn.get_or_try_init(connect).await.cloned()
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, Down> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(TIMEOUT, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::debug!(kind = ?e.kind(), "session store command failed");
                Err(Down)
            }
            Err(_) => Err(Down),
        }
    }

    fn deadline_ms(&self) -> i64 {
        crate::auth::now_ms() + self.idle.as_millis() as i64
    }

    /// Records a session a client just opened on this replica.
    pub(crate) async fn opened(&self, record: &Record) -> Result<(), Down> {
        let key = self.state_key(&record.handle);
        let ttl = self.idle.as_secs().max(1) as i64;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("tenant", record.tenant.as_str()),
                    ("subject", &record.subject),
                    ("key", record.key.as_deref().unwrap_or("")),
                    ("version", &record.protocol_version),
                    ("opened", &record.opened_at.to_string()),
                    ("caps", &record.client_capabilities),
                    ("level", &record.log_level.to_string()),
                    ("replica", &self.replica),
                ],
            )
            .ignore()
            .expire(&key, ttl)
            .ignore()
            .zadd(&self.index, &record.handle, self.deadline_ms())
            .ignore();
        self.run(&pipe).await
    }

    /// A session's record and subscriptions; `None` when it ended or expired.
    pub(crate) async fn load(&self, handle: &str) -> Result<Option<(Record, Vec<String>)>, Down> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.state_key(handle))
            .smembers(self.subs_key(handle));
        let (fields, subs): (HashMap<String, String>, Vec<String>) = self.run(&pipe).await?;
        Ok(record(handle, fields).map(|r| (r, subs)))
    }

    /// Keeps the sessions this replica saw since the last flush alive for another idle period.
    /// Says, for each, whether the fleet still has it (a session another replica ended, whose
    /// event this replica may have missed, is gone).
    pub(crate) async fn refresh(&self, handles: &[String]) -> Result<Vec<bool>, Down> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let ttl = self.idle.as_secs().max(1) as i64;
        let deadline = self.deadline_ms();
        let mut pipe = redis::pipe();
        for h in handles {
            // `XX`: a session another replica ended stays ended.
            pipe.cmd("ZADD")
                .arg(&self.index)
                .arg("XX")
                .arg(deadline)
                .arg(h)
                .ignore();
            pipe.expire(self.state_key(h), ttl);
            pipe.expire(self.subs_key(h), ttl).ignore();
        }
        pipe.zrembyscore(&self.index, "-inf", crate::auth::now_ms())
            .ignore();
        self.run(&pipe).await
    }

    /// Which of these sessions are still alive somewhere in the fleet.
    pub(crate) async fn alive(&self, handles: &[String]) -> Result<Vec<bool>, Down> {
        let mut pipe = redis::pipe();
        for h in handles {
            pipe.exists(self.state_key(h));
        }
        self.run(&pipe).await
    }

    /// Ends a session everywhere.
    pub(crate) async fn end(&self, handle: &str) -> Result<(), Down> {
        let mut pipe = redis::pipe();
        pipe.del(self.state_key(handle))
            .ignore()
            .del(self.subs_key(handle))
            .ignore()
            .zrem(&self.index, handle)
            .ignore();
        self.run::<()>(&pipe).await?;
        self.publish(Event::Ended {
            session: handle.to_owned(),
        })
        .await
    }

    /// Records a new log level, and tells the session's other copies.
    pub(crate) async fn set_level(&self, handle: &str, rank: u64) -> Result<(), Down> {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.state_key(handle))
            .arg("level")
            .arg(rank)
            .ignore();
        self.run::<()>(&pipe).await?;
        self.publish(Event::Level {
            session: handle.to_owned(),
            rank,
        })
        .await
    }

    /// Records a subscription taken or dropped, and tells the session's other copies.
    pub(crate) async fn subscribed(&self, handle: &str, uri: &str, on: bool) -> Result<(), Down> {
        let key = self.subs_key(handle);
        let mut pipe = redis::pipe();
        if on {
            pipe.sadd(&key, uri)
                .ignore()
                .expire(&key, self.idle.as_secs().max(1) as i64)
                .ignore();
        } else {
            pipe.srem(&key, uri).ignore();
        }
        self.run::<()>(&pipe).await?;
        self.publish(Event::Subscribed {
            session: handle.to_owned(),
            uri: uri.to_owned(),
            on,
        })
        .await
    }

    /// Tells every replica.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), Down> {
        let envelope = Envelope {
            from: self.replica.clone(),
            event,
        };
        let payload = serde_json::to_vec(&envelope).map_err(|_| Down)?;
        let mut pipe = redis::pipe();
        pipe.publish(&self.channel, payload).ignore();
        self.run(&pipe).await
    }

    /// The fleet's live sessions (at most [`MAX_LISTED`]), oldest first.
    pub(crate) async fn list(&self) -> Result<Vec<Record>, Down> {
        let mut pipe = redis::pipe();
        pipe.zrembyscore(&self.index, "-inf", crate::auth::now_ms())
            .ignore()
            .zrange(&self.index, 0, MAX_LISTED - 1);
        let (handles,): (Vec<String>,) = self.run(&pipe).await?;
        let mut pipe = redis::pipe();
        for h in &handles {
            pipe.hgetall(self.state_key(h));
        }
        let all: Vec<HashMap<String, String>> = self.run(&pipe).await?;
        let mut records: Vec<Record> = handles
            .iter()
            .zip(all)
            .filter_map(|(h, fields)| record(h, fields))
            .collect();
        records.sort_by_key(|r| r.opened_at);
        Ok(records)
    }

    /// With a fleet key: tells the other replicas what `upstream` says here for one session or a
    /// tenant's sessions (resource updates, messages trailing a call), whose GET stream another
    /// replica may hold, until `stop`. List changes are not relayed: every replica hears its own
    /// upstreams' (an HTTP server tells each replica's connection; each replica runs its own stdio
    /// processes), and relaying them would repeat them.
    pub(crate) fn tap(self: &Arc<Self>, upstream: &Upstream, stop: CancellationToken) {
        let mut notices = upstream.subscribe();
        let server = upstream.name.to_string();
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let notice = tokio::select! {
                    n = notices.recv() => n,
                    _ = stop.cancelled() => return,
                };
                let notice = match notice {
                    Ok(notice) => notice,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let (target, said) = match notice {
                    Notice::ResourceUpdated { uri, params, owner } => {
                        let target = match owner {
                            UpdateOwner::Session(id) => Target::Session(handle_of(&id)),
                            UpdateOwner::Tenant(tenant) => Target::Tenant(tenant.to_string()),
                        };
                        (target, Said::Updated { uri, params })
                    }
                    Notice::ForSession { session, message } => (
                        Target::Session(handle_of(&session)),
                        Said::Message(String::from_utf8_lossy(&message).into_owned()),
                    ),
                    Notice::ListChanged(_) | Notice::Relayed(_) => continue,
                };
                let server = server.clone();
                // Best effort, like the notice itself: a replica that cannot reach Redis still
                // serves its own streams.
                let _ = store
                    .publish(Event::Notice {
                        server,
                        target,
                        said,
                    })
                    .await;
            }
        });
    }

    /// Delivers the other replicas' events to `tx` until `stop`, listening again (every
    /// 500 ms at most) whenever the connection drops.
    pub(crate) fn listen(
        self: &Arc<Self>,
        tx: mpsc::Sender<Event>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let attempt = async {
                    let mut pubsub = me.client.get_async_pubsub().await.ok()?;
                    pubsub.subscribe(&me.channel).await.ok()?;
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(envelope) =
                            serde_json::from_slice::<Envelope>(msg.get_payload_bytes())
                        else {
                            continue;
                        };
                        if envelope.from != me.replica && tx.send(envelope.event).await.is_err() {
                            return Some(());
                        }
                    }
                    None
                };
                tokio::select! {
                    _ = attempt => {}
                    _ = stop.cancelled() => return,
                }
                if tx.is_closed() {
                    return;
                }
                tracing::warn!("lost the fleet's session channel (Redis); listening again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    }
}

fn record(handle: &str, mut fields: HashMap<String, String>) -> Option<Record> {
    let mut take = |name: &str| fields.remove(name);
    Some(Record {
        handle: handle.to_owned(),
        tenant: take("tenant")?,
        subject: take("subject")?,
        key: take("key").filter(|k| !k.is_empty()),
        protocol_version: take("version")?,
        opened_at: take("opened")?.parse().ok()?,
        client_capabilities: take("caps")?,
        log_level: take("level")?.parse().ok()?,
        replica: take("replica").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_survives_the_channel() {
        let events = [
            Event::Ended {
                session: "h".into(),
            },
            Event::Level {
                session: "h".into(),
                rank: 4,
            },
            Event::Subscribed {
                session: "h".into(),
                uri: "file:///a".into(),
                on: true,
            },
            Event::Answer {
                session: "h".into(),
                id: "17".into(),
                outcome: Ok(r#"{"content":{"type":"text","text":"x"}}"#.into()),
            },
            Event::Answer {
                session: "h".into(),
                id: r#""s-1""#.into(),
                outcome: Err(r#"{"code":-1}"#.into()),
            },
            Event::Cancel {
                session: "h".into(),
                id: "3".into(),
            },
            Event::Notice {
                server: "kit".into(),
                target: Target::Tenant("acme".into()),
                said: Said::Updated {
                    uri: "test://r".into(),
                    params: r#"{"uri":"test://r"}"#.into(),
                },
            },
            Event::Notice {
                server: "kit".into(),
                target: Target::Session("h".into()),
                said: Said::Message(r#"{"jsonrpc":"2.0","method":"x"}"#.into()),
            },
        ];
        for event in events {
            let sent = serde_json::to_vec(&Envelope {
                from: "r1".into(),
                event: event.clone(),
            })
            .unwrap();
            let got: Envelope = serde_json::from_slice(&sent).unwrap();
            assert_eq!(got.from, "r1");
            assert_eq!(got.event, event);
        }
    }
}
