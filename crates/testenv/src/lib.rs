//! What a test needs from the host it runs on.
//!
//! A test that needs a service (PostgreSQL, Redis) or a kernel feature asks here first. On a
//! developer's machine without it, the test prints `skipped: <why>` and returns; under
//! `CI=true` the same absence is a failure, so CI never passes a test that did not run.

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
