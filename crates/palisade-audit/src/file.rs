//! Durable JSONL sink: one writer thread, group commit, fail closed, rotation, checkpoints.
//!
//! Owns the files `audit-<first seq, 20 digits>-<unix ms, 13 digits>.jsonl` in one directory
//! (lexical order = chain order). A single writer thread drains an mpsc channel, writes every
//! pending line, calls `fdatasync` once per batch and only then acks each caller. If writing or
//! syncing fails, every caller in that batch gets [`AuditError::Unavailable`], the chain state is
//! rolled back and the file is truncated back to its last durable length before the next batch
//! (self-healing). Every `checkpoint_every` records or `checkpoint_interval`, before rotation
//! (by size, checked before each batch, or by age) and at close, a signed line
//! `{"checkpoint":{"seq":N,"hash":"<hex>","time":"…","reason":"periodic|rotate|close"},"sig":"<base64>"}`
//! is written; the signature is Ed25519 over [`Checkpoint::signed_bytes`]. Opening a directory
//! always starts a new file chained from the last stored record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Also write a checkpoint when records are pending and this much time has passed.
    pub checkpoint_interval: Option<Duration>,
    /// Also rotate a non-empty file once it is this old.
    pub max_file_age: Option<Duration>,
}

impl AuditConfig {
    /// Defaults: 64 MiB or one-day files, a checkpoint every 1000 records or 60 s.
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
    /// Time-based checkpoint and rotation.
    Tick,
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
        let period = [cfg.checkpoint_interval, cfg.max_file_age]
            .into_iter()
            .flatten()
            .min()
            .map(|p| (p / 4).max(Duration::from_millis(10)));
        let writer = Writer {
            file_started: Instant::now(),
            last_checkpoint: Instant::now(),
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
    file_started: Instant,
    last_checkpoint: Instant,
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
                    Msg::Tick => self.tick(),
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            if let Some(ack) = close_ack {
                let _ = ack.send(self.close());
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Append(_, a) | Msg::Close(a) = m {
                        let _ = a.send(Err(AuditError::Unavailable("audit log closed".into())));
                    }
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
        self.rotate_now()
    }

    /// Signed `rotate` checkpoint, then a new file chained from the current head.
    fn rotate_now(&mut self) -> Result<(), AuditError> {
        let cp = self.checkpoint_line("rotate");
        self.write_durable(cp.as_bytes())?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.sink
            .rotate(self.chain.last_seq() + 1)
            .map_err(|e| unavailable("cannot start a new audit file", &e))?;
        self.good_len = self.sink.len();
        self.file_started = Instant::now();
        Ok(())
    }

    /// Time-based work; errors are left for the next batch to report and repair.
    fn tick(&mut self) {
        if self.repair().is_err() {
            return;
        }
        let old =
            |limit: Option<Duration>, since: Instant| limit.is_some_and(|l| since.elapsed() >= l);
        if old(self.cfg.max_file_age, self.file_started) && !self.sink.is_empty() {
            let _ = self.rotate_now();
        } else if old(self.cfg.checkpoint_interval, self.last_checkpoint)
            && self.since_checkpoint > 0
        {
            let cp = self.checkpoint_line("periodic");
            if self.write_durable(cp.as_bytes()).is_ok() {
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
            }
        }
    }

    fn commit(&mut self, appends: Vec<(Box<Record>, Ack)>) {
        let fail_all = |acks: Vec<Ack>, e: &AuditError| {
            for a in acks {
                let msg = match e {
                    AuditError::Unavailable(m) => m.clone(),
                    other => other.to_string(),
                };
                let _ = a.send(Err(AuditError::Unavailable(msg)));
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
                        self.last_checkpoint = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fingerprinter, Kind, VerifyOptions, verify_with};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    const SEED: [u8; 32] = [9u8; 32];
    const OK: u8 = 0;
    const FAIL_WRITE: u8 = 1;
    const FAIL_SYNC: u8 = 2;

    /// A file sink with injectable faults and a sync counter.
    struct TestSink {
        inner: FileSink,
        mode: Arc<AtomicU8>,
        syncs: Arc<AtomicUsize>,
    }

    impl Sink for TestSink {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            if self.mode.load(Ordering::SeqCst) == FAIL_WRITE {
                // A partial write, as on a full disk.
                let _ = self.inner.file.write_all(&buf[..buf.len() / 2]);
                return Err(io::Error::other("injected: no space left on device"));
            }
            self.inner.write_all(buf)
        }
        fn sync(&mut self) -> io::Result<()> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            if self.mode.load(Ordering::SeqCst) == FAIL_SYNC {
                return Err(io::Error::other("injected: I/O error"));
            }
            self.inner.sync()
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            if self.mode.load(Ordering::SeqCst) != OK {
                return Err(io::Error::other("injected: still failing"));
            }
            self.inner.truncate(len)
        }
        fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
            self.inner.rotate(first_seq)
        }
    }

