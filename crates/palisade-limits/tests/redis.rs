//! `Distributed` against a real Redis, named by `PALISADE_TEST_REDIS_URL`
//! (e.g. `redis://127.0.0.1:6379`). Without it the tests that need Redis say they are skipped (under `CI=true` they fail).
//! Each test uses its own key prefix, so tests may run at once and leave nothing that matters
//! (buckets expire by themselves).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_limits::redis::{Distributed, WhenDown};
use palisade_limits::{Rate, Verdict};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn redis_url() -> Option<String> {
    testenv::redis()
}

/// A prefix no other test (or earlier run) uses.
fn prefix() -> String {
    let n = RandomState::new().hash_one((std::process::id(), Instant::now()));
    format!("palisade-test:{n:016x}:")
}

fn rate(per_second: f64, burst: u32) -> Rate {
    Rate { per_second, burst }
}

fn retry_after(v: Verdict) -> Duration {
    match v {
        Verdict::Limited { retry_after } => retry_after,
        other => panic!("expected Limited, got {other:?}"),
    }
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn burst_then_limited_with_retry_after() {
    let Some(url) = redis_url() else { return };
    let d = Distributed::new(&url, &prefix(), WhenDown::FailClosed).unwrap();
    let r = rate(5.0, 5); // one call every 200 ms
    for i in 0..5 {
        assert_eq!(d.check("k", r).await, Verdict::Allowed, "call {i}");
    }
    assert!(d.up());
    let wait = retry_after(d.check("k", r).await);
    assert!(
        wait > Duration::from_millis(100) && wait <= Duration::from_millis(200),
        "{wait:?}"
    );
    // Refusals do not consume: the next one says about the same.
    let again = retry_after(d.check("k", r).await);
    assert!(again <= wait, "{again:?} vs {wait:?}");
    // Another key has its own bucket.
    assert_eq!(d.check("other", r).await, Verdict::Allowed);
}

#[tokio::test]
async fn refills_after_waiting() {
    let Some(url) = redis_url() else { return };
    let d = Distributed::new(&url, &prefix(), WhenDown::FailClosed).unwrap();
    let r = rate(20.0, 2); // one call every 50 ms
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    let wait = retry_after(d.check("k", r).await);
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    assert!(matches!(d.check("k", r).await, Verdict::Limited { .. }));
    // After a full refill time the whole burst is back.
    tokio::time::sleep(Duration::from_millis(110)).await;
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    assert!(matches!(d.check("k", r).await, Verdict::Limited { .. }));
}

#[tokio::test]
async fn two_replicas_share_one_bucket() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let a = Distributed::new(&url, &p, WhenDown::FailClosed).unwrap();
    let b = Distributed::new(&url, &p, WhenDown::FailClosed).unwrap();
    let r = rate(1.0, 3);
    assert_eq!(a.check("tenant", r).await, Verdict::Allowed);
    assert_eq!(b.check("tenant", r).await, Verdict::Allowed);
    assert_eq!(a.check("tenant", r).await, Verdict::Allowed);
    assert!(matches!(
        b.check("tenant", r).await,
        Verdict::Limited { .. }
    ));
    assert!(matches!(
        a.check("tenant", r).await,
        Verdict::Limited { .. }
    ));
    // A replica with another prefix does not share it.
    let c = Distributed::new(&url, &prefix(), WhenDown::FailClosed).unwrap();
    assert_eq!(c.check("tenant", r).await, Verdict::Allowed);
}

#[tokio::test]
async fn bucket_key_expires_when_full_again() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let d = Distributed::new(&url, &p, WhenDown::FailClosed).unwrap();
    let r = rate(10.0, 2); // 100 ms per call, full again 200 ms after two calls
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    let mut con = raw(&url).await;
    let key = format!("{p}k");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(pttl > 100 && pttl <= 200, "PTTL {pttl}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(exists, 0, "an idle bucket is left in Redis");
}

