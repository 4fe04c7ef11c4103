//! `[fleet]`: this gateway among the replicas that share one registry store.

use serde::Deserialize;

use super::Problems;

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
}

impl Fleet {
    pub(super) fn check(&self, problems: &mut Problems) {
        if let Some(name) = &self.replica
            && !valid_replica(name)
        {
            problems.add("fleet.replica", REPLICA_FORMAT);
        }
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
        };
        assert_eq!(named.replica_name(), "r7");
        let host = Fleet::default().replica_name();
        assert!(valid_replica(&host), "{host}");
    }
}
