//! Rate limits through the real gateway: a tenant over its tier's rate is refused with an error
//! that names the limit and when to retry, audited as DENIED and counted, while another tenant
//! is not affected; a tenant's own rates replace its tier's; subjects and tools have their own
//! buckets.

use crate::common;

use std::time::{Duration, Instant};

use common::{Gw, stdio_server, stored_hash};
use serde_json::{Value, json};

const ACME: &str = "pal_limits_test_acme_key_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const GLOBEX_1: &str = "pal_limits_test_globex_one_aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const GLOBEX_2: &str = "pal_limits_test_globex_two_aaaaaaaaaaaaaaaaaaaaaaaaaaaa";

async fn gateway() -> Gw {
    let top = format!(
        r#"[rate_limits]
default_tier = "free"
[rate_limits.tiers.free]
tenant = {{ per_second = 2, burst = 3 }}
[rate_limits.tiers.pro]
tenant = {{ per_second = 1000, burst = 1000 }}
subject = {{ per_second = 0.5, burst = 3 }}

[[tenants]]
id = "acme"
servers = ["kit"]
keys = ["{}"]

[[tenants]]
id = "globex"
servers = ["kit"]
keys = ["{}", "{}"]
[tenants.policy]
tier = "pro"
[tenants.policy.rates.tools]
"kit/add" = {{ per_second = 0.5, burst = 1 }}
"#,
        stored_hash(ACME),
        stored_hash(GLOBEX_1),
        stored_hash(GLOBEX_2)
    );
    Gw::in_process(&stdio_server("kit", ""), &[], &top).await
}

/// The error of a refused call, or `None` if it succeeded.
fn refusal(a: &common::Answer) -> Option<Value> {
    let r = a.response();
    if r["result"].is_object() {
        return None;
    }
    Some(r["error"].clone())
}

#[tokio::test]
async fn over_its_rate_a_tenant_is_refused_with_the_limit_and_a_retry_time() {
    let gw = gateway().await;
    gw.ready().await;
    let acme = gw.legacy_as(ACME).await;
    let globex = gw.legacy_as(GLOBEX_1).await;
    // The free tier's burst of 3, then refusals.
    for i in 0..3 {
        let a = acme.call(i, "kit__echo", json!({"message": "hi"})).await;
        assert_eq!(refusal(&a), None, "call {i}");
    }
    let a = acme.call(9, "kit__echo", json!({"message": "hi"})).await;
    let e = refusal(&a).expect("the fourth call is refused");
    assert_eq!(e["code"], -32029);
    assert_eq!(e["data"]["limit"], "tenant");
    let retry = e["data"]["retryAfterMs"].as_u64().unwrap();
    assert!((1..=500).contains(&retry), "retryAfterMs {retry}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("the tenant limit") && msg.contains("retry in"),
        "{msg}"
    );

    // Another tenant (tier pro) is not affected.
    for i in 0..10 {
        let a = globex.call(i, "kit__echo", json!({"message": "hi"})).await;
        if i < 3 {
            assert_eq!(refusal(&a), None, "globex call {i}");
        }
    }

    // After the time it was told, acme's call goes through.
    tokio::time::sleep(Duration::from_millis(retry)).await;
    let a = acme
        .call(10, "kit__echo", json!({"message": "again"}))
        .await;
    assert_eq!(refusal(&a), None);

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"palisade_protection_refusals_total{tenant="acme",limit="tenant"} 1"#),
        "{metrics}"
    );
    // Audited as DENIED, with the limit.
    let dir = gw.config.with_file_name("palisade-data").join("audit");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text: String = palisade_audit::list_files(&dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| palisade_audit::read_file(f).ok())
            .map(|t| t.text)
            .collect();
        if text.contains(r#""outcome":"denied: tenant: rate limit exceeded"#) {
            break;
        }
        assert!(Instant::now() < deadline, "no DENIED record: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn subjects_and_tools_have_their_own_buckets() {
    let gw = gateway().await;
    gw.ready().await;
    let one = gw.legacy_as(GLOBEX_1).await;
    let two = gw.legacy_as(GLOBEX_2).await;
    // The pro tier gives each subject bursts of 3: the first key's fourth call is refused ...
    for i in 0..3 {
        assert_eq!(
            refusal(&one.call(i, "kit__echo", json!({"message": "x"})).await),
            None
        );
    }
    let e = refusal(&one.call(5, "kit__echo", json!({"message": "x"})).await).unwrap();
    assert_eq!(e["data"]["limit"], "subject");
    // ... while the second key of the same tenant still has its own.
    assert_eq!(
        refusal(&two.call(1, "kit__echo", json!({"message": "x"})).await),
        None
    );
    // globex's own rate for `add` (bursts of 1) replaces nothing else: a second add is refused
    // as `tool`.
    assert_eq!(
        refusal(&two.call(2, "kit__add", json!({"a": 1, "b": 2})).await),
        None
    );
    let e = refusal(&two.call(3, "kit__add", json!({"a": 1, "b": 2})).await).unwrap();
    assert_eq!(e["data"]["limit"], "tool", "{e}");
}

