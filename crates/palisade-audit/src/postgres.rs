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
//! answer to a commit is lost (the connection drops while PostgreSQL commits, or it crashes),
//! the sink cannot know whether the rows landed, so it keeps them ([`Sink::kept`]) and, once
//! connected again, reads the table: rows that are exactly the kept lines mean the commit
//! landed; no rows past what it confirmed mean it did not, and the kept lines go first in the
//! next INSERT. Either way each line is stored once, in chain order, with no restart. Anything
//! else means another writer: the sink stays unavailable with an error saying to restart
//! (which resumes the chain from the table).

use std::io;
use std::sync::Arc;

use sqlx::postgres::PgConnection;
use sqlx::{Connection as _, Row as _};

use crate::chain::{Chain, split_line};
use crate::checkpoint::CheckpointLine;
use crate::log::Sink;
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
    /// Lines sent in a commit whose answer was lost, from `next_pos` on: stored before any
    /// other once connected again, unless the table shows they landed.
    in_doubt: Vec<String>,
    /// The last failed `sync` kept its lines in `in_doubt`.
    kept: bool,
    /// The table holds rows this writer did not write: stop until restarted.
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
            in_doubt: Vec::new(),
            kept: false,
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

    /// Whether the table's rows from `next_pos` up to `next` are exactly the lines in doubt:
    /// then their commit landed, and they are confirmed.
    async fn landed(&mut self, conn: &mut PgConnection, next: i64) -> Result<bool, AuditError> {
        if self.in_doubt.is_empty() || next != self.next_pos + self.in_doubt.len() as i64 {
            return Ok(false);
        }
        let stored: Vec<String> = sqlx::query_scalar(
            "SELECT line FROM palisade_audit WHERE replica = $1 AND pos >= $2 ORDER BY pos",
        )
        .bind(&self.replica)
        .bind(self.next_pos)
        .fetch_all(conn)
        .await
        .map_err(|e| db_error("cannot read the audit table", &e))?;
        if stored != self.in_doubt {
            return Ok(false);
        }
        self.next_pos = next;
        self.in_doubt.clear();
        Ok(true)
    }

    /// Stores the lines in doubt, then the pending ones, in one transaction. On an error that
    /// leaves the commit's fate unknown, `kept` is set.
    async fn insert(&mut self) -> Result<(), AuditError> {
        if self.conn.is_none() {
            let mut conn = self.open_conn().await?;
            let next = next_pos(&mut conn, &self.replica).await?;
            if next != self.next_pos && !self.landed(&mut conn, next).await? {
                self.diverged = true;
            }
            self.conn = Some(conn);
        }
        if self.diverged {
            return Err(AuditError::Unavailable(
                "the audit table holds rows this gateway did not write: is another gateway \
                 writing with the same [audit] replica? Restart the gateway to resume the chain \
                 from the table"
                    .into(),
            ));
        }
        let lines: Vec<&String> = self.in_doubt.iter().chain(&self.pending).collect();
        let n = lines.len();
        let mut pos = Vec::with_capacity(n);
        let (mut seqs, mut kinds, mut tenants) = (Vec::new(), Vec::new(), Vec::new());
        let (mut times, mut targets, mut fingerprints) = (Vec::new(), Vec::new(), Vec::new());
        for (i, line) in lines.iter().enumerate() {
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
        .bind(&lines)
        .execute(conn)
        .await;
        match res {
            Ok(_) => {
                self.next_pos += n as i64;
                self.in_doubt.clear();
                Ok(())
            }
            Err(e) => {
                // Reconnect next time: the connection's state is unknown. PostgreSQL's own
                // refusal rolled the transaction back; any other failure may have come after
                // the commit.
                self.conn = None;
                self.kept = !matches!(e, sqlx::Error::Database(_));
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
        // `kept` speaks of the last sync only.
        self.kept = false;
        let text = std::str::from_utf8(buf).map_err(io::Error::other)?;
        self.pending
            .extend(text.split_terminator('\n').map(str::to_owned));
        self.pending_bytes += buf.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.kept = false;
        if self.pending.is_empty() {
            return Ok(());
        }
        let runtime = self.runtime.clone();
        if let Err(e) = runtime.block_on(self.insert()) {
            if self.kept {
                self.in_doubt.append(&mut self.pending);
                self.committed_bytes += self.pending_bytes;
                self.pending_bytes = 0;
            }
            return Err(io::Error::other(e.to_string()));
        }
        self.committed_bytes += self.pending_bytes;
        self.pending_bytes = 0;
        self.pending.clear();
        Ok(())
    }
    fn kept(&self) -> bool {
        self.kept
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

#[cfg(test)]
mod tests {
    use sqlx::Executor as _;

    use super::*;
    use crate::Kind;

    /// A database of its own on the test server, with the table and the writer role, dropped
    /// at the end; `None` where no server is given (under `CI=true`, a failure).
    struct Db {
        admin: String,
        name: String,
        runtime: tokio::runtime::Runtime,
    }

    impl Db {
        fn create() -> Option<Db> {
            let Ok(admin) = std::env::var("PALISADE_TEST_POSTGRES_URL") else {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "PALISADE_TEST_POSTGRES_URL is not set"
                );
                eprintln!("skipped: PALISADE_TEST_POSTGRES_URL is not set");
                return None;
            };
            let name = format!("audit_sink_{}", &crate::new_uuid_v7()[24..]);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let db = Db {
                admin,
                name,
                runtime,
            };
            db.runtime.block_on(async {
                let mut conn = PgConnection::connect(&db.admin).await.unwrap();
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", db.name)))
                    .await
                    .unwrap();
                install(&db.url("postgres"), "palisade_audit_unit")
                    .await
                    .unwrap();
            });
            Some(db)
        }

        /// The test database as `user`.
        fn url(&self, user: &str) -> String {
            let (scheme_user, rest) = self.admin.split_once('@').unwrap();
            let scheme = &scheme_user[..scheme_user.find("://").unwrap() + 3];
            let host = &rest[..rest.rfind('/').unwrap()];
            format!("{scheme}{user}@{host}/{}", self.name)
        }

        fn lines(&self) -> Vec<String> {
            self.runtime.block_on(async {
                read_chains(&self.url("postgres"))
                    .await
                    .unwrap()
                    .into_iter()
                    .flat_map(|(_, lines)| lines)
                    .collect()
            })
        }
    }

    impl Drop for Db {
        fn drop(&mut self) {
            let (admin, name) = (self.admin.clone(), self.name.clone());
            self.runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        }
    }

    /// A commit whose answer was lost is stored exactly once, in order, whether it landed or
    /// not, and the sink goes on without a restart; rows it did not write stop it.
    #[test]
    fn a_commit_whose_answer_was_lost_is_stored_once() {
        let Some(db) = Db::create() else {
            return;
        };
        let (mut sink, mut chain) = PgSink::connect(&db.url("palisade_audit_unit"), "r1").unwrap();
        let mut line = |tenant: &str| {
            let mut r = Record::new(Kind::Begin, tenant, "s", "tools/call");
            r.replica = "r1".into();
            chain.append(&mut r).unwrap()
        };
        let write = |sink: &mut PgSink, lines: &[&String]| {
            for l in lines {
                sink.write_all(format!("{l}\n").as_bytes()).unwrap();
            }
            sink.sync()
        };
        let (a, b, c, d, e, f) = (
            line("a"),
            line("b"),
            line("c"),
            line("d"),
            line("e"),
            line("f"),
        );
        write(&mut sink, &[&a, &b]).unwrap();
        // The commit of a and b landed, but its answer was lost.
        sink.next_pos -= 2;
        sink.in_doubt = vec![a.clone(), b.clone()];
        sink.conn = None;
        write(&mut sink, &[&c]).unwrap();
        assert_eq!(db.lines(), [a.clone(), b.clone(), c.clone()]);
        // The commit of d did not land.
        sink.in_doubt = vec![d.clone()];
        sink.conn = None;
        write(&mut sink, &[&e]).unwrap();
        assert_eq!(db.lines(), [a, b, c, d, e]);
        // The table holds a row the sink did not write where it expects its own.
        sink.next_pos -= 1;
        sink.in_doubt = vec![f.clone()];
        sink.conn = None;
        let refused = write(&mut sink, &[&f]).unwrap_err().to_string();
        assert!(refused.contains("did not write"), "{refused}");
        assert!(!sink.kept());
    }
}
