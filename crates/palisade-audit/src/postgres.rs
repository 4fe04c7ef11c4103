//! The PostgreSQL sink: the trail as rows of an append-only table, one chain per replica.
//!
//! Table `palisade_audit` (made by [`install`], run once with an administrator's connection):
//! one row per stored line, keyed by `(replica, pos)`, with the line's exact bytes in `line`
//! and, beside them for lookups, `seq`, `kind`, `tenant`, `time`, `target` and
//! `args_fingerprint`. Triggers refuse UPDATE, DELETE and TRUNCATE, and the writer's role is
//! granted INSERT and SELECT only; [`PgSink::connect`] refuses a role that could change rows.
//!
//! A batch is one INSERT (one transaction): durable when PostgreSQL commits it. An advisory lock
//! per replica keeps two gateways with the same replica name from writing one chain. If the
//! answer to a commit is lost (the connection drops), the writer cannot know whether the rows
//! landed; on reconnecting it compares the table with what it confirmed and, if they differ,
//! stays unavailable with an error saying to restart (which resumes the chain from the table).

use std::io;
use std::sync::Arc;

use sqlx::postgres::PgConnection;
use sqlx::{Connection as _, Row as _};

use crate::chain::{Chain, split_line};
use crate::writer::{CheckpointLine, Sink};
use crate::{AuditError, Record};

/// Creates the table, its append-only triggers and the writer role (INSERT and SELECT only).
/// `role` must be a plain identifier; it is made with LOGIN if it does not exist.
pub async fn install(admin_url: &str, role: &str) -> Result<(), AuditError> {
    if role.is_empty()
        || !role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || role.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(AuditError::Config(format!(
            "role name {role:?}: use lowercase letters, digits and _"
        )));
    }
    let mut conn = connect_url(admin_url).await?;
    let statements = [
        "CREATE TABLE IF NOT EXISTS palisade_audit (
            replica text NOT NULL,
            pos bigint NOT NULL,
            seq bigint NOT NULL,
            kind text NOT NULL,
            tenant text,
            time text NOT NULL,
            target text,
            args_fingerprint text,
            line text NOT NULL,
            PRIMARY KEY (replica, pos))"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS palisade_audit_tenant_time ON palisade_audit (tenant, time)"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS palisade_audit_fingerprint ON palisade_audit \
         (args_fingerprint) WHERE args_fingerprint IS NOT NULL"
            .to_owned(),
        "CREATE OR REPLACE FUNCTION palisade_audit_append_only() RETURNS trigger \
         LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'palisade_audit is append-only: % refused', TG_OP; END $$"
            .to_owned(),
        "CREATE OR REPLACE TRIGGER palisade_audit_no_change BEFORE UPDATE OR DELETE \
         ON palisade_audit FOR EACH ROW EXECUTE FUNCTION palisade_audit_append_only()"
            .to_owned(),
        "CREATE OR REPLACE TRIGGER palisade_audit_no_truncate BEFORE TRUNCATE \
         ON palisade_audit FOR EACH STATEMENT EXECUTE FUNCTION palisade_audit_append_only()"
            .to_owned(),
        format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') \
             THEN CREATE ROLE {role} LOGIN; END IF; END $$"
        ),
        format!("REVOKE ALL ON palisade_audit FROM {role}"),
        format!("GRANT SELECT, INSERT ON palisade_audit TO {role}"),
    ];
    for sql in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map_err(|e| db_error("cannot install the audit table", &e))?;
    }
    Ok(())
}

async fn connect_url(url: &str) -> Result<PgConnection, AuditError> {
    // The URL may hold a password: errors name the failure, never the URL.
    PgConnection::connect(url)
        .await
        .map_err(|e| db_error("cannot connect to the audit database", &e))
}

fn db_error(what: &str, e: &sqlx::Error) -> AuditError {
    let detail = match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        other => other.to_string(),
    };
    AuditError::Unavailable(format!("{what}: {detail}"))
}

/// Every replica's stored lines, each chain in order (for verify, tail, find, export).
pub async fn read_chains(url: &str) -> Result<Vec<(String, Vec<String>)>, AuditError> {
    let mut conn = connect_url(url).await?;
    let rows = sqlx::query("SELECT replica, line FROM palisade_audit ORDER BY replica, pos")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| db_error("cannot read the audit table", &e))?;
    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    for row in rows {
        let replica: String = row.try_get(0).map_err(|e| db_error("bad row", &e))?;
        let line: String = row.try_get(1).map_err(|e| db_error("bad row", &e))?;
        match chains.last_mut() {
            Some((r, lines)) if *r == replica => lines.push(line),
            _ => chains.push((replica, vec![line])),
        }
    }
    Ok(chains)
}

