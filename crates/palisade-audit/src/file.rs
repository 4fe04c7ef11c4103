//! Durable JSONL sink: one writer thread, group commit, fail closed, rotation, checkpoints.
//!
//! Owns the files `audit-<first seq, 20 digits>-<unix ms, 13 digits>.jsonl` in one directory
//! (lexical order = chain order). A single writer thread drains an mpsc channel, writes every
//! pending line, calls `fdatasync` once per batch and only then acks each caller. If writing or
//! syncing fails, every caller in that batch gets [`AuditError::Unavailable`], the chain state is
//! rolled back and the file is truncated back to its last durable length before the next batch
//! (self-healing). Every `checkpoint_every` records, before rotation and at close, a signed line
//! `{"checkpoint":{"seq":N,"hash":"<hex>","time":"…","reason":"periodic|rotate|close"},"sig":"<base64>"}`
//! is written; the signature is Ed25519 over [`Checkpoint::signed_bytes`]. Opening a directory
//! always starts a new file chained from the last stored record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::chain::{Chain, split_line};
use crate::record::now_rfc3339;
use crate::{AuditError, Record};

/// Writer configuration.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Directory holding the trail's files.
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
}

impl AuditConfig {
    /// Defaults: 64 MiB files, a checkpoint every 1000 records.
    pub fn new(dir: impl Into<PathBuf>, replica: &str) -> Self {
        AuditConfig {
            dir: dir.into(),
            max_file_bytes: 64 << 20,
            checkpoint_every: 1000,
            replica: replica.to_owned(),
            queue_depth: 4096,
            max_batch: 1024,
        }
    }
}

/// The signed part of a checkpoint line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Seq of the last record before this checkpoint (0 if none).
    pub seq: u64,
    /// Hex hash of that record (the chain head).
    pub hash: String,
    pub time: String,
    /// `periodic`, `rotate` (last line of a file that has a successor) or `close`.
    pub reason: String,
}

impl Checkpoint {
    /// Bytes covered by the signature: a domain tag, then the checkpoint's compact JSON.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut m = b"palisade-audit checkpoint v1\n".to_vec();
        // Serializing a struct of integers and strings cannot fail.
        m.extend_from_slice(serde_json::to_string(self).unwrap_or_default().as_bytes());
        m
    }
}

/// A stored checkpoint line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointLine {
    pub checkpoint: Checkpoint,
    /// Base64 Ed25519 signature over [`Checkpoint::signed_bytes`].
    pub sig: String,
}

/// Where the writer puts bytes. [`FileSink`] is the real one; tests inject faults through it.
pub trait Sink: Send + 'static {
    /// Bytes in the current file known to be written.
    fn len(&self) -> u64;
    /// Whether the current file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Append `buf` to the current file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Make everything written so far durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Cut the current file back to `len` bytes, durably (after a failed batch).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Start a new file whose first record will have `first_seq`.
    fn rotate(&mut self, first_seq: u64) -> io::Result<()>;
}

/// Append-only JSONL files in one directory.
pub struct FileSink {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    len: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The trail's files in `dir`, in chain order.
pub fn list_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    v.sort();
    Ok(v)
}

