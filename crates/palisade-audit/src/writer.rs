//! The audit writer: one thread per sink, group commit, fail closed, rotation, checkpoints.
//!
//! A single writer thread drains a channel and owns its [`Sink`] and its chain. Two kinds of
//! append: [`crate::AuditLog::append`] returns only once the record is durable (BEGIN records: the
//! call waits for it), [`crate::AuditLog::append_deferred`] returns once the record is queued (END,
//! DENIED: nothing waits for them). Each batch is written in one go; it is synced (`fdatasync`,
//! or a committed transaction) when it holds a durable append, or when deferred records have
//! waited `max_defer`, whichever comes first, so deferred records ride the next durable batch
//! instead of paying for a sync of their own.
//!
//! Failure and recovery: if writing or syncing fails, every durable append in that batch gets
//! [`AuditError::Unavailable`], the chain is rolled back to the last durable record, the sink is
//! cut back to its last durable length before anything else is written (self-healing), and the
//! deferred records that were lost with the batch are written again with the next batch (none
//! is dropped unless more than `max_deferred` pile up while the sink is down).
//!
//! Every `checkpoint_every` records or `checkpoint_interval`, before rotation (by size, checked
//! before each batch, or by age) and at close, a signed line
//! `{"checkpoint":{"seq":N,"hash":"<hex>","time":"…","reason":"periodic|rotate|close"},"sig":"<base64>"}`
//! is written; the signature is Ed25519 over [`Checkpoint::signed_bytes`].

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::sync::mpsc;

use crate::chain::Chain;
use crate::checkpoint::{Checkpoint, CheckpointLine};
use crate::log::{Ack, AuditConfig, Msg, Sink};
use crate::time::now_rfc3339;
use crate::{AuditError, Record};

/// One sink's writer thread: its sink, its chain, and the records not yet durable.
pub(crate) struct Writer {
    sink: Box<dyn Sink>,
    name: String,
    chain: Chain,
    /// The chain as of the last durable record (restored when a batch fails).
    durable_chain: Chain,
    key: Ed25519KeyPair,
    cfg: AuditConfig,
    since_checkpoint: u64,
    durable_since_checkpoint: u64,
    /// Sink length after the last successful sync.
    good_len: u64,
    /// A failed batch may have left bytes after `good_len`.
    dirty: bool,
    /// Deferred records not yet durable, oldest first (never in the sink before a sync).
    deferred: Vec<Record>,
    /// Deferred records handed over without waking the writer.
    shared: Arc<Mutex<Vec<Record>>>,
    /// When deferred records must be synced (or, after a failure, written again).
    sync_due: Option<Instant>,
    file_started: Instant,
    last_checkpoint: Instant,
}

/// After a failed write, how long deferred records wait before they are written again.
const RETRY: Duration = Duration::from_millis(500);

fn unavailable(what: &str, e: &io::Error) -> AuditError {
    AuditError::Unavailable(format!("{what}: {e}"))
}

fn fail_all(acks: Vec<Ack>, e: &AuditError) {
    for a in acks {
        let msg = match e {
            AuditError::Unavailable(m) => m.clone(),
            other => other.to_string(),
        };
        let _ = a.send(Err(AuditError::Unavailable(msg)));
    }
}