#[test]
fn an_unknown_default_tier_or_a_bad_rate_is_rejected_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, says) in [
        (
            "[rate_limits]\ndefault_tier = \"gold\"\n",
            "there is no [rate_limits.tiers.gold]",
        ),
        (
            "[rate_limits.tiers.free]\ntenant = { per_second = 0, burst = 1 }\n",
            "per_second must be > 0",
        ),
    ] {
        let config = dir.path().join("palisade.toml");
        std::fs::write(&config, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }
}

const ADMIN_KEY: &str = "pal_limits_test_admin_key_aaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

async fn two_tenants(server_extra: &str) -> Gw {
    common::two_tenants_on_kit_with(server_extra, &common::admin_table(ADMIN_KEY)).await
}

#[tokio::test]
async fn breakers_open_on_failures_not_on_tool_errors_and_a_probe_closes_them() {
    let gw = two_tenants("breaker = { failures = 2, open_secs = 2 }").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    // Tool errors are the upstream working: they never open a breaker.
    for i in 0..5 {
        let a = acme.call(i, "kit__error_result", json!({})).await;
        assert_eq!(a.response()["result"]["isError"], true);
    }
    assert_eq!(
        refusal(&acme.call(9, "kit__echo", json!({"message": "x"})).await),
        None
    );
    // Two calls that crash the server open acme's breaker on it.
    for i in 10..12 {
        let a = acme.call(i, "kit__crash", json!({})).await;
        assert!(refusal(&a).is_some(), "a crash is an error");
        gw.ready().await;
    }
    let e = refusal(&acme.call(20, "kit__echo", json!({"message": "x"})).await)
        .expect("acme's breaker is open");
    assert_eq!(e["data"]["limit"], "tenant_breaker", "{e}");
    let retry = e["data"]["retryAfterMs"].as_u64().unwrap();
    assert!((1..=2000).contains(&retry), "{retry}");
    let (status, listed) = gw
        .admin_api("GET", "/admin/v1/breakers", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        listed["breakers"],
        json!([{"server": "kit", "tenant": "acme", "state": "open"}])
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"palisade_breaker_state{server="kit",tenant="acme",state="open"} 1"#),
        "{metrics}"
    );
    // The other tenant is still served.
    let globex = gw.legacy("globex").await;
    assert_eq!(
        refusal(&globex.call(1, "kit__echo", json!({"message": "y"})).await),
        None
    );
    // After open_secs one probe goes through; it succeeds and closes the breaker.
    tokio::time::sleep(Duration::from_millis(retry + 50)).await;
    for i in 30..33 {
        assert_eq!(
            refusal(&acme.call(i, "kit__echo", json!({"message": "x"})).await),
            None,
            "call {i} after the probe"
        );
    }
    assert!(
        gw.metrics().await.contains(
            r#"palisade_protection_refusals_total{tenant="acme",limit="tenant_breaker"} 1"#
        )
    );

    // Open again, an operator closes it with the CLI.
    for i in 40..42 {
        acme.call(i, "kit__crash", json!({})).await;
        gw.ready().await;
    }
    assert!(refusal(&acme.call(50, "kit__echo", json!({"message": "x"})).await).is_some());
    let out = gw
        .cli(&[
            "breaker",
            "reset",
            "--server",
            "kit",
            "--tenant",
            "acme",
            "--admin-key",
            ADMIN_KEY,
            "--admin-url",
            &gw.admin,
        ])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "closed",
        "{out:?}"
    );
    assert_eq!(
        refusal(&acme.call(51, "kit__echo", json!({"message": "x"})).await),
        None
    );
}

