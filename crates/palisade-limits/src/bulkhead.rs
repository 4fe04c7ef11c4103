//! Bulkheads: caps on calls in flight, one per key (the gateway keys them by upstream and by
//! tenant × upstream).
//!
//! A call enters before it is forwarded and leaves when its [`Entry`] is dropped. When a
//! bulkhead is full a call is refused at once, or waits up to a bounded time for a place; never
//! longer. A key's cap may change on reload: calls already in flight finish on the old cap's
//! count, new calls count against the new one. Idle keys are dropped, so memory stays bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A place in a bulkhead; dropping it frees the place.
#[derive(Debug)]
pub struct Entry {
    _permit: OwnedSemaphorePermit,
}

/// The bulkhead was full (for the whole wait, if there was one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    pub max: usize,
}

struct Slot {
    max: usize,
    places: Arc<Semaphore>,
}

/// Bulkheads by key.
#[derive(Default)]
pub struct Bulkheads {
    map: Mutex<HashMap<String, Slot>>,
}

impl Bulkheads {
    pub fn new() -> Bulkheads {
        Bulkheads::default()
    }

    fn places(&self, key: &str, max: usize) -> Arc<Semaphore> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Drop idle keys as the map grows, so however many keys come and go it stays small.
        if map.len() > 1024 && !map.contains_key(key) {
            map.retain(|_, s| s.places.available_permits() < s.max);
        }
        let slot = map.entry(key.to_owned()).or_insert_with(|| Slot {
            max,
            places: Arc::new(Semaphore::new(max)),
        });
        if slot.max != max {
            *slot = Slot {
                max,
                places: Arc::new(Semaphore::new(max)),
            };
        }
        slot.places.clone()
    }

    /// Enter `key`'s bulkhead of `max` places, waiting up to `wait` for one (zero: not at all).
    pub async fn enter(&self, key: &str, max: usize, wait: Duration) -> Result<Entry, Full> {
        let places = self.places(key, max);
        let permit = if wait.is_zero() {
            places.try_acquire_owned().ok()
        } else {
            tokio::time::timeout(wait, places.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        };
        permit.map(|p| Entry { _permit: p }).ok_or(Full { max })
    }

    /// Calls in flight under `key`.
    pub fn in_flight(&self, key: &str) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map_or(0, |s| s.max - s.places.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_refuses_at_once_or_after_a_bounded_wait() {
        let b = Bulkheads::new();
        let one = b.enter("k", 2, Duration::ZERO).await.unwrap();
        let _two = b.enter("k", 2, Duration::ZERO).await.unwrap();
        assert_eq!(b.in_flight("k"), 2);
        assert_eq!(
            b.enter("k", 2, Duration::ZERO).await.unwrap_err(),
            Full { max: 2 }
        );
        let started = tokio::time::Instant::now();
        assert!(b.enter("k", 2, Duration::from_millis(50)).await.is_err());
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Another key has its own places.
        assert!(b.enter("other", 2, Duration::ZERO).await.is_ok());
        // A place freed during the wait is taken.
        let waiter = b.enter("k", 2, Duration::from_secs(5));
        drop(one);
        assert!(waiter.await.is_ok());
    }

    #[tokio::test]
    async fn a_new_cap_applies_to_new_calls_and_idle_keys_go() {
        let b = Bulkheads::new();
        let _held = b.enter("k", 1, Duration::ZERO).await.unwrap();
        assert!(b.enter("k", 1, Duration::ZERO).await.is_err());
        assert!(b.enter("k", 3, Duration::ZERO).await.is_ok());
        for i in 0..5000 {
            drop(
                b.enter(&format!("key{i}"), 1, Duration::ZERO)
                    .await
                    .unwrap(),
            );
        }
        let held = b.map.lock().unwrap().len();
        assert!(held <= 1100, "{held} keys held");
    }
}
