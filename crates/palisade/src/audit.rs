//! The gateway's audit trail (docs/ARCHITECTURE.md, invariants 3 and 4): a BEGIN record,
//! durable before a call reaches its upstream; an END record with its outcome; a DENIED record
//! when policy refuses it; ADMIN records for changes made through the admin API. Records go to
//! every configured sink of [`palisade_audit`] (hash-chained, signed JSONL files by default; a
//! PostgreSQL table; stdout), each with its own writer and chain.
//!
//! Invariants: arguments never appear in the trail, only their keyed fingerprint; subjects are
//! keyed hashes unless `[audit] plain_subjects` says they are not personal; if a BEGIN cannot be
//! made durable, the call is refused (the caller fails closed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use palisade_audit::{
    AuditConfig, AuditError, AuditLog, Chain, Fingerprinter, Kind, PgSink, Record, StreamSink,
};
use palisade_ids::TenantId;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::apikey::{PepperError, key_material};
use crate::config::{AuditSink, Config};

const MIN_KEY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuditSetupError {
    #[error("[audit] key: {0}")]
    Key(#[from] PepperError),
    #[error(
        "[audit] key must be at least {MIN_KEY} bytes; generate one with `head -c 48 /dev/urandom | base64 > audit.key`"
    )]
    TooShort,
    #[error("cannot create the audit key {path}: {source}")]
    CreateKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit trail: {0}")]
    Log(#[from] AuditError),
    #[error(
        "[audit] sinks has \"postgres\" but neither postgres_url nor the variable postgres_url_env names is set"
    )]
    NoPostgresUrl,
}

/// The keys the trail uses, all derived from one secret.
pub struct AuditKeys {
    pub(crate) signing_seed: [u8; 32],
    fingerprint: [u8; 32],
    subject: [u8; 32],
    pub key_id: String,
}

impl AuditKeys {
    fn derive(material: &[u8]) -> AuditKeys {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(label);
            h.update(material);
            h.finalize().into()
        };
        AuditKeys {
            signing_seed: derive(b"palisade audit signing v1\0"),
            fingerprint: derive(b"palisade audit fingerprint v1\0"),
            subject: derive(b"palisade audit subject v1\0"),
            key_id: hex::encode(&derive(b"palisade audit key id v1\0")[..4]),
        }
    }

    /// The configured key, or one generated on first start in the data directory (0600).
    pub fn load(config: &Config, data_dir: &Path) -> Result<AuditKeys, AuditSetupError> {
        let material = match key_material(
            config.audit.key_file.as_deref(),
            config.audit.key_env.as_deref(),
        )? {
            Some(m) => m,
            None => generated_key(&data_dir.join("audit.key"))?,
        };
        if material.len() < MIN_KEY {
            return Err(AuditSetupError::TooShort);
        }
        Ok(AuditKeys::derive(&material))
    }

    /// The fingerprinter the gateway uses: `palisade audit find` computes the same hashes.
    pub fn fingerprinter(&self) -> Fingerprinter {
        Fingerprinter::new(self.fingerprint, &self.key_id)
    }

    /// The Ed25519 public key that verifies checkpoints.
    pub fn public_key(&self) -> Result<Vec<u8>, AuditError> {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
        Ed25519KeyPair::from_seed_unchecked(&self.signing_seed)
            .map(|k| k.public_key().as_ref().to_vec())
            .map_err(|_| AuditError::Config("the audit key does not make a signing key".into()))
    }
}

fn generated_key(path: &Path) -> Result<Vec<u8>, AuditSetupError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(existing) = std::fs::read(path) {
        return Ok(existing);
    }
    let create = |source| AuditSetupError::CreateKey {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    let mut key = [0u8; 48];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    f.write_all(&key)
        .and_then(|()| f.sync_all())
        .map_err(create)?;
    Ok(key.to_vec())
}

/// Where the trail's files live: `[audit] dir`, default `<data>/audit`.
pub fn audit_dir(config: &Config, data_dir: &Path) -> PathBuf {
    data_dir.join(
        config
            .audit
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("audit")),
    )
}

/// Who called what: the identity fields of a call's records.
#[derive(Clone)]
pub struct CallFacts {
    pub tenant: TenantId,
    pub subject: Arc<str>,
    pub session: Option<Arc<str>>,
    pub method: String,
    pub server: Arc<str>,
    /// The tool or prompt name, or the resource URI, as the upstream knows it.
    pub target: String,
}