#[tokio::test]
async fn fail_open_uses_local_limits_when_unreachable() {
    // Port 1: connection refused. Needs no Redis.
    let d = Distributed::new("redis://127.0.0.1:1", "t:", WhenDown::FailOpen).unwrap();
    let r = rate(1.0, 2);
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    let wait = retry_after(d.check("k", r).await);
    assert!(wait > Duration::from_millis(900), "{wait:?}");
    assert!(!d.up());
}

#[tokio::test]
async fn fail_closed_is_unavailable_when_unreachable() {
    let d = Distributed::new("redis://127.0.0.1:1", "t:", WhenDown::FailClosed).unwrap();
    for _ in 0..3 {
        assert_eq!(
            d.check("k", rate(100.0, 100)).await,
            Verdict::Unavailable {
                retry_after: Duration::from_secs(1)
            }
        );
    }
    assert!(!d.up());
}

#[tokio::test]
async fn a_hung_redis_does_not_stall_checks() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let d = Distributed::new(&format!("redis://{addr}"), "t:", WhenDown::FailClosed)
        .unwrap()
        .with_timeout(Duration::from_millis(30));
    for _ in 0..3 {
        let started = Instant::now();
        let v = d.check("k", rate(1.0, 1)).await;
        assert!(matches!(v, Verdict::Unavailable { .. }), "{v:?}");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(!d.up());
    hold.abort();
}

#[test]
fn malformed_url_is_an_error_without_the_url() {
    let err = Distributed::new("redis://:hunter2@[::1", "t:", WhenDown::FailOpen).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("malformed"), "{text}");
    assert!(Distributed::new("not a url", "t:", WhenDown::FailOpen).is_err());
}

#[test]
fn when_down_reads_from_config() {
    use serde::Deserialize;
    use serde::de::value::{Error, StrDeserializer};
    let read = |s| WhenDown::deserialize(StrDeserializer::<Error>::new(s));
    assert_eq!(read("fail_open").unwrap(), WhenDown::FailOpen);
    assert_eq!(read("fail_closed").unwrap(), WhenDown::FailClosed);
    assert!(read("FailOpen").is_err());
}

/// A TCP proxy to Redis that can be cut (listener closed, connections dropped) and restored
/// on the same port, to play a Redis that goes away and comes back.
struct Proxy {
    addr: SocketAddr,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            tasks: Arc::default(),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let upstream = self.upstream.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) {
        self.serve(TcpListener::bind(self.addr).await.unwrap());
    }
}

#[tokio::test]
async fn goes_down_and_comes_back() {
    let Some(url) = redis_url() else { return };
    // The same URL (password, database) with the proxy in place of host:port.
    let Some(rest) = url.strip_prefix("redis://") else {
        return testenv::lacking("the proxy test needs a redis:// URL").unwrap_or(());
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), rest),
    };
    let (host_port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let proxy = Proxy::start(host_port.to_owned()).await;
    let proxied = format!("redis://{userinfo}{}{path}", proxy.addr);
    let p = prefix();
    let d = Distributed::new(&proxied, &p, WhenDown::FailClosed).unwrap();
    let r = rate(1.0, 100);
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    assert!(d.up());

    proxy.cut();
    // Let the client see its connection closed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(matches!(d.check("k", r).await, Verdict::Unavailable { .. }));
    assert!(!d.up());
    // While down, checks do not wait on the store.
    let started = Instant::now();
    for _ in 0..100 {
        assert!(matches!(d.check("k", r).await, Verdict::Unavailable { .. }));
    }
    assert!(started.elapsed() < Duration::from_millis(100));

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !d.up() {
        assert!(Instant::now() < deadline, "not back up within 3 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Checks go to Redis again: the bucket still holds the call taken before the cut.
    assert_eq!(d.check("k", r).await, Verdict::Allowed);
    let mut con = raw(&url).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}k"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        pttl > 1000 && pttl <= 2000,
        "two calls in the bucket: PTTL {pttl}"
    );
    proxy.cut();
}