impl FileSink {
    /// Create a new file for a trail whose next record is `first_seq`.
    pub fn create(dir: &Path, first_seq: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut ms = now_ms();
        loop {
            let path = dir.join(format!("audit-{first_seq:020}-{ms:013}.jsonl"));
            match OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(file) => {
                    sync_dir(dir)?;
                    return Ok(FileSink {
                        dir: dir.to_owned(),
                        path,
                        file,
                        len: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ms += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Path of the current file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sink for FileSink {
    fn len(&self) -> u64 {
        self.len
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(&self.path)?;
        f.set_len(len)?;
        f.sync_all()?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = len;
        Ok(())
    }
    fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        *self = FileSink::create(&self.dir, first_seq)?;
        Ok(())
    }
}

/// Last stored record `(seq, hash)` in `dir`, ignoring a torn final line; `None` if empty.
fn scan_head(dir: &Path) -> Result<Option<(u64, [u8; 32])>, AuditError> {
    if !dir.exists() {
        return Ok(None);
    }
    for path in list_files(dir)?.iter().rev() {
        let text = String::from_utf8_lossy(&fs::read(path)?).into_owned();
        for line in text.lines().rev() {
            if line.starts_with("{\"checkpoint\"") {
                continue;
            }
            let Some((_, hex_hash)) = split_line(line) else {
                continue;
            };
            let Ok(rec) = serde_json::from_str::<Record>(line) else {
                continue;
            };
            let mut h = [0u8; 32];
            hex::decode_to_slice(hex_hash, &mut h)
                .map_err(|e| AuditError::Config(format!("bad hash in {}: {e}", path.display())))?;
            return Ok(Some((rec.seq, h)));
        }
    }
    Ok(None)
}

type Ack = oneshot::Sender<Result<(), AuditError>>;

enum Msg {
    Append(Box<Record>, Ack),
    Close(Ack),
}

/// Handle to the audit writer. Cheap to clone; all clones feed the same writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    public_key: [u8; 32],
}

impl AuditLog {
    /// Open (or create) the trail in `cfg.dir`, continuing its chain in a new file.
    /// `signing_seed` is the Ed25519 private seed for checkpoints.
    pub fn open(cfg: AuditConfig, signing_seed: &[u8; 32]) -> Result<Self, AuditError> {
        let chain = match scan_head(&cfg.dir)? {
            Some((seq, head)) => Chain::resume(seq, head),
            None => Chain::new(),
        };
        let sink = FileSink::create(&cfg.dir, chain.last_seq() + 1)?;
        Self::with_sink(cfg, signing_seed, Box::new(sink), chain)
    }

    /// Start a writer on any [`Sink`], continuing `chain`.
    pub fn with_sink(
        cfg: AuditConfig,
        signing_seed: &[u8; 32],
        sink: Box<dyn Sink>,
        chain: Chain,
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
        let good_len = sink.len();
        let writer = Writer {
            sink,
            chain,
            key,
            cfg,
            since_checkpoint: 0,
            good_len,
            dirty: false,
        };
        std::thread::Builder::new()
            .name("palisade-audit-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(AuditLog { tx, public_key })
    }

    /// Ed25519 public key that verifies this trail's checkpoints (publish it).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Append a record; returns only once its line is durable. On `Err` the caller must fail
    /// closed (not forward the call).
    pub async fn append(&self, record: Record) -> Result<(), AuditError> {
        let (ack, wait) = oneshot::channel();
        self.tx
            .send(Msg::Append(Box::new(record), ack))
            .await
            .map_err(|_| AuditError::Unavailable("audit writer is closed".into()))?;
        wait.await
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?
    }

    /// Write pending records and a signed `close` checkpoint, then stop the writer.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (ack, wait) = oneshot::channel();
        self.tx
            .send(Msg::Close(ack))
            .await
            .map_err(|_| AuditError::Unavailable("audit writer is closed".into()))?;
        wait.await
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?
    }
}

struct Writer {
    sink: Box<dyn Sink>,
    chain: Chain,
    key: Ed25519KeyPair,
    cfg: AuditConfig,
    since_checkpoint: u64,
    /// File length after the last successful sync.
    good_len: u64,
    /// A failed batch may have left partial bytes after `good_len`.
    dirty: bool,
}

fn unavailable(what: &str, e: &io::Error) -> AuditError {
    AuditError::Unavailable(format!("{what}: {e}"))
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let Some(first) = rx.blocking_recv() else {
                // Every handle dropped: close cleanly.
                let _ = self.close();
                return;
            };
            let mut batch = vec![first];
            while batch.len() < self.cfg.max_batch.max(1) {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::with_capacity(batch.len());
            let mut close_ack = None;
            for m in batch {
                match m {
                    Msg::Append(r, ack) if close_ack.is_none() => appends.push((r, ack)),
                    Msg::Append(_, ack) => {
                        let _ = ack.send(Err(AuditError::Unavailable("audit log closed".into())));
                    }
                    Msg::Close(ack) => close_ack = Some(ack),
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            if let Some(ack) = close_ack {
                let _ = ack.send(self.close());
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    let ack = match m {
                        Msg::Append(_, a) | Msg::Close(a) => a,
                    };
                    let _ = ack.send(Err(AuditError::Unavailable("audit log closed".into())));
                }
                return;
            }
        }
    }

    fn checkpoint_line(&self, reason: &str) -> String {
        let cp = Checkpoint {
            seq: self.chain.last_seq(),
            hash: hex::encode(self.chain.head()),
            time: now_rfc3339(),
            reason: reason.to_owned(),
        };
        let sig = B64.encode(self.key.sign(&cp.signed_bytes()).as_ref());
        let line = CheckpointLine {
            checkpoint: cp,
            sig,
        };
        let mut s = serde_json::to_string(&line).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Cut off a failed batch's partial bytes before writing anything else.
    fn repair(&mut self) -> Result<(), AuditError> {
        if self.dirty {
            self.sink
                .truncate(self.good_len)
                .map_err(|e| unavailable("cannot repair audit file after a failed write", &e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Write `buf` and sync; on failure mark the file dirty.
    fn write_durable(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        let res = self
            .sink
            .write_all(buf)
            .map_err(|e| unavailable("cannot write audit file", &e))
            .and_then(|()| {
                self.sink
                    .sync()
                    .map_err(|e| unavailable("cannot sync audit file", &e))
            });
        match res {
            Ok(()) => {
                self.good_len = self.sink.len();
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                Err(e)
            }
        }
    }

    fn rotate_if_full(&mut self) -> Result<(), AuditError> {
        if self.sink.len() < self.cfg.max_file_bytes || self.sink.is_empty() {
            return Ok(());
        }
        let cp = self.checkpoint_line("rotate");
        self.write_durable(cp.as_bytes())?;
        self.since_checkpoint = 0;
        self.sink
            .rotate(self.chain.last_seq() + 1)
            .map_err(|e| unavailable("cannot start a new audit file", &e))?;
        self.good_len = self.sink.len();
        Ok(())
    }

    fn commit(&mut self, appends: Vec<(Box<Record>, Ack)>) {
        let fail_all = |acks: Vec<Ack>, e: &AuditError| {
            for a in acks {
                let _ = a.send(Err(AuditError::Unavailable(e.to_string())));
            }
        };
        if let Err(e) = self.repair().and_then(|()| self.rotate_if_full()) {
            fail_all(appends.into_iter().map(|(_, a)| a).collect(), &e);
            return;
        }
        let (saved_chain, saved_since) = (self.chain, self.since_checkpoint);
        let mut buf = String::new();
        let mut ok = Vec::with_capacity(appends.len());
        for (mut rec, ack) in appends {
            if rec.replica.is_empty() {
                rec.replica.clone_from(&self.cfg.replica);
            }
            match self.chain.append(&mut rec) {
                Ok(line) => {
                    buf.push_str(&line);
                    buf.push('\n');
                    ok.push(ack);
                    self.since_checkpoint += 1;
                    if self.cfg.checkpoint_every > 0
                        && self.since_checkpoint >= self.cfg.checkpoint_every
                    {
                        buf.push_str(&self.checkpoint_line("periodic"));
                        self.since_checkpoint = 0;
                    }
                }
                Err(e) => {
                    let _ = ack.send(Err(e));
                }
            }
        }
        if ok.is_empty() {
            return;
        }
        match self.write_durable(buf.as_bytes()) {
            Ok(()) => {
                for a in ok {
                    let _ = a.send(Ok(()));
                }
            }
            Err(e) => {
                self.chain = saved_chain;
                self.since_checkpoint = saved_since;
                fail_all(ok, &e);
            }
        }
    }

    fn close(&mut self) -> Result<(), AuditError> {
        self.repair()?;
        let cp = self.checkpoint_line("close");
        self.write_durable(cp.as_bytes())
    }
}