/// Position of the row after the last of `replica`'s chain.
async fn next_pos(conn: &mut PgConnection, replica: &str) -> Result<i64, AuditError> {
    sqlx::query_scalar("SELECT COALESCE(max(pos), 0) + 1 FROM palisade_audit WHERE replica = $1")
        .bind(replica)
        .fetch_one(conn)
        .await
        .map_err(|e| db_error("cannot read the audit table", &e))
}

/// How often [`PgSink`] tries for its replica's lock, 100 ms apart.
const LOCK_ATTEMPTS: u32 = 50;

/// The columns stored beside a line.
struct RowFacts {
    seq: i64,
    kind: String,
    tenant: Option<String>,
    time: String,
    target: Option<String>,
    fingerprint: Option<String>,
}

fn facts(line: &str) -> io::Result<RowFacts> {
    let bad = |e: serde_json::Error| io::Error::other(format!("unreadable audit line: {e}"));
    if line.starts_with("{\"checkpoint\"") {
        let c: CheckpointLine = serde_json::from_str(line).map_err(bad)?;
        return Ok(RowFacts {
            seq: c.checkpoint.seq as i64,
            kind: "checkpoint".into(),
            tenant: None,
            time: c.checkpoint.time,
            target: None,
            fingerprint: None,
        });
    }
    let r: Record = serde_json::from_str(line).map_err(bad)?;
    Ok(RowFacts {
        seq: r.seq as i64,
        kind: serde_json::to_value(r.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        tenant: Some(r.tenant),
        time: r.time,
        target: r.target,
        fingerprint: r.args_fingerprint,
    })
}

/// Rows in `palisade_audit` for one replica's chain.
pub struct PgSink {
    /// Its own runtime: the writer thread is not a runtime thread.
    runtime: Arc<tokio::runtime::Runtime>,
    url: String,
    replica: String,
    conn: Option<PgConnection>,
    /// Lines written but not committed.
    pending: Vec<String>,
    pending_bytes: u64,
    committed_bytes: u64,
    /// Position of the next row.
    next_pos: i64,
    /// The table holds rows this writer did not confirm: stop until restarted.
    diverged: bool,
}

impl PgSink {
    /// Connect, take the replica's lock and find where its chain ends: `(sink, last stored
    /// record's seq and hash)`. Blocking: call it outside an async runtime's thread.
    pub fn connect(url: &str, replica: &str) -> Result<(PgSink, Chain), AuditError> {
        let runtime = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
        let mut sink = PgSink {
            runtime,
            url: url.to_owned(),
            replica: replica.to_owned(),
            conn: None,
            pending: Vec::new(),
            pending_bytes: 0,
            committed_bytes: 0,
            next_pos: 1,
            diverged: false,
        };
        let runtime = sink.runtime.clone();
        let head = runtime.block_on(async {
            let mut conn = sink.open_conn().await?;
            let next = next_pos(&mut conn, &sink.replica).await?;
            let last: Option<String> = sqlx::query_scalar(
                "SELECT line FROM palisade_audit WHERE replica = $1 AND kind <> 'checkpoint' \
                 ORDER BY pos DESC LIMIT 1",
            )
            .bind(&sink.replica)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| db_error("cannot read the audit table", &e))?;
            let checkpoint: Option<i64> = sqlx::query_scalar(
                "SELECT max(seq) FROM palisade_audit WHERE replica = $1 AND kind = 'checkpoint'",
            )
            .bind(&sink.replica)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| db_error("cannot read the audit table", &e))?;
            sink.next_pos = next;
            sink.conn = Some(conn);
            Ok::<_, AuditError>((last, checkpoint))
        })?;
        let (head, checkpoint) = head;
        let checkpoint = checkpoint.map_or(0, |seq| seq as u64);
        let chain = match head {
            None => Chain::new(),
            Some(line) => {
                let rec: Record = serde_json::from_str(&line).map_err(|e| {
                    AuditError::Config(format!(
                        "the last audit row of {replica} is not a record: {e}"
                    ))
                })?;
                let mut h = [0u8; 32];
                let hash = split_line(&line).map(|(_, h)| h).unwrap_or_default();
                hex::decode_to_slice(hash, &mut h).map_err(|e| {
                    AuditError::Config(format!(
                        "the last audit row of {replica} has a bad hash: {e}"
                    ))
                })?;
                Chain::resume(rec.seq, h, checkpoint)
            }
        };
        Ok((sink, chain))
    }

    /// A connection that holds this replica's lock, on a role that cannot change rows.
    async fn open_conn(&self) -> Result<PgConnection, AuditError> {
        let mut conn = connect_url(&self.url).await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('palisade_audit') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| db_error("cannot read the audit database", &e))?;
        if !exists {
            return Err(AuditError::Config(
                "no palisade_audit table in the audit database: run `palisade audit \
                 init-postgres --database-url <an administrator's URL>` once"
                    .into(),
            ));
        }
        let can_change: bool = sqlx::query_scalar(
            "SELECT has_table_privilege(current_user, 'palisade_audit', 'UPDATE') \
             OR has_table_privilege(current_user, 'palisade_audit', 'DELETE') \
             OR has_table_privilege(current_user, 'palisade_audit', 'TRUNCATE')",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| db_error("cannot check the audit role", &e))?;
        if can_change {
            return Err(AuditError::Config(
                "the audit database role may update or delete audit rows: connect as the role \
                 made by `palisade audit init-postgres` (INSERT and SELECT only)"
                    .into(),
            ));
        }
        // A replica killed a moment ago holds the lock until the server notices its
        // connection is gone: wait a little before calling the name taken.
        for attempt in 0..LOCK_ATTEMPTS {
            let locked: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtext('palisade_audit'), hashtext($1))",
            )
            .bind(&self.replica)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| db_error("cannot lock the audit chain", &e))?;
            if locked {
                return Ok(conn);
            }
            if attempt + 1 < LOCK_ATTEMPTS {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Err(AuditError::Config(format!(
            "another gateway writes the audit chain of replica {:?}: give each replica its \
             own [audit] replica name",
            self.replica
        )))
    }

    async fn insert(&mut self) -> Result<(), AuditError> {
        if self.conn.is_none() {
            let mut conn = self.open_conn().await?;
            let next = next_pos(&mut conn, &self.replica).await?;
            if next != self.next_pos {
                self.diverged = true;
            }
            self.conn = Some(conn);
        }
        if self.diverged {
            return Err(AuditError::Unavailable(
                "the audit table holds rows whose commit this gateway did not see confirmed: \
                 restart the gateway to resume the chain from the table"
                    .into(),
            ));
        }
        let n = self.pending.len();
        let mut pos = Vec::with_capacity(n);
        let (mut seqs, mut kinds, mut tenants) = (Vec::new(), Vec::new(), Vec::new());
        let (mut times, mut targets, mut fingerprints) = (Vec::new(), Vec::new(), Vec::new());
        for (i, line) in self.pending.iter().enumerate() {
            let f = facts(line).map_err(|e| AuditError::Encode(e.to_string()))?;
            pos.push(self.next_pos + i as i64);
            seqs.push(f.seq);
            kinds.push(f.kind);
            tenants.push(f.tenant);
            times.push(f.time);
            targets.push(f.target);
            fingerprints.push(f.fingerprint);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(AuditError::Unavailable(
                "audit database not connected".into(),
            ));
        };
        let res = sqlx::query(
            "INSERT INTO palisade_audit \
             (replica, pos, seq, kind, tenant, time, target, args_fingerprint, line) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[])",
        )
        .bind(&self.replica)
        .bind(&pos)
        .bind(&seqs)
        .bind(&kinds)
        .bind(&tenants)
        .bind(&times)
        .bind(&targets)
        .bind(&fingerprints)
        .bind(&self.pending)
        .execute(conn)
        .await;
        match res {
            Ok(_) => {
                self.next_pos += n as i64;
                Ok(())
            }
            Err(e) => {
                // Reconnect next time: the connection's state is unknown.
                self.conn = None;
                Err(db_error("cannot write the audit table", &e))
            }
        }
    }
}

impl Sink for PgSink {
    fn len(&self) -> u64 {
        self.committed_bytes + self.pending_bytes
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let text = std::str::from_utf8(buf).map_err(io::Error::other)?;
        self.pending
            .extend(text.split_terminator('\n').map(str::to_owned));
        self.pending_bytes += buf.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let runtime = self.runtime.clone();
        runtime
            .block_on(self.insert())
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.committed_bytes += self.pending_bytes;
        self.pending_bytes = 0;
        self.pending.clear();
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // Nothing uncommitted ever reaches the table.
        self.pending.clear();
        self.pending_bytes = 0;
        self.committed_bytes = len;
        Ok(())
    }
    fn rotate(&mut self, _first_seq: u64) -> io::Result<()> {
        Ok(())
    }
}