impl Writer {
    pub(crate) fn new(
        sink: Box<dyn Sink>,
        name: &str,
        chain: Chain,
        key: Ed25519KeyPair,
        cfg: AuditConfig,
        shared: Arc<Mutex<Vec<Record>>>,
    ) -> Writer {
        Writer {
            file_started: Instant::now(),
            last_checkpoint: Instant::now(),
            good_len: sink.len(),
            sink,
            durable_chain: chain,
            chain,
            key,
            cfg,
            since_checkpoint: 0,
            durable_since_checkpoint: 0,
            dirty: false,
            deferred: Vec::new(),
            shared,
            sync_due: None,
            name: name.to_owned(),
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Msg>, runtime: &tokio::runtime::Runtime) {
        loop {
            let first = match self.sync_due {
                Some(at) => {
                    let deadline = tokio::time::Instant::from_std(at);
                    match runtime
                        .block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await })
                    {
                        Ok(m) => m,
                        Err(_) => {
                            self.take_shared();
                            self.commit(Vec::new(), true);
                            continue;
                        }
                    }
                }
                None => runtime.block_on(rx.recv()),
            };
            let Some(first) = first else {
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
            let mut tick = false;
            for m in batch {
                match m {
                    Msg::Append(r, ack) if close_ack.is_none() => appends.push((r, ack)),
                    Msg::Append(_, ack) => {
                        if let Some(ack) = ack {
                            let _ =
                                ack.send(Err(AuditError::Unavailable("audit log closed".into())));
                        }
                    }
                    Msg::Close(ack) => close_ack = Some(ack),
                    Msg::Tick => tick = true,
                    Msg::Nudge => {}
                }
            }
            self.take_shared();
            if !appends.is_empty() || self.sync_due.is_some() {
                self.commit(appends, false);
            }
            if tick {
                self.tick();
            }
            if let Some(ack) = close_ack {
                let _ = ack.send(self.close());
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Append(_, Some(a)) | Msg::Close(a) = m {
                        let _ = a.send(Err(AuditError::Unavailable("audit log closed".into())));
                    }
                }
                return;
            }
        }
    }

    /// A signed checkpoint of the chain as it stands; the chain then counts it as its last.
    fn checkpoint_line(&mut self, reason: &str) -> String {
        let cp = Checkpoint {
            seq: self.chain.last_seq(),
            hash: hex::encode(self.chain.head()),
            time: now_rfc3339(),
            reason: reason.to_owned(),
            prev: Some(self.chain.last_checkpoint()),
        };
        self.chain.checkpointed();
        let sig = B64.encode(self.key.sign(&cp.signed_bytes()).as_ref());
        let line = CheckpointLine {
            checkpoint: cp,
            sig,
        };
        let mut s = serde_json::to_string(&line).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Cut off a failed batch's bytes before writing anything else.
    fn repair(&mut self) -> Result<(), AuditError> {
        if self.dirty {
            self.sink.truncate(self.good_len).map_err(|e| {
                unavailable(
                    &format!(
                        "cannot repair the {} audit sink after a failed write",
                        self.name
                    ),
                    &e,
                )
            })?;
            self.dirty = false;
        }
        Ok(())
    }

    /// A write or sync failed: everything since the last durable record is gone (the sink is
    /// cut back before the next write) and the chain goes back to it. Deferred records are
    /// written again, no sooner than `RETRY` from now.
    fn lost_batch(&mut self) {
        self.dirty = true;
        self.chain = self.durable_chain;
        self.since_checkpoint = self.durable_since_checkpoint;
        self.sync_due = (!self.deferred.is_empty()).then(|| Instant::now() + RETRY);
    }

    /// Write `buf`, then sync; on success everything written so far is durable.
    fn write_durable(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        let res = self
            .sink
            .write_all(buf)
            .map_err(|e| unavailable(&format!("cannot write the {} audit sink", self.name), &e))
            .and_then(|()| {
                self.sink.sync().map_err(|e| {
                    unavailable(&format!("cannot sync the {} audit sink", self.name), &e)
                })
            });
        match res {
            Ok(()) => {
                self.written();
                Ok(())
            }
            Err(e) => {
                if self.sink.kept() {
                    self.written();
                } else {
                    self.lost_batch();
                }
                Err(e)
            }
        }
    }

    /// What was written is stored, or will be (a sink that kept it): the chain goes on from it.
    fn written(&mut self) {
        self.good_len = self.sink.len();
        self.durable_chain = self.chain;
        self.durable_since_checkpoint = self.since_checkpoint;
        self.deferred.clear();
        self.sync_due = None;
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
        self.durable_since_checkpoint = 0;
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
                self.durable_since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
            }
        }
    }

    /// Chain and write `appends` after any deferred records still to be (re)written; sync if
    /// a durable append waits for it, if `force_sync`, or if deferred records are due.
    fn commit(&mut self, appends: Vec<(Box<Record>, Option<Ack>)>, force_sync: bool) {
        let mut durable = Vec::new();
        let mut deferred = Vec::new();
        for (rec, ack) in appends {
            match ack {
                Some(ack) => durable.push((rec, ack)),
                None => deferred.push(*rec),
            }
        }
        self.keep_deferred(deferred);
        let due = self.sync_due.is_some_and(|at| Instant::now() >= at);
        if durable.is_empty() && !force_sync && !due {
            // Nothing waits: deferred records stay in memory until a sync is due.
            return;
        }
        if let Err(e) = self.repair().and_then(|()| self.rotate_if_full()) {
            fail_all(durable.into_iter().map(|(_, a)| a).collect(), &e);
            self.sync_due = (!self.deferred.is_empty()).then(|| Instant::now() + RETRY);
            return;
        }
        if self.sink.is_empty() {
            // A file's age counts from its first record.
            self.file_started = Instant::now();
        }
        let mut buf = String::new();
        let mut pending = std::mem::take(&mut self.deferred);
        for rec in &mut pending {
            self.chain_into(&mut buf, rec);
        }
        self.deferred = pending;
        let mut acks = Vec::with_capacity(durable.len());
        for (mut rec, ack) in durable {
            if self.chain_into(&mut buf, &mut rec) {
                acks.push(ack);
            } else {
                let _ = ack.send(Err(AuditError::Encode(
                    "record cannot be serialized".into(),
                )));
            }
        }
        match self.write_durable(buf.as_bytes()) {
            Ok(()) => {
                for a in acks {
                    let _ = a.send(Ok(()));
                }
            }
            Err(e) => fail_all(acks, &e),
        }
    }

    /// Moves the deferred records waiting in the shared buffer into the writer's own list.
    fn take_shared(&mut self) {
        let waiting = std::mem::take(&mut *self.shared.lock().unwrap_or_else(|e| e.into_inner()));
        self.keep_deferred(waiting);
    }

    /// Deferred records to write with the next batch; a sync is due within `max_defer`.
    fn keep_deferred(&mut self, recs: Vec<Record>) {
        if recs.is_empty() {
            return;
        }
        self.deferred.extend(recs);
        if self.sync_due.is_none() {
            self.sync_due = Some(Instant::now() + self.cfg.max_defer);
        }
        if self.deferred.len() > self.cfg.max_deferred {
            let dropped = self.deferred.len() - self.cfg.max_deferred;
            self.deferred.drain(..dropped);
            tracing::error!(
                sink = %self.name,
                dropped,
                "audit sink has been failing for a while: END/DENIED records dropped"
            );
        }
    }

    /// Give `rec` its place in the chain and append its line (and any checkpoint due) to `buf`.
    /// False if the record cannot be serialized (it is then not in the chain).
    fn chain_into(&mut self, buf: &mut String, rec: &mut Record) -> bool {
        if rec.replica.is_empty() {
            rec.replica.clone_from(&self.cfg.replica);
        }
        let Ok(line) = self.chain.append(rec) else {
            return false;
        };
        buf.push_str(&line);
        buf.push('\n');
        self.since_checkpoint += 1;
        if self.cfg.checkpoint_every > 0 && self.since_checkpoint >= self.cfg.checkpoint_every {
            let cp = self.checkpoint_line("periodic");
            buf.push_str(&cp);
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
        }
        true
    }

    fn close(&mut self) -> Result<(), AuditError> {
        self.take_shared();
        if !self.deferred.is_empty() {
            self.commit(Vec::new(), true);
        }
        self.repair()?;
        let cp = self.checkpoint_line("close");
        self.write_durable(cp.as_bytes())?;
        self.sink
            .finish()
            .map_err(|e| unavailable(&format!("cannot finish the {} audit sink", self.name), &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::list_files;
    use crate::log::AuditLog;
    use crate::{FileSink, Fingerprinter, Kind, VerifyOptions, verify_with};
    use std::fs;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    const SEED: [u8; 32] = [9u8; 32];
    const OK: u8 = 0;
    const FAIL_WRITE: u8 = 1;
    const FAIL_SYNC: u8 = 2;
    /// The sync fails with its outcome unknown, and the sink keeps what was written.
    const KEEP: u8 = 3;

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
                let _ = self.inner.write_all(&buf[..buf.len() / 2]);
                return Err(io::Error::other("injected: no space left on device"));
            }
            self.inner.write_all(buf)
        }
        fn sync(&mut self) -> io::Result<()> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            if matches!(self.mode.load(Ordering::SeqCst), FAIL_SYNC | KEEP) {
                return Err(io::Error::other("injected: I/O error"));
            }
            self.inner.sync()
        }
        fn kept(&self) -> bool {
            self.mode.load(Ordering::SeqCst) == KEEP
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
        fn finish(&mut self) -> io::Result<()> {
            self.inner.finish()
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
        let log = AuditLog::start(cfg, &SEED, Box::new(sink), Chain::new(), "file").unwrap();
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

    fn kinds_in(dir: &Path) -> Vec<(u64, String)> {
        list_files(dir)
            .unwrap()
            .iter()
            .flat_map(|f| {
                crate::read_file(f)
                    .unwrap()
                    .text
                    .lines()
                    .filter(|l| !l.starts_with("{\"checkpoint\""))
                    .map(|l| {
                        let r: Record = serde_json::from_str(l).unwrap();
                        (r.seq, r.tenant)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_records_ride_the_next_sync() {
        let d = tempfile::tempdir().unwrap();
        let (log, _mode, syncs) = test_log(d.path());
        // Alone, deferred records become durable within max_defer (10 ms).
        log.append_deferred(rec("end1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        assert_eq!(kinds_in(d.path()), vec![(1, "end1".to_string())]);
        // Queued together with a durable append, they share its sync.
        let before = syncs.load(Ordering::SeqCst);
        let mut tasks = Vec::new();
        for i in 0..50 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append_deferred(rec(&format!("end{i}"))).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.append(rec("begin")).await.unwrap();
        let used = syncs.load(Ordering::SeqCst) - before;
        assert!(
            used <= 2,
            "{used} syncs for 50 deferred records and one durable"
        );
        log.close().await.unwrap();
        assert_eq!(kinds_in(d.path()).len(), 52);
        let r = strict(d.path(), &log.public_key());
        assert!(r.ok(), "{:?}", r.problem);
    }

    /// A failed batch: its durable append fails closed either way. Cut off, it takes the
    /// unsynced deferred records down with it, and they are written again with the next batch;
    /// kept by a sink that could not tell whether it landed, the chain goes on from it and each
    /// record is in the trail once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_is_written_again_or_kept() {
        for (fault, trail) in [
            (
                FAIL_SYNC,
                ["begin1", "end1", "denied1", "begin3"].as_slice(),
            ),
            (
                KEEP,
                ["begin1", "end1", "denied1", "begin2", "begin3"].as_slice(),
            ),
        ] {
            let d = tempfile::tempdir().unwrap();
            let (log, mode, _syncs) = test_log(d.path());
            log.append(rec("begin1")).await.unwrap();
            mode.store(fault, Ordering::SeqCst);
            log.append_deferred(rec("end1")).await.unwrap();
            log.append_deferred(rec("denied1")).await.unwrap();
            assert!(log.append(rec("begin2")).await.is_err());
            mode.store(OK, Ordering::SeqCst);
            log.append(rec("begin3")).await.unwrap();
            log.close().await.unwrap();
            let tenants: Vec<String> = kinds_in(d.path()).into_iter().map(|(_, t)| t).collect();
            assert_eq!(tenants, trail);
            let r = strict(d.path(), &log.public_key());
            assert!(r.ok(), "{:?}", r.problem);
        }
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
