//! The replicas sharing this store: one heartbeat row each, written outside the registry's
//! revision (a heartbeat is not a change anyone reloads for). Rows of replicas silent for a
//! day are pruned by the next heartbeat, so the table stays as small as the fleet.

use serde::Serialize;
use sqlx::Row;

use crate::error::StoreError;
use crate::store::Store;

/// How long a silent replica's row is kept (ms).
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// One replica as it last said. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaRecord {
    pub name: String,
    /// The gateway's version.
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// Open client sessions on it.
    pub sessions: i64,
    /// What its `/readyz` says (`ready`, `degraded: …`, `leaving: …`, `stopped`).
    pub health: String,
}

impl Store {
    /// Writes `replica`'s heartbeat (inserted, or replacing its last), and forgets replicas
    /// silent for a day.
    pub async fn heartbeat(&self, replica: &ReplicaRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replicas (name, version, started_at, heartbeat_at, sessions, health) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             sessions = excluded.sessions, health = excluded.health",
        )
        .bind(&replica.name)
        .bind(&replica.version)
        .bind(replica.started_at)
        .bind(replica.heartbeat_at)
        .bind(replica.sessions)
        .bind(&replica.health)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1")
            .bind(replica.heartbeat_at.saturating_sub(FORGET_AFTER_MS))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every replica heard from within a day, by name.
    pub async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        sqlx::query(
            "SELECT name, version, started_at, heartbeat_at, sessions, health FROM replicas \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(ReplicaRecord {
                name: row.try_get("name")?,
                version: row.try_get("version")?,
                started_at: row.try_get("started_at")?,
                heartbeat_at: row.try_get("heartbeat_at")?,
                sessions: row.try_get("sessions")?,
                health: row.try_get("health")?,
            })
        })
        .collect()
    }
}
