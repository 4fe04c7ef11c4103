//! The audit log as its users see it: [`AuditLog`], the handle every append goes through (durable
//! or deferred), its [`AuditConfig`], and the [`Sink`] a writer thread owns. How appends become
//! durable is the writer's business (`writer.rs`).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use tokio::sync::{mpsc, oneshot};

use crate::chain::Chain;
use crate::writer::Writer;
use crate::{AuditError, Record};

/// Writer configuration.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Directory holding the trail's files (file sink only).
    pub dir: PathBuf,
    /// Rotate once the current file reaches this many bytes.
    pub max_file_bytes: u64,
    /// Write a signed checkpoint after this many records (0 = only at rotation and close).
    pub checkpoint_every: u64,
    /// Replica id, written into records whose `replica` is empty.
    pub replica: String,
    /// Channel depth (callers wait when it is full).
    pub queue_depth: usize,
    /// Most records in one group commit.
    pub max_batch: usize,
    /// Also write a checkpoint when records are pending and this much time has passed.
    pub checkpoint_interval: Option<Duration>,
    /// Also rotate a non-empty file once it is this old.
    pub max_file_age: Option<Duration>,
    /// Longest a deferred record waits for a sync when no durable append comes along.
    pub max_defer: Duration,
    /// Most deferred records kept for rewriting while the sink is failing.
    pub max_deferred: usize,
}

impl AuditConfig {
    /// Defaults: 64 MiB or one-day files, a checkpoint every 1000 records or 60 s, deferred
    /// records durable within 10 ms.
    pub fn new(dir: impl Into<PathBuf>, replica: &str) -> Self {
        AuditConfig {
            dir: dir.into(),
            max_file_bytes: 64 << 20,
            checkpoint_every: 1000,
            replica: replica.to_owned(),
            queue_depth: 4096,
            max_batch: 1024,
            checkpoint_interval: Some(Duration::from_secs(60)),
            max_file_age: Some(Duration::from_secs(24 * 3600)),
            max_defer: Duration::from_millis(10),
            max_deferred: 100_000,
        }
    }

    /// For sinks that never rotate (a database table, a stream).
    pub fn without_rotation(mut self) -> Self {
        self.max_file_bytes = u64::MAX;
        self.max_file_age = None;
        self
    }
}

/// Where the writer puts bytes: whole lines, each ending in `\n`. [`crate::FileSink`] is the
/// default; tests inject faults through this trait.
pub trait Sink: Send + 'static {
    /// Bytes in the current file known to be written.
    fn len(&self) -> u64;
    /// Whether the current file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Append `buf` (whole lines) to the current file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Make everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Cut the current file back to `len` bytes, durably (after a failed batch).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// After a failed `sync`: whether the sink kept what was written, because the failure
    /// left its fate unknown (a database connection lost during a commit: the rows may have
    /// landed), and will store it before anything else, exactly once. The writer then keeps
    /// those records in its chain; the durable appends among them still fail (their calls are
    /// refused), so the trail may hold a BEGIN whose call never ran, never the reverse.
    fn kept(&self) -> bool {
        false
    }
    /// Start a new file whose first record will have `first_seq`.
    fn rotate(&mut self, first_seq: u64) -> io::Result<()>;
    /// The trail is closed: release what the sink holds (a file's preallocated space).
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) type Ack = oneshot::Sender<Result<(), AuditError>>;

pub(super) enum Msg {
    /// A record; with an ack it is a durable append, without one a deferred append.
    Append(Box<Record>, Option<Ack>),
    Close(Ack),
    /// Time-based checkpoint and rotation.
    Tick,
    /// Deferred records wait in the shared buffer.
    Nudge,
}

/// Handle to one audit writer. Cheap to clone; all clones feed the same writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    /// Deferred records for the writer to pick up; only the first one wakes it.
    shared: Arc<Mutex<Vec<Record>>>,
    /// Most deferred records buffered before appends wait for the writer.
    depth: usize,
    public_key: [u8; 32],
    name: String,
}

impl AuditLog {
    /// Start a writer on `sink`, continuing `chain`. `signing_seed` is the Ed25519 private seed
    /// for checkpoints; `name` says which sink this is in errors and logs.
    pub fn start(
        cfg: AuditConfig,
        signing_seed: &[u8; 32],
        sink: Box<dyn Sink>,
        chain: Chain,
        name: &str,
    ) -> Result<Self, AuditError> {
        let key = Ed25519KeyPair::from_seed_unchecked(signing_seed)
            .map_err(|e| AuditError::Config(format!("bad signing key: {e}")))?;
        let mut public_key = [0u8; 32];
        let pk = key.public_key().as_ref();
        if pk.len() != 32 {
            return Err(AuditError::Config("unexpected public key length".into()));
        }
        public_key.copy_from_slice(pk);
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
        let shared = Arc::new(Mutex::new(Vec::new()));
        let depth = cfg.queue_depth.max(1);
        let period = [cfg.checkpoint_interval, cfg.max_file_age]
            .into_iter()
            .flatten()
            .min()
            .map(|p| (p / 4).max(Duration::from_millis(10)));
        let writer = Writer::new(sink, name, chain, key, cfg, shared.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("palisade-audit-writer".into())
            .spawn(move || writer.run(rx, &runtime))?;
        if let Some(period) = period {
            let weak = tx.downgrade();
            std::thread::Builder::new()
                .name("palisade-audit-tick".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(period);
                        match weak.upgrade() {
                            Some(tx) if !tx.is_closed() => {
                                let _ = tx.try_send(Msg::Tick);
                            }
                            _ => return,
                        }
                    }
                })?;
        }
        Ok(AuditLog {
            tx,
            shared,
            depth,
            public_key,
            name: name.to_owned(),
        })
    }

    /// Which sink this writer feeds (`file`, `postgres`, `stdout`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ed25519 public key that verifies this trail's checkpoints (publish it).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Append a record; returns only once it is durable. On `Err` the caller must fail closed
    /// (not forward the call).
    pub async fn append(&self, record: Record) -> Result<(), AuditError> {
        let (ack, wait) = oneshot::channel();
        self.send(Msg::Append(Box::new(record), Some(ack))).await?;
        wait.await
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?
    }

    /// Queue a record that nothing waits for: it becomes durable with the next durable batch,
    /// or within `max_defer`. Errors only if the writer has stopped.
    pub async fn append_deferred(&self, record: Record) -> Result<(), AuditError> {
        if self.tx.is_closed() {
            return Err(AuditError::Unavailable("audit writer is closed".into()));
        }
        let queued = {
            let mut buffer = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.len() < self.depth {
                buffer.push(record);
                Ok(buffer.len() == 1)
            } else {
                Err(record)
            }
        };
        match queued {
            // The first record starts the writer's clock; the rest need not wake it.
            Ok(first) => {
                if first {
                    let _ = self.tx.try_send(Msg::Nudge);
                }
                Ok(())
            }
            // The buffer is full (the sink is slow or failing): wait for room like any append.
            Err(record) => self.send(Msg::Append(Box::new(record), None)).await,
        }
    }

    /// Write pending records and a signed `close` checkpoint, then stop the writer.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (ack, wait) = oneshot::channel();
        self.send(Msg::Close(ack)).await?;
        wait.await
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?
    }

    async fn send(&self, msg: Msg) -> Result<(), AuditError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| AuditError::Unavailable("audit writer is closed".into()))
    }
}