#[tokio::test]
async fn a_full_bulkhead_refuses_at_once_and_only_that_tenant() {
    let gw = two_tenants("max_inflight_per_tenant = 1").await;
    gw.ready().await;
    let slow = gw.legacy("acme").await;
    let other = gw.legacy("acme").await;
    let globex = gw.legacy("globex").await;
    let long_call = slow.call(1, "kit__slow", json!({"ms": 1000}));
    let meanwhile = async {
        gw.wait_logged("slow started", 1).await;
        let started = Instant::now();
        let a = other.call(2, "kit__echo", json!({"message": "x"})).await;
        let waited = started.elapsed();
        let g = globex.call(3, "kit__echo", json!({"message": "y"})).await;
        (a, waited, g)
    };
    let (long, (a, waited, g)) = tokio::join!(long_call, meanwhile);
    assert_eq!(refusal(&long), None);
    let e = refusal(&a).expect("acme's second call in flight is refused");
    assert_eq!(e["data"]["limit"], "tenant_bulkhead", "{e}");
    assert!(
        waited < Duration::from_millis(300),
        "refused at once: {waited:?}"
    );
    assert_eq!(refusal(&g), None, "globex has its own places");
}

/// A TCP relay to Redis that the test can cut (refusing and dropping connections) and restore:
/// Redis going away and coming back, without stopping the machine's Redis.
struct Relay {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(redis: &str) -> Relay {
        let target = redis
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (flag, cuts) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { port, open, cut }
    }

