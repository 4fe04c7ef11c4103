//! The default sink: append-only JSONL files in one directory.
//!
//! Owns the files `audit-<first seq, 20 digits>-<unix ms, 13 digits>.jsonl` (lexical order =
//! chain order). Opening a directory always starts a new file chained from the last stored
//! record; a torn final line left by a crash is skipped when looking for that record.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::chain::{Chain, Head, split_line};
use crate::checkpoint::CheckpointLine;
use crate::log::{AuditConfig, AuditLog, Sink};
use crate::{AuditError, Record};

/// Append-only JSONL files in one directory.
///
/// Space is preallocated with real zeros, `ALLOC_CHUNK` at a time, and records overwrite the
/// zeros in place: the file's size does not change on each write, so `fdatasync` flushes the
/// data alone, without a journal commit for the new size (a third less time per sync on ext4).
/// A file is cut to its content when it is rotated or closed; a crash leaves the zero padding,
/// which readers skip ([`read_file`]).
pub struct FileSink {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes of records and checkpoints written.
    len: u64,
    /// Furthest byte a write may have touched (beyond `len` after a failed write).
    touched: u64,
    /// Size of the file on disk (content and zero padding).
    allocated: u64,
}

/// Preallocation step: one extension (zeros written and synced) every few thousand records.
const ALLOC_CHUNK: u64 = 4 << 20;

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

/// A trail file's content, without the preallocated zero padding after it.
pub struct FileText {
    pub text: String,
    /// Non-zero bytes follow the start of the padding: writes a crash left half done.
    pub garbage_after_padding: bool,
}

/// Read a trail file. Records never contain a NUL byte (JSON escapes it), so the content ends
/// at the first one.
pub fn read_file(path: &Path) -> io::Result<FileText> {
    let bytes = fs::read(path)?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(FileText {
        text: String::from_utf8_lossy(&bytes[..end]).into_owned(),
        garbage_after_padding: bytes[end..].iter().any(|&b| b != 0),
    })
}