    fn test_log(dir: &Path) -> (AuditLog, Arc<AtomicU8>, Arc<AtomicUsize>) {
        let mode = Arc::new(AtomicU8::new(OK));
        let syncs = Arc::new(AtomicUsize::new(0));
        let sink = TestSink {
            inner: FileSink::create(dir, 1).unwrap(),
            mode: mode.clone(),
            syncs: syncs.clone(),
        };
        let mut cfg = AuditConfig::new(dir, "replica-a");
        cfg.checkpoint_every = 100;
        let log = AuditLog::with_sink(cfg, &SEED, Box::new(sink), Chain::new()).unwrap();
        (log, mode, syncs)
    }

    fn rec(tenant: &str) -> Record {
        Record::new(Kind::Begin, tenant, "subj", "tools/call")
    }

    fn strict(dir: &Path, pk: &[u8]) -> crate::Report {
        verify_with(
            dir,
            pk,
            VerifyOptions {
                expect_closed: true,
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_16_concurrent_appenders() {
        let d = tempfile::tempdir().unwrap();
        let (log, _mode, syncs) = test_log(d.path());
        let mut tasks = Vec::new();
        for t in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let mut r = rec(&format!("t{t}"));
                    r.target = Some(format!("tool{i}"));
                    log.append(r).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.close().await.unwrap();
        let n_syncs = syncs.load(Ordering::SeqCst);
        assert!(
            n_syncs < 800,
            "no batching: {n_syncs} syncs for 800 records"
        );
        let files = list_files(d.path()).unwrap();
        let text = fs::read_to_string(&files[0]).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .filter(|l| !l.starts_with("{\"checkpoint\""))
            .map(|l| serde_json::from_str::<Record>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, (1..=800).collect::<Vec<u64>>());
        assert!(text.contains("\"replica\":\"replica-a\""));
        let r = strict(d.path(), &log.public_key());
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!((r.records, r.checkpoints), (800, 9));
        // Appends after close fail closed.
        assert!(matches!(
            log.append(rec("t1")).await,
            Err(AuditError::Unavailable(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fails_closed_and_heals() {
        let d = tempfile::tempdir().unwrap();
        let (log, mode, _syncs) = test_log(d.path());
        log.append(rec("t1")).await.unwrap();
        for fault in [FAIL_WRITE, FAIL_SYNC] {
            mode.store(fault, Ordering::SeqCst);
            let e = log.append(rec("t1")).await.unwrap_err();
            assert!(matches!(e, AuditError::Unavailable(_)));
            let msg = e.to_string();
            assert!(msg.starts_with("audit trail unavailable: cannot"), "{msg}");
            // Still failing: the repair cannot run either.
            assert!(log.append(rec("t1")).await.is_err());
            mode.store(OK, Ordering::SeqCst);
            log.append(rec("t1")).await.unwrap();
        }
        log.close().await.unwrap();
        let r = strict(d.path(), &log.public_key());
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!(r.records, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn time_based_checkpoint_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = AuditConfig::new(d.path(), "r");
        cfg.checkpoint_interval = Some(Duration::from_millis(40));
        cfg.max_file_age = None;
        let log = AuditLog::open(cfg, &SEED).unwrap();
        log.append(rec("t1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = fs::read_to_string(&list_files(d.path()).unwrap()[0]).unwrap();
        assert!(text.contains("\"reason\":\"periodic\""), "{text}");
        log.close().await.unwrap();

        let d = tempfile::tempdir().unwrap();
        let mut cfg = AuditConfig::new(d.path(), "r");
        cfg.max_file_age = Some(Duration::from_millis(40));
        let log = AuditLog::open(cfg, &SEED).unwrap();
        log.append(rec("t1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        log.append(rec("t1")).await.unwrap();
        log.close().await.unwrap();
        assert_eq!(list_files(d.path()).unwrap().len(), 2);
        let r = strict(d.path(), &log.public_key());
        assert!(r.ok() && r.records == 2, "{:?}", r.problem);
    }

    #[tokio::test]
    async fn no_raw_arguments_in_the_trail() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(AuditConfig::new(d.path(), "r"), &SEED).unwrap();
        let fp = Fingerprinter::new([1u8; 32], "k1");
        let args = serde_json::json!({"email": "alice@example.com", "card": "4111111111111111"});
        let mut r = rec("t1");
        let (kid, hash) = fp.fingerprint("t1", &args);
        r.key_id = Some(kid);
        r.args_fingerprint = Some(hash.clone());
        r.args_bytes = Some(args.to_string().len() as u64);
        log.append(r).await.unwrap();
        log.close().await.unwrap();
        let text = fs::read_to_string(&list_files(d.path()).unwrap()[0]).unwrap();
        assert!(text.contains(&hash));
        assert!(!text.contains("alice@example.com") && !text.contains("4111111111111111"));
    }
}