    fn set(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
        if !open {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_quota_through_redis_and_follow_the_policy_while_it_is_down() {
    let Some(redis) = testenv::redis() else {
        return;
    };
    let relay = Relay::start(&redis).await;
    // A tenant of its own, so that no other run shares its bucket.
    let tenant = format!("t{:08x}", rand::random::<u32>());
    let key = format!("pal_limits_redis_{tenant}_{}", "a".repeat(30));
    const RATE: f64 = 40.0;
    // A burst of a quarter second: a pause in the load shorter than that (two cores, three
    // gateways) loses no tokens, so the count measures the shared bucket, not the scheduler.
    const BURST: f64 = 10.0;
    let start = |policy: &str| {
        let top = format!(
            "[rate_limits]\nredis_url = \"redis://127.0.0.1:{}\"\nwhen_redis_down = \"{policy}\"\ndefault_tier = \"t\"\n[rate_limits.tiers.t]\ntenant = {{ per_second = {RATE}, burst = {BURST} }}\n\n[[tenants]]\nid = \"{tenant}\"\nservers = [\"kit\"]\nkeys = [\"{}\"]\n",
            relay.port,
            stored_hash(&key)
        );
        Gw::start_with(&stdio_server("kit", ""), &[], &top)
    };
    let gws = [start("fail_open"), start("fail_open"), start("fail_closed")];
    for gw in &gws {
        gw.ready().await;
    }

    // Four clients on each replica call as fast as they can for four seconds.
    const SECS: f64 = 4.0;
    let sessions = futures_util::future::join_all(
        gws.iter()
            .flat_map(|gw| (0..4).map(|_| gw.legacy_as(&key)))
            .collect::<Vec<_>>(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs_f64(SECS);
    let clients = sessions.iter().map(|s| async move {
        let (mut ok, mut limited) = (0u32, 0u32);
        let mut id = 0;
        while Instant::now() < deadline {
            id += 1;
            match refusal(&s.call(id, "kit__echo", json!({"message": "x"})).await) {
                None => ok += 1,
                Some(e) => {
                    assert_eq!(e["data"]["limit"], "tenant", "{e}");
                    limited += 1;
                }
            }
        }
        (ok, limited)
    });
    let results = futures_util::future::join_all(clients).await;
    let ok: u32 = results.iter().map(|r| r.0).sum();
    let limited: u32 = results.iter().map(|r| r.1).sum();
    let expected = RATE * SECS + BURST;
    let error = (f64::from(ok) - expected) / expected;
    eprintln!(
        "3 replicas: {ok} calls allowed, {limited} refused; expected {expected} (error {:+.1}%)",
        error * 100.0
    );
    assert!(limited > ok, "the load must exceed the quota");
    // The promise is an upper bound: three replicas together never allow more than one
    // quota. Fewer means the load was starved of CPU (another job on the two cores), which
    // says nothing about the limiter, so below the quota only a gross shortfall fails.
    assert!(error <= 0.05, "{ok} allowed, at most {expected} + 5%");
    assert!(error >= -0.5, "{ok} allowed, expected about {expected}");

    // Redis goes away: fail-open replicas limit alone, the fail-closed one refuses.
    relay.set(false);
    let down = |gw: &Gw| {
        let gw_admin = gw.admin.clone();
        let http = gw.http.clone();
        async move {
            http.get(format!("{gw_admin}/readyz"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let open_s = gws[0].legacy_as(&key).await;
    let closed_s = gws[2].legacy_as(&key).await;
    // The first call after the cut finds Redis gone (within its 50 ms timeout).
    let _ = open_s.call(1, "kit__echo", json!({"message": "x"})).await;
    let _ = closed_s.call(1, "kit__echo", json!({"message": "x"})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        refusal(&open_s.call(2, "kit__echo", json!({"message": "x"})).await),
        None,
        "fail_open: served under the local limit"
    );
    let e = refusal(&closed_s.call(2, "kit__echo", json!({"message": "x"})).await)
        .expect("fail_closed refuses");
    assert_eq!(e["data"]["limit"], "rate_limit_store", "{e}");
    assert!(
        down(&gws[2])
            .await
            .contains("rate limit store (Redis) is down")
    );
    assert!(
        gws[2]
            .metrics()
            .await
            .contains("palisade_rate_limit_store_up 0")
    );

    // Redis is back: the shared limit applies again everywhere.
    relay.set(true);
    let back = Instant::now() + Duration::from_secs(10);
    let mut id = 10;
    loop {
        id += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if refusal(
            &closed_s
                .call(id, "kit__echo", json!({"message": "x"}))
                .await,
        )
        .is_none()
        {
            break;
        }
        assert!(Instant::now() < back, "enforcement did not resume");
    }
    assert_eq!(down(&gws[2]).await, "ready\n");
    assert!(
        gws[2]
            .metrics()
            .await
            .contains("palisade_rate_limit_store_up 1")
    );
}

/// `n` calls by `s`, with at least `every` between one call's answer and the next call (so a
/// slow moment never bunches them up into a burst above the pace); how many were refused.
async fn paced(s: &common::Legacy<'_>, n: u64, every: Duration) -> u32 {
    let mut refused = 0;
    for id in 0..n {
        tokio::time::sleep(every).await;
        let a = s.call(id, "kit__echo", json!({"message": "b"})).await;
        if refusal(&a).is_some() {
            refused += 1;
        }
    }
    refused
}

/// A tenant flooding at ten times its quota is refused while another tenant beside it, at half
/// its own quota at most, is never refused. (How much the flood slows the other tenant down is
/// a timing figure: `bench/neighbour.py` measures it.) Nothing here depends on the machine's
/// speed: B's pace is a floor between its calls, and the flood goes on until both B is done and
/// A has been refused a hundred times, however long a loaded machine takes for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_at_ten_times_its_quota_does_not_hurt_another() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
    let gw = common::two_tenants_on_kit_with(
        "",
        "[audit]\nenabled = false\n[rate_limits]\ndefault_tier = \"t\"\n[rate_limits.tiers.t]\ntenant = { per_second = 50, burst = 10 }\n",
    ).await;
    gw.ready().await;
    let b = gw.legacy("globex").await;
    // A sends up to 500 calls/s (ten times its quota) from five sessions while B calls at half
    // its quota at most.
    let a_sessions = futures_util::future::join_all((0..5).map(|_| gw.legacy("acme"))).await;
    let (b_done, a_refused) = (AtomicBool::new(false), AtomicU32::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let flood = futures_util::future::join_all(a_sessions.iter().map(|s| async {
        let mut id = 0;
        let mut next = Instant::now();
        while !(b_done.load(SeqCst) && a_refused.load(SeqCst) >= 100) {
            assert!(
                Instant::now() < deadline,
                "A was refused {} times in 120 s",
                a_refused.load(SeqCst)
            );
            tokio::time::sleep_until(next.into()).await;
            next += Duration::from_millis(10);
            id += 1;
            if refusal(&s.call(id, "kit__echo", json!({"message": "a"})).await).is_some() {
                a_refused.fetch_add(1, SeqCst);
            }
        }
    }));
    let measured = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = paced(&b, 100, Duration::from_millis(40)).await;
        b_done.store(true, SeqCst);
        r
    };
    let (_, refused_beside) = tokio::join!(flood, measured);
    assert_eq!(refused_beside, 0, "B is never refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_input_crashes_the_shared_server_is_quarantined_and_others_are_served() {
    let gw = common::two_tenants_on_kit_with(
        "quarantine = { crashes = 2, window_secs = 60, for_secs = 30 }",
        "",
    )
    .await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let globex = gw.legacy("globex").await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    // globex calls every 20 ms throughout.
    let steady = async {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let mut id = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            id += 1;
            let a = globex
                .call(id, "kit__echo", json!({"message": "steady"}))
                .await;
            match refusal(&a) {
                None => ok += 1,
                Some(e) => failed.push(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failed)
    };
    let poison = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..2 {
            let a = acme.call(i, "kit__crash", json!({})).await;
            assert!(refusal(&a).is_some());
            gw.ready().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let e = refusal(&acme.call(9, "kit__echo", json!({"message": "x"})).await)
            .expect("acme is quarantined");
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        e
    };
    let ((ok, failed), e) = tokio::join!(steady, poison);
    assert_eq!(e["data"]["limit"], "quarantine", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("quarantined from server kit") && msg.contains("crashed"),
        "{msg}"
    );
    assert!(e["data"]["retryAfterMs"].as_u64().unwrap() > 29_000);
    eprintln!(
        "globex: {ok} calls succeeded, {} failed while the server crashed twice: {failed:?}",
        failed.len()
    );
    assert!(ok >= 20, "globex was served throughout: {ok}");
    // Only calls caught by a crash (in flight, or sent while the process restarted) may fail.
    assert!(failed.len() <= 2, "{failed:?}");
    // globex is not quarantined.
    assert_eq!(
        refusal(
            &globex
                .call(999, "kit__echo", json!({"message": "after"}))
                .await
        ),
        None
    );
}

#[tokio::test]
async fn a_tool_timeout_replaces_the_servers_and_cancels_the_call() {
    let gw = common::two_tenants_on_kit_with(
        "call_timeout_ms = 10000\ntool_timeouts_ms = { slow = 300 }",
        "",
    )
    .await;
    gw.ready().await;
    let s = gw.legacy("acme").await;
    assert_eq!(
        refusal(&s.call(1, "kit__slow", json!({"ms": 50})).await),
        None
    );
    let started = Instant::now();
    let e = refusal(&s.call(2, "kit__slow", json!({"ms": 5000})).await).expect("timed out");
    let took = started.elapsed();
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("did not answer within 300 ms") && msg.contains("cancelled"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The upstream was told: the testkit logs the cancellation it received.
    gw.wait_logged("slow cancelled", 1).await;
}

/// Calls as fast as `sessions` allow until `until`; how many succeeded (refusals must be quota
/// refusals).
async fn flood(sessions: &[common::Legacy<'_>], until: Instant) -> u32 {
    let each = sessions.iter().map(|s| async move {
        let mut ok = 0;
        let mut id = 0;
        while Instant::now() < until {
            id += 1;
            match refusal(&s.call(id, "kit__echo", json!({"message": "q"})).await) {
                None => ok += 1,
                Some(e) => {
                    let limit = e["data"]["limit"].as_str().unwrap_or("").to_owned();
                    assert!(limit.starts_with("server_"), "{e}");
                    // Back off as told, as an agent would.
                    let ms = e["data"]["retryAfterMs"].as_u64().unwrap_or(1).min(50);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
        }
        ok
    });
    futures_util::future::join_all(each).await.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_quota_is_shared_fairly_and_an_idle_tenants_share_is_used() {
    let gw = common::two_tenants_on_kit_with("quota = { per_second = 40, burst = 2 }", "").await;
    gw.ready().await;
    let acme = futures_util::future::join_all((0..3).map(|_| gw.legacy("acme"))).await;
    let globex = futures_util::future::join_all((0..3).map(|_| gw.legacy("globex"))).await;
    const SECS: u64 = 3;
    let until = Instant::now() + Duration::from_secs(SECS);
    let (a, g) = tokio::join!(flood(&acme, until), flood(&globex, until));
    eprintln!("both calling: acme {a}, globex {g} in {SECS} s (quota 40/s)");
    let quota = 40 * SECS as u32;
    assert!(a + g <= quota + 10, "the quota holds: {}", a + g);
    // Shares are compared with what both got, not with the quota: how much of the quota the
    // clients reach depends on the CPU they get, the split between tenants does not.
    for (who, n) in [("acme", a), ("globex", g)] {
        assert!(
            (35..=65).contains(&(n * 100 / (a + g).max(1))),
            "{who} got {n} of {}, not about half",
            a + g
        );
    }
    // globex stops; after a second acme may use the whole quota.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let until = Instant::now() + Duration::from_secs(SECS);
    let alone = flood(&acme, until).await;
    eprintln!("acme alone: {alone} in {SECS} s");
    assert!(alone <= quota + 10, "the quota holds: {alone}");
    assert!(
        alone * 5 >= (a + g) * 4,
        "acme alone got {alone}, both together {}: the idle share went unused",
        a + g
    );
}

#[tokio::test]
async fn a_refused_modern_request_is_429_with_retry_after() {
    let gw = common::two_tenants_on_kit_with(
        "",
        "[rate_limits]\ndefault_tier = \"t\"\n[rate_limits.tiers.t]\ntenant = { per_second = 0.5, burst = 1 }\n",
    ).await;
    gw.ready().await;
    let call = json!({"name": "kit__echo", "arguments": {"message": "m"}});
    let first = gw.modern("acme", 1, "tools/call", call.clone()).await;
    assert_eq!(first.status, 200);
    let second = gw.modern("acme", 2, "tools/call", call).await;
    assert_eq!(second.status, 429);
    let retry: u64 = second.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(second.response()["error"]["data"]["limit"], "tenant");
}

#[tokio::test]
async fn a_servers_bulkhead_waits_a_bounded_time_for_a_place() {
    let gw = two_tenants("max_inflight = 1\nqueue_ms = 1500").await;
    gw.ready().await;
    let acme = gw.legacy("acme").await;
    let globex = gw.legacy("globex").await;
    let other = gw.legacy("globex").await;
    // acme holds the server's only place for 600 ms; globex waits for it, then runs.
    let long = acme.call(1, "kit__slow", json!({"ms": 600}));
    let waiting = async {
        gw.wait_logged("slow started", 1).await;
        let started = Instant::now();
        let a = globex.call(2, "kit__echo", json!({"message": "x"})).await;
        (a, started.elapsed())
    };
    let (l, (a, waited)) = tokio::join!(long, waiting);
    assert_eq!(refusal(&l), None);
    assert_eq!(refusal(&a), None, "served once the place was free");
    assert!(
        waited >= Duration::from_millis(300),
        "it waited: {waited:?}"
    );
    // Held longer than queue_ms: refused, after the wait and no longer.
    let long = acme.call(3, "kit__slow", json!({"ms": 3000}));
    let refused = async {
        gw.wait_logged("slow started", 2).await;
        let started = Instant::now();
        let a = other.call(4, "kit__echo", json!({"message": "y"})).await;
        (a, started.elapsed())
    };
    let (_, (a, waited)) = tokio::join!(long, refused);
    let e = refusal(&a).expect("refused after queue_ms");
    assert_eq!(e["data"]["limit"], "bulkhead", "{e}");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
}
