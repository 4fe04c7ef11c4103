//! What a test needs from the host it runs on.
//!
//! A test that needs a service (PostgreSQL, Redis) or a kernel feature asks here first. On a
//! developer's machine without it, the test prints `skipped: <why>` and returns; under
//! `CI=true` the same absence is a failure, so CI never passes a test that did not run. And
//! how a test waits for something to happen: on a condition ([`wait_until`]).

use std::future::Future;
use std::time::{Duration, Instant};

/// The value of the environment variable `var` (a service's URL), or `None` after saying the
/// test is skipped; under `CI=true` a missing or empty variable fails the test.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => lacking(&format!("{var} is not set")),
    }
}

/// `None` after printing why the test cannot run on this host; under `CI=true` a failure.
pub fn lacking<T>(why: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this host lacks what the test needs: {why}"
    );
    println!("skipped: {why}");
    None
}

/// The PostgreSQL server tests create their scratch databases on.
pub fn postgres() -> Option<String> {
    service("PALISADE_TEST_POSTGRES_URL")
}

/// The Redis server the rate-limit tests use.
pub fn redis() -> Option<String> {
    service("PALISADE_TEST_REDIS_URL")
}

/// Waits until `holds` is true, asking every 20 ms; fails the test, naming `what`, if it is
/// still false after `within`. Tests wait on a condition, never on a fixed sleep: the wait
/// ends as soon as the gateway is there, and a slow machine only waits longer.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !holds().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for a test without a runtime.
pub fn wait_until_blocking(within: Duration, what: &str, mut holds: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !holds() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(POLL);
    }
}

const POLL: Duration = Duration::from_millis(20);