impl FileSink {
    /// Create a new file for a trail whose next record is `first_seq`.
    pub fn create(dir: &Path, first_seq: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut ms = crate::time::now_ms() as u64;
        loop {
            let path = dir.join(format!("audit-{first_seq:020}-{ms:013}.jsonl"));
            match OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(file) => {
                    sync_dir(dir)?;
                    return Ok(FileSink {
                        dir: dir.to_owned(),
                        path,
                        file,
                        len: 0,
                        touched: 0,
                        allocated: 0,
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

    /// Write zeros over `[from, to)` (past the end of the file, this extends it).
    fn zero(&self, from: u64, to: u64) -> io::Result<()> {
        let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Make sure `extra` more bytes fit in the preallocated space.
    fn reserve(&mut self, extra: u64) -> io::Result<()> {
        let need = self.len + extra;
        if need <= self.allocated {
            return Ok(());
        }
        let size = need.div_ceil(ALLOC_CHUNK) * ALLOC_CHUNK;
        self.zero(self.allocated, size)?;
        // The new size must be durable before a data-only sync can be trusted with it.
        self.file.sync_all()?;
        self.allocated = size;
        Ok(())
    }
}

impl Sink for FileSink {
    fn len(&self) -> u64 {
        self.len
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.reserve(buf.len() as u64)?;
        self.touched = self.touched.max(self.len + buf.len() as u64);
        self.file.write_all_at(buf, self.len)?;
        self.len += buf.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // Back to zeros, so that readers see padding and not a failed batch's bytes.
        self.zero(len, self.touched.min(self.allocated.max(len)))?;
        self.file.sync_data()?;
        self.len = len;
        self.touched = len;
        Ok(())
    }
    fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        self.finish()?;
        *self = FileSink::create(&self.dir, first_seq)?;
        Ok(())
    }
    fn finish(&mut self) -> io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_all()?;
        self.allocated = self.len;
        Ok(())
    }
}

/// The chain as `dir` leaves it: its last stored record (ignoring a torn final line) and the
/// last checkpoint, which may be in an earlier file when the writer crashed.
fn scan_chain(dir: &Path) -> Result<Chain, AuditError> {
    if !dir.exists() {
        return Ok(Chain::new());
    }
    let mut last: Option<Head> = None;
    let mut checkpoint: Option<u64> = None;
    'files: for path in list_files(dir)?.iter().rev() {
        let text = read_file(path)?.text;
        for line in text.lines().rev() {
            if line.starts_with("{\"checkpoint\"") {
                if checkpoint.is_none() {
                    checkpoint = serde_json::from_str::<CheckpointLine>(line)
                        .ok()
                        .map(|c| c.checkpoint.seq);
                }
            } else if last.is_none()
                && let Some((_, hex_hash)) = split_line(line)
                && let Ok(rec) = serde_json::from_str::<Record>(line)
            {
                let mut h = [0u8; 32];
                hex::decode_to_slice(hex_hash, &mut h).map_err(|e| {
                    AuditError::Config(format!("bad hash in {}: {e}", path.display()))
                })?;
                last = Some((rec.seq, h));
            }
            if last.is_some() && checkpoint.is_some() {
                break 'files;
            }
        }
    }
    Ok(match last {
        Some((seq, head)) => Chain::resume(seq, head, checkpoint.unwrap_or(0)),
        None => Chain::new(),
    })
}

impl AuditLog {
    /// Open (or create) the file trail in `cfg.dir`, continuing its chain in a new file.
    /// `signing_seed` is the Ed25519 private seed for checkpoints.
    pub fn open(cfg: AuditConfig, signing_seed: &[u8; 32]) -> Result<Self, AuditError> {
        let chain = scan_chain(&cfg.dir)?;
        let sink = FileSink::create(&cfg.dir, chain.last_seq() + 1)?;
        AuditLog::start(cfg, signing_seed, Box::new(sink), chain, "file")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, verify};

    const SEED: [u8; 32] = [5u8; 32];

    /// A reopened trail links its next checkpoint to the last one before, whether the
    /// earlier writer closed or crashed; removing that earlier checkpoint then shows.
    #[tokio::test]
    async fn checkpoints_stay_linked_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = AuditConfig::new(d.path(), "r");
        cfg.checkpoint_every = 2;
        let append = async |log: &AuditLog, n: usize| {
            for _ in 0..n {
                log.append(Record::new(Kind::Begin, "t1", "s", "tools/call"))
                    .await
                    .unwrap();
            }
        };
        // Closed cleanly, then one that crashes (dropped unclosed), then one that closes.
        let log = AuditLog::open(cfg.clone(), &SEED).unwrap();
        append(&log, 3).await;
        log.close().await.unwrap();
        let crashed = AuditLog::open(cfg.clone(), &SEED).unwrap();
        append(&crashed, 2).await;
        drop(crashed);
        let log = AuditLog::open(cfg.clone(), &SEED).unwrap();
        append(&log, 2).await;
        log.close().await.unwrap();
        let strict = |dir: &Path| {
            crate::verify_with(
                dir,
                &log.public_key(),
                crate::VerifyOptions {
                    expect_closed: true,
                },
            )
        };
        let r = strict(d.path());
        assert!(r.ok(), "{:?}", r.problem);

        // Each checkpoint names the one before it.
        let files = list_files(d.path()).unwrap();
        let checkpoints: Vec<CheckpointLine> = files
            .iter()
            .flat_map(|f| {
                read_file(f)
                    .unwrap()
                    .text
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        let mut before = 0;
        for c in &checkpoints {
            assert_eq!(c.checkpoint.prev, Some(before), "{checkpoints:?}");
            before = c.checkpoint.seq;
        }

        // Without the first file's close checkpoint, the next checkpoint's link is broken.
        let first = &files[0];
        let text = read_file(first).unwrap().text;
        let kept: Vec<&str> = text.lines().collect();
        fs::write(first, kept[..kept.len() - 1].join("\n") + "\n").unwrap();
        let r = strict(d.path());
        assert!(
            r.problem
                .as_ref()
                .is_some_and(|p| p.to_string().contains("a checkpoint was removed")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn preallocated_padding_is_not_content() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(AuditConfig::new(d.path(), "r"), &SEED).unwrap();
        for _ in 0..3 {
            log.append(Record::new(Kind::Begin, "t1", "s", "tools/call"))
                .await
                .unwrap();
        }
        // As a crash would leave it: content, then zeros up to the preallocated size.
        let path = list_files(d.path()).unwrap().remove(0);
        let on_disk = fs::metadata(&path).unwrap().len();
        let content = read_file(&path).unwrap();
        assert_eq!(on_disk, ALLOC_CHUNK);
        assert_eq!(content.text.lines().count(), 3);
        assert!(!content.garbage_after_padding);
        let r = verify(d.path(), &log.public_key());
        assert!(r.ok() && r.records == 3 && r.torn_tails.is_empty(), "{r:?}");

        // Half-done writes beyond the padding's start are a torn tail, not tampering.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"{\"seq\":9", content.text.len() as u64 + 100)
            .unwrap();
        let r = verify(d.path(), &log.public_key());
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!(r.torn_tails, vec![path.clone()]);
        f.write_all_at(&[0u8; 8], content.text.len() as u64 + 100)
            .unwrap();

        // Closed, the file is cut to its content.
        log.close().await.unwrap();
        let closed = fs::read(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), closed.len() as u64);
        assert!(!closed.contains(&0));
        assert!(verify(d.path(), &log.public_key()).closed);
    }
}