/// An admin API write, for its ADMIN record.
pub(crate) struct AdminChange {
    /// The tenant the change is about (`-` for none).
    pub tenant: String,
    /// Who made it: an admin key's id or a token's `<sub>@<issuer>` (recorded as a keyed hash
    /// unless subjects are plain).
    pub principal: String,
    /// `admin ` and the HTTP method, e.g. `admin PUT`.
    pub method: String,
    /// The object: the path below `/admin/v1/` (names, key ids, session handles; no values).
    pub target: String,
}

pub struct Auditor {
    /// One writer per sink; a BEGIN is durable once every one has it.
    logs: Vec<AuditLog>,
    fingerprints: Fingerprinter,
    subject_key: [u8; 32],
    plain_subjects: bool,
}

impl Auditor {
    pub fn open(config: &Config, data_dir: &Path) -> Result<Auditor, AuditSetupError> {
        let keys = AuditKeys::load(config, data_dir)?;
        let replica = config
            .audit
            .replica
            .clone()
            .unwrap_or_else(|| format!("pid-{}", std::process::id()));
        let mut cfg = AuditConfig::new(audit_dir(config, data_dir), &replica);
        if let Some(bytes) = config.audit.max_file_bytes {
            cfg.max_file_bytes = bytes;
        }
        let mut logs = Vec::new();
        for sink in &config.audit.sinks {
            logs.push(match sink {
                AuditSink::File => AuditLog::open(cfg.clone(), &keys.signing_seed)?,
                AuditSink::Stdout => AuditLog::start(
                    cfg.clone().without_rotation(),
                    &keys.signing_seed,
                    Box::new(StreamSink::stdout()),
                    Chain::new(),
                    "stdout",
                )?,
                AuditSink::Postgres => {
                    let url = config
                        .audit
                        .postgres_url()
                        .ok_or(AuditSetupError::NoPostgresUrl)?;
                    // Connecting blocks; this runs on a runtime thread at startup.
                    let (sink, chain) =
                        std::thread::scope(|s| s.spawn(|| PgSink::connect(&url, &replica)).join())
                            .map_err(|_| {
                                AuditError::Config("the audit database connect panicked".into())
                            })??;
                    AuditLog::start(
                        cfg.clone().without_rotation(),
                        &keys.signing_seed,
                        Box::new(sink),
                        chain,
                        "postgres",
                    )?
                }
            });
        }
        let sinks: Vec<&str> = logs.iter().map(AuditLog::name).collect();
        tracing::info!(
            sinks = %sinks.join(","),
            replica = %replica,
            "audit trail on; checkpoints are signed with the Ed25519 key at /audit/public-key on the admin listener"
        );
        Ok(Auditor {
            logs,
            fingerprints: keys.fingerprinter(),
            subject_key: keys.subject,
            plain_subjects: config.audit.plain_subjects,
        })
    }

