//! `[fleet]`: this gateway among the replicas that share one registry store, and the fleet
//! key that lets any replica continue a legacy session another opened.

use std::path::PathBuf;

use serde::Deserialize;

use super::Problems;
use crate::apikey::{PepperError, key_material};
use crate::session::seal::{FleetKey, MIN_FLEET_KEY, Sealer};

/// Longest replica name.
const MAX_REPLICA_LEN: usize = 63;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// This replica's name in `GET /admin/v1/replicas`: 1–63 of `[A-Za-z0-9._-]`. Default: the
    /// environment variable `PALISADE_REPLICA`, else the host name. Replicas that share a
    /// registry store need distinct names (several on one host: set `PALISADE_REPLICA`).
    /// Read at start: a config reload does not rename a running replica.
    pub(crate) replica: Option<String>,
    /// The fleet's name: its replicas share it, and it names their shared state in Redis, so
    /// that fleets sharing one Redis need distinct names. Default `palisade`.
    pub(crate) name: Option<String>,
    /// The fleet key (≥ 32 bytes) legacy session ids are sealed under, from a file or an
    /// environment variable. With it, any replica continues a session another opened (their
    /// changing state lives in the Redis of `[rate_limits] redis_url`, which is then required);
    /// without it, a session lives on the replica that opened it.
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) key_env: Option<String>,
    /// The key before the last rotation: ids it sealed still open. Rotate by making the current
    /// key previous and setting a new current one on every replica, one at a time.
    pub(crate) previous_key_file: Option<PathBuf>,
    pub(crate) previous_key_env: Option<String>,
}

/// Why the fleet key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetKeyError {
    #[error("[fleet] {which}: {source}")]
    Read {
        which: &'static str,
        source: PepperError,
    },
    #[error(
        "[fleet] {which} must be at least {MIN_FLEET_KEY} bytes; generate one with `head -c 48 /dev/urandom | base64 > fleet.key`"
    )]
    TooShort { which: &'static str },
}

impl Fleet {
    pub(super) fn check(&self, problems: &mut Problems) {
        if let Some(name) = &self.replica
            && !valid_replica(name)
        {
            problems.add("fleet.replica", REPLICA_FORMAT);
        }
        if let Some(name) = &self.name
            && !valid_replica(name)
        {
            problems.add(
                "fleet.name",
                "a fleet name is 1-63 letters, digits, '.', '_' or '-'",
            );
        }
        if self.key_file.is_some() && self.key_env.is_some() {
            problems.add("fleet", "set key_file or key_env, not both");
        }
        if self.previous_key_file.is_some() && self.previous_key_env.is_some() {
            problems.add(
                "fleet",
                "set previous_key_file or previous_key_env, not both",
            );
        }
        if self.key_file.is_none()
            && self.key_env.is_none()
            && (self.previous_key_file.is_some() || self.previous_key_env.is_some())
        {
            problems.add(
                "fleet",
                "a previous key is set but no current key (key_file or key_env)",
            );
        }
    }

    /// The fleet's name (`palisade` unless set).
    pub(crate) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("palisade")
    }

    /// Whether a fleet key is configured (sessions continue on any replica).
    pub(crate) fn shares_sessions(&self) -> bool {
        self.key_file.is_some() || self.key_env.is_some()
    }

    /// The keys session ids are sealed under, when a fleet key is configured.
    pub(crate) fn sealer(&self) -> Result<Option<Sealer>, FleetKeyError> {
        let load = |which: &'static str, file: &Option<PathBuf>, env: &Option<String>| {
            let material = key_material(file.as_deref(), env.as_deref())
                .map_err(|source| FleetKeyError::Read { which, source })?;
            material
                .map(|m| FleetKey::new(&m).ok_or(FleetKeyError::TooShort { which }))
                .transpose()
        };
        let Some(current) = load("key", &self.key_file, &self.key_env)? else {
            return Ok(None);
        };
        let previous = load(
            "previous key",
            &self.previous_key_file,
            &self.previous_key_env,
        )?;
        Ok(Some(Sealer::new(current, previous)))
    }

    /// This replica's name: the config's, else `PALISADE_REPLICA`, else the host name. A
    /// name from the environment that is not one is said, and the next source is used.
    pub(crate) fn replica_name(&self) -> String {
        if let Some(name) = &self.replica {
            return name.clone();
        }
        match std::env::var("PALISADE_REPLICA") {
            Ok(name) if valid_replica(&name) => return name,
            Ok(_) => tracing::warn!(
                "PALISADE_REPLICA is not a replica name ({REPLICA_FORMAT}); using the host name"
            ),
            Err(_) => {}
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        if valid_replica(host) {
            host.to_owned()
        } else {
            format!("pid-{}", std::process::id())
        }
    }
}

const REPLICA_FORMAT: &str = "a replica name is 1-63 letters, digits, '.', '_' or '-'";

fn valid_replica(name: &str) -> bool {
    (1..=MAX_REPLICA_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names() {
        for ok in ["r1", "gw-0.eu_west", &"a".repeat(63)] {
            assert!(valid_replica(ok), "{ok}");
        }
        for bad in ["", "a b", "r/1", "ré", &"a".repeat(64)] {
            assert!(!valid_replica(bad), "{bad}");
        }
        let named = Fleet {
            replica: Some("r7".into()),
            ..Fleet::default()
        };
        assert_eq!(named.replica_name(), "r7");
        let host = Fleet::default().replica_name();
        assert!(valid_replica(&host), "{host}");
    }
}