    /// The checkpoint-signing public key, base64 (what `/audit/public-key` publishes).
    pub(crate) fn public_key_base64(&self) -> String {
        use base64::Engine as _;
        let key = self
            .logs
            .first()
            .map(AuditLog::public_key)
            .unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    fn subject(&self, subject: &str) -> String {
        if self.plain_subjects {
            return subject.to_owned();
        }
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.subject_key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(subject.as_bytes());
        format!("h:{}", hex::encode(&mac.finalize().into_bytes()[..16]))
    }

    fn record(&self, kind: Kind, c: &CallFacts) -> Record {
        let mut r = Record::new(kind, &c.tenant, &self.subject(&c.subject), &c.method);
        // The session id is a bearer capability: only a digest of it is recorded.
        r.session = c
            .session
            .as_ref()
            .map(|s| hex::encode(&Sha256::digest(s.as_bytes())[..8]));
        r.server = Some(c.server.to_string());
        r.target = Some(c.target.clone());
        r
    }

    /// Adds the arguments' fingerprint to `r`; fails rather than fingerprint anything other than
    /// what was sent. (The front door refuses messages nested deeper than this parser accepts,
    /// so it fails only if that check is bypassed.)
    fn fingerprint(
        &self,
        r: &mut Record,
        c: &CallFacts,
        args: Option<&RawValue>,
    ) -> Result<(), AuditError> {
        let Some(args) = args else { return Ok(()) };
        let value: serde_json::Value = serde_json::from_str(args.get()).map_err(|e| {
            AuditError::Encode(format!("the arguments cannot be fingerprinted: {e}"))
        })?;
        let (key_id, fingerprint) = self.fingerprints.fingerprint(&c.tenant, &value);
        r.args_fingerprint = Some(fingerprint);
        r.key_id = Some(key_id);
        r.args_bytes = Some(args.get().len() as u64);
        Ok(())
    }

    /// Writes the BEGIN record and waits until it is durable; its id ties END to it.
    pub async fn begin(
        &self,
        c: &CallFacts,
        args: Option<&RawValue>,
    ) -> Result<String, AuditError> {
        let mut r = self.record(Kind::Begin, c);
        self.fingerprint(&mut r, c, args)?;
        r.decision = Some("allowed".into());
        let id = r.id.clone();
        self.append_durable(r).await?;
        Ok(id)
    }

    /// Appends to every sink and waits until all have the record.
    async fn append_durable(&self, r: Record) -> Result<(), AuditError> {
        match self.logs.as_slice() {
            [one] => one.append(r).await,
            many => {
                futures_util::future::try_join_all(many.iter().map(|log| log.append(r.clone())))
                    .await?;
                Ok(())
            }
        }
    }

    /// Queues a record on every sink without waiting for it to be durable.
    async fn append_deferred(&self, r: Record, what: &str) {
        for log in &self.logs {
            if let Err(e) = log.append_deferred(r.clone()).await {
                tracing::error!(error = %e, sink = log.name(), "audit trail: cannot write {what} record");
            }
        }
    }

    /// Queues the END record of a call (its outcome and latency); it becomes durable with the
    /// next BEGIN's batch or within milliseconds.
    pub async fn end(&self, id: String, c: &CallFacts, outcome: &str, latency_us: u64) {
        let mut r = self.record(Kind::End, c);
        r.id = id;
        r.outcome = Some(outcome.to_owned());
        r.latency_us = Some(latency_us);
        self.append_deferred(r, "an END").await;
    }

    /// Writes a DENIED record: the call was refused before reaching its upstream.
    pub async fn denied(&self, c: &CallFacts, args: Option<&RawValue>, reason: &str) {
        let mut r = self.record(Kind::Denied, c);
        if let Err(e) = self.fingerprint(&mut r, c, args) {
            tracing::error!(error = %e, tenant = %c.tenant, "audit trail: a DENIED record is written without its arguments' fingerprint");
        }
        r.decision = Some("denied".into());
        r.outcome = Some(format!("denied: {reason}"));
        self.append_deferred(r, "a DENIED").await;
    }

    /// Writes the ADMIN record of an admin API write and waits until it is durable: the change
    /// is made only then.
    pub(crate) async fn admin_begin(&self, c: &AdminChange) -> Result<String, AuditError> {
        let mut r = Record::new(
            Kind::Admin,
            &c.tenant,
            &self.subject(&c.principal),
            &c.method,
        );
        r.server = Some("admin".into());
        r.target = Some(c.target.clone());
        r.decision = Some("allowed".into());
        let id = r.id.clone();
        self.append_durable(r).await?;
        Ok(id)
    }

    /// Queues the END record of an admin write: its outcome (`ok` or `http <status>`).
    pub(crate) async fn admin_end(
        &self,
        id: String,
        c: &AdminChange,
        outcome: &str,
        latency_us: u64,
    ) {
        let mut r = Record::new(Kind::End, &c.tenant, &self.subject(&c.principal), &c.method);
        r.id = id;
        r.server = Some("admin".into());
        r.target = Some(c.target.clone());
        r.outcome = Some(outcome.to_owned());
        r.latency_us = Some(latency_us);
        self.append_deferred(r, "an admin END").await;
    }

    /// Closes the trail with a signed checkpoint (shutdown).
    pub async fn close(&self) {
        for log in &self.logs {
            if let Err(e) = log.close().await {
                tracing::error!(error = %e, sink = log.name(), "audit trail: cannot write the closing checkpoint");
            }
        }
    }
}
