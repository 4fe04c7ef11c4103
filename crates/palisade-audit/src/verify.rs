//! Trail verification: reads every file in chain order and names the first problem.
//!
//! Checks, per record line: the stored hash equals SHA-256(prev_hash ‖ body) (else *modified*),
//! seq follows the previous record (else *deleted* or *reordered*), prev_hash equals the previous
//! record's hash. Per checkpoint: the Ed25519 signature is valid (else *bad checkpoint
//! signature*), seq/hash match the chain so far, and the checkpoint it names as its
//! predecessor is the last one seen (else a checkpoint was removed). At the end: a last file ending with a
//! `rotate` checkpoint lost its successor (*truncated*); with `expect_closed`, a trail that does
//! not end with a `close` checkpoint is *truncated*. A final line without newline that is not
//! valid JSON is a *torn tail* (a crash), reported separately and not as tampering.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::Record;
use crate::chain::{GENESIS_HASH, hash_line, split_line};
use crate::checkpoint::CheckpointLine;
use crate::file::{FileText, list_files, read_file};

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// Bytes changed: hash mismatch or an unparsable line.
    Modified(String),
    /// A record is missing: seq jumps from `expected` to `found`.
    Deleted { expected: u64, found: u64 },
    /// Records out of order.
    Reordered { expected: u64, found: u64 },
    /// The trail ends early.
    Truncated(String),
    /// A checkpoint's signature does not verify.
    BadSignature,
    /// A validly signed checkpoint disagrees with the chain (moved or replayed).
    CheckpointMismatch(String),
    /// The directory or a file cannot be read.
    Unreadable(String),
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line number (0 when the problem is about the file as a whole).
    pub line: usize,
    pub seq: Option<u64>,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(s) = self.seq {
            write!(f, "seq {s}: ")?;
        }
        match &self.kind {
            ProblemKind::Modified(why) => write!(f, "modified ({why})"),
            ProblemKind::Deleted { expected, found } => {
                write!(f, "deleted (expected seq {expected}, found {found})")
            }
            ProblemKind::Reordered { expected, found } => {
                write!(f, "reordered (expected seq {expected}, found {found})")
            }
            ProblemKind::Truncated(why) => write!(f, "truncated ({why})"),
            ProblemKind::BadSignature => write!(f, "bad checkpoint signature"),
            ProblemKind::CheckpointMismatch(why) => write!(f, "checkpoint mismatch ({why})"),
            ProblemKind::Unreadable(why) => write!(f, "unreadable ({why})"),
        }
    }
}

/// Verification options.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// The trail was shut down cleanly, so it must end with a `close` checkpoint.
    pub expect_closed: bool,
}

/// Result of [`verify`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub checkpoints: u64,
    pub last_seq: u64,
    /// Hex hash of the last record.
    pub head: String,
    /// The trail ends with a valid `close` checkpoint.
    pub closed: bool,
    /// Seq of the last valid checkpoint (0 if none).
    pub last_checkpoint_seq: u64,
    /// Files whose final line was torn by a crash (not tampering).
    pub torn_tails: Vec<PathBuf>,
    /// Files (not the last) that end without a checkpoint: the writer crashed and restarted.
    pub unclean_ends: Vec<PathBuf>,
    pub problem: Option<Problem>,
}

impl Report {
    /// No problem found.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Verify with default options (a missing close checkpoint is reported in
/// [`Report::closed`], not as a problem).
pub fn verify(dir: &Path, public_key: &[u8]) -> Report {
    verify_with(dir, public_key, VerifyOptions::default())
}

enum Line<'a> {
    Record { text: &'a str, rec: Box<Record> },
    Checkpoint(CheckpointLine),
    Bad(String),
}

fn parse_line(text: &str) -> Line<'_> {
    if text.starts_with("{\"checkpoint\"") {
        match serde_json::from_str::<CheckpointLine>(text) {
            Ok(c) => Line::Checkpoint(c),
            Err(e) => Line::Bad(format!("checkpoint line is not valid: {e}")),
        }
    } else {
        match serde_json::from_str::<Record>(text) {
            Ok(rec) => Line::Record {
                text,
                rec: Box::new(rec),
            },
            Err(e) => Line::Bad(format!("line is not a valid record: {e}")),
        }
    }
}

/// Verify the trail in `dir` against the checkpoint `public_key` (32 raw Ed25519 bytes).
pub fn verify_with(dir: &Path, public_key: &[u8], opts: VerifyOptions) -> Report {
    let files = match list_files(dir) {
        Ok(f) => f,
        Err(e) => {
            return Report {
                head: hex::encode(GENESIS_HASH),
                problem: Some(Problem {
                    file: dir.to_owned(),
                    line: 0,
                    seq: None,
                    kind: ProblemKind::Unreadable(e.to_string()),
                }),
                ..Report::default()
            };
        }
    };
    let count = files.len();
    let sources = files.into_iter().map(|p| {
        let text = read_file(&p);
        (p, text)
    });
    verify_sources(dir, count, sources, public_key, opts)
}

/// Verify one chain given as `count` sources in chain order (a file trail's files, or a
/// database trail's rows as one text), each named for the report; `trail` names the whole.
pub fn verify_sources(
    trail: &Path,
    count: usize,
    sources: impl Iterator<Item = (PathBuf, std::io::Result<FileText>)>,
    public_key: &[u8],
    opts: VerifyOptions,
) -> Report {
    let mut rep = Report {
        head: hex::encode(GENESIS_HASH),
        ..Report::default()
    };
    let pk = UnparsedPublicKey::new(&ED25519, public_key);
    rep.files = count;
    let mut head = GENESIS_HASH;
    let mut last_seq = 0u64;
    // How the previous file ended: Some(reason) if with a checkpoint.
    let mut prev_end: Option<String> = Some("start".into());
    let mut end_reason: Option<String> = None;
    let mut last_path = None;
    for (fi, (path, read)) in sources.enumerate() {
        let problem = |line: usize, seq: Option<u64>, kind: ProblemKind| Problem {
            file: path.clone(),
            line,
            seq,
            kind,
        };
        let file = match read {
            Ok(f) => f,
            Err(e) => {
                rep.problem = Some(problem(0, None, ProblemKind::Unreadable(e.to_string())));
                return rep;
            }
        };
        if file.garbage_after_padding {
            rep.torn_tails.push(path.clone());
        }
        let text = file.text;
        let mut lines: Vec<&str> = text.split('\n').collect();
        let unterminated = lines.pop().filter(|l| !l.is_empty());
        let mut parsed: Vec<Line<'_>> = lines.iter().map(|l| parse_line(l)).collect();
        if let Some(last) = unterminated {
            match parse_line(last) {
                Line::Bad(_) => rep.torn_tails.push(path.clone()),
                good => parsed.push(good),
            }
        }
        end_reason = None;
        let record_seqs: Vec<Option<u64>> = parsed
            .iter()
            .map(|l| match l {
                Line::Record { rec, .. } => Some(rec.seq),
                _ => None,
            })
            .collect();
        let mut first_record = true;
        for (li, line) in parsed.iter().enumerate() {
            let lineno = li + 1;
            match line {
                Line::Bad(why) => {
                    rep.problem = Some(problem(lineno, None, ProblemKind::Modified(why.clone())));
                    return rep;
                }
                Line::Record { text, rec } => {
                    end_reason = None;
                    let seq = Some(rec.seq);
                    let Some((body, hash_hex)) = split_line(text) else {
                        rep.problem = Some(problem(
                            lineno,
                            seq,
                            ProblemKind::Modified("hash field is not last or malformed".into()),
                        ));
                        return rep;
                    };
                    let mut prev = [0u8; 32];
                    if hex::decode_to_slice(&rec.prev_hash, &mut prev).is_err()
                        || hex::encode(hash_line(&prev, body.as_bytes())) != hash_hex
                    {
                        rep.problem = Some(problem(
                            lineno,
                            seq,
                            ProblemKind::Modified("hash does not match the stored bytes".into()),
                        ));
                        return rep;
                    }
                    let expected = last_seq + 1;
                    if rec.seq != expected {
                        let kind =
                            if rec.seq < expected || record_seqs[li..].contains(&Some(expected)) {
                                ProblemKind::Reordered {
                                    expected,
                                    found: rec.seq,
                                }
                            } else if first_record && fi > 0 && prev_end.is_none() {
                                ProblemKind::Truncated(format!(
                                    "previous file ends at seq {last_seq} without a checkpoint; \
                                 this file starts at seq {}",
                                    rec.seq
                                ))
                            } else {
                                ProblemKind::Deleted {
                                    expected,
                                    found: rec.seq,
                                }
                            };
                        rep.problem = Some(problem(lineno, seq, kind));
                        return rep;
                    }
                    if prev != head {
                        rep.problem = Some(problem(
                            lineno,
                            seq,
                            ProblemKind::Modified(
                                "prev_hash does not match the previous record".into(),
                            ),
                        ));
                        return rep;
                    }
                    first_record = false;
                    if let Ok(h) = <[u8; 32]>::try_from(&hex_bytes(hash_hex)[..]) {
                        head = h;
                    }
                    last_seq = rec.seq;
                    rep.records += 1;
                }
                Line::Checkpoint(c) => {
                    let sig = B64.decode(&c.sig).unwrap_or_default();
                    if pk.verify(&c.checkpoint.signed_bytes(), &sig).is_err() {
                        rep.problem = Some(problem(
                            lineno,
                            Some(c.checkpoint.seq),
                            ProblemKind::BadSignature,
                        ));
                        return rep;
                    }
                    if c.checkpoint.seq > last_seq {
                        rep.problem = Some(problem(
                            lineno,
                            Some(c.checkpoint.seq),
                            ProblemKind::Truncated(format!(
                                "checkpoint covers seq {} but records end at seq {last_seq}",
                                c.checkpoint.seq
                            )),
                        ));
                        return rep;
                    }
                    if c.checkpoint.seq != last_seq || c.checkpoint.hash != hex::encode(head) {
                        rep.problem = Some(problem(
                            lineno,
                            Some(c.checkpoint.seq),
                            ProblemKind::CheckpointMismatch(format!(
                                "checkpoint for seq {} follows seq {last_seq}",
                                c.checkpoint.seq
                            )),
                        ));
                        return rep;
                    }
                    if let Some(prev) = c.checkpoint.prev
                        && prev != rep.last_checkpoint_seq
                    {
                        rep.problem = Some(problem(
                            lineno,
                            Some(c.checkpoint.seq),
                            ProblemKind::CheckpointMismatch(format!(
                                "the checkpoint before it covered seq {prev}, but the trail's \
                                 last checkpoint covers seq {}: a checkpoint was removed",
                                rep.last_checkpoint_seq
                            )),
                        ));
                        return rep;
                    }
                    rep.checkpoints += 1;
                    rep.last_checkpoint_seq = c.checkpoint.seq;
                    end_reason = Some(c.checkpoint.reason.clone());
                }
            }
        }
        if fi + 1 < count && end_reason.is_none() && !parsed.is_empty() {
            rep.unclean_ends.push(path.clone());
        }
        prev_end.clone_from(&end_reason);
        last_path = Some(path.clone());
        if parsed.is_empty() {
            // An empty file (crash right after creation) says nothing about the previous one.
            prev_end = Some("empty".into());
        }
    }
    rep.last_seq = last_seq;
    rep.head = hex::encode(head);
    rep.closed = end_reason.as_deref() == Some("close");
    if let Some(path) = last_path {
        if end_reason.as_deref() == Some("rotate") {
            rep.problem = Some(Problem {
                file: path.clone(),
                line: 0,
                seq: Some(last_seq),
                kind: ProblemKind::Truncated(
                    "last file ends with a rotation checkpoint but its successor is missing".into(),
                ),
            });
        } else if opts.expect_closed && !rep.closed {
            rep.problem = Some(Problem {
                file: path.clone(),
                line: 0,
                seq: Some(last_seq),
                kind: ProblemKind::Truncated(format!(
                    "no close checkpoint at the end; records end at seq {last_seq}, \
                     last checkpoint at seq {}",
                    rep.last_checkpoint_seq
                )),
            });
        }
    } else if opts.expect_closed {
        rep.problem = Some(Problem {
            file: trail.to_owned(),
            line: 0,
            seq: None,
            kind: ProblemKind::Truncated("no audit records".into()),
        });
    }
    rep
}

fn hex_bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditConfig, AuditLog, Kind};
    use std::fs;

    const SEED: [u8; 32] = [42u8; 32];

    fn rec(i: usize) -> Record {
        let mut r = Record::new(Kind::Begin, "t1", "subj", "tools/call");
        r.target = Some(format!("tool{i}"));
        r
    }

    async fn write_trail(dir: &Path, n: usize, every: u64, max_bytes: u64) -> [u8; 32] {
        let mut cfg = AuditConfig::new(dir, "r1");
        cfg.checkpoint_every = every;
        cfg.max_file_bytes = max_bytes;
        let log = AuditLog::open(cfg, &SEED).unwrap();
        for i in 0..n {
            log.append(rec(i)).await.unwrap();
        }
        log.close().await.unwrap();
        log.public_key()
    }

    fn only_file(dir: &Path) -> PathBuf {
        let f = list_files(dir).unwrap();
        assert_eq!(f.len(), 1);
        f[0].clone()
    }

    fn edit_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let text = fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        f(&mut lines);
        fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn strict(dir: &Path, pk: &[u8]) -> Report {
        verify_with(
            dir,
            pk,
            VerifyOptions {
                expect_closed: true,
            },
        )
    }

    /// One clean trail (10 records, a checkpoint every 4): its file's name and bytes, and the
    /// public key; made once.
    fn clean() -> &'static (std::ffi::OsString, Vec<u8>, [u8; 32]) {
        static CLEAN: std::sync::OnceLock<(std::ffi::OsString, Vec<u8>, [u8; 32])> =
            std::sync::OnceLock::new();
        CLEAN.get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let pk = runtime.block_on(write_trail(d.path(), 10, 4, 1 << 20));
            let file = only_file(d.path());
            (
                file.file_name().unwrap().to_owned(),
                fs::read(&file).unwrap(),
                pk,
            )
        })
    }

    /// Whether strict verification finds intact the trail whose file holds `bytes` instead.
    fn verifies(bytes: &[u8]) -> bool {
        let (name, original, pk) = clean();
        assert_ne!(bytes, &original[..], "a mutation changes something");
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(name), bytes).unwrap();
        strict(d.path(), pk).ok()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        #[test]
        fn verify_detects_any_single_byte_change(at in 0usize..4096, delta in 1u8..=255) {
            let (_, original, _) = clean();
            let mut bytes = original.clone();
            let at = at % bytes.len();
            bytes[at] = bytes[at].wrapping_add(delta);
            proptest::prop_assert!(!verifies(&bytes), "changed byte {at}");
        }

        #[test]
        fn verify_detects_any_deleted_or_swapped_line(a in 0usize..64, b in 0usize..64) {
            let (_, original, _) = clean();
            let text = String::from_utf8(original.clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let (a, b) = (a % lines.len(), b % lines.len());
            // Any line, a checkpoint too: the next checkpoint names the one before it.
            let mut deleted = lines.clone();
            deleted.remove(a);
            proptest::prop_assert!(!verifies((deleted.join("\n") + "\n").as_bytes()), "deleted line {a}");
            if lines[a] != lines[b] {
                let mut swapped = lines.clone();
                swapped.swap(a, b);
                proptest::prop_assert!(!verifies((swapped.join("\n") + "\n").as_bytes()), "swapped lines {a} and {b}");
            }
        }
    }

    // Layout with every = 4 and 10 records:
    // 1:r1 2:r2 3:r3 4:r4 5:cp4 6:r5 7:r6 8:r7 9:r8 10:cp8 11:r9 12:r10 13:cp10(close)

    #[tokio::test]
    async fn clean_trail_verifies() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        let r = strict(d.path(), &pk);
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!((r.records, r.checkpoints, r.last_seq), (10, 3, 10));
        assert!(r.closed && r.torn_tails.is_empty());
    }

    #[tokio::test]
    async fn one_byte_modified() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        edit_lines(&only_file(d.path()), |l| {
            l[2] = l[2].replace("\"tenant\":\"t1\"", "\"tenant\":\"t2\"")
        });
        let p = verify(d.path(), &pk).problem.unwrap();
        assert_eq!((p.line, p.seq), (3, Some(3)));
        assert!(matches!(p.kind, ProblemKind::Modified(_)), "{p}");
        assert!(p.to_string().contains("modified"));
    }

    #[tokio::test]
    async fn modified_hash_or_garbled_line() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        let path = only_file(d.path());
        let mut bytes = fs::read(&path).unwrap();
        // Flip one byte inside line 1's JSON syntax.
        bytes[0] = b'[';
        fs::write(&path, &bytes).unwrap();
        let p = verify(d.path(), &pk).problem.unwrap();
        assert_eq!(p.line, 1);
        assert!(matches!(p.kind, ProblemKind::Modified(_)), "{p}");
    }

    #[tokio::test]
    async fn record_deleted() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        edit_lines(&only_file(d.path()), |l| {
            l.remove(6);
        });
        let p = verify(d.path(), &pk).problem.unwrap();
        assert_eq!(
            p.kind,
            ProblemKind::Deleted {
                expected: 6,
                found: 7
            },
            "{p}"
        );
    }

    #[tokio::test]
    async fn records_swapped() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        edit_lines(&only_file(d.path()), |l| l.swap(1, 2));
        let p = verify(d.path(), &pk).problem.unwrap();
        assert_eq!(
            p.kind,
            ProblemKind::Reordered {
                expected: 2,
                found: 3
            },
            "{p}"
        );
        assert_eq!(p.line, 2);
    }

    #[tokio::test]
    async fn truncated_at_line_boundary() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        edit_lines(&only_file(d.path()), |l| l.truncate(11));
        let r = verify(d.path(), &pk);
        assert!(r.ok() && !r.closed && r.last_seq == 9);
        let p = strict(d.path(), &pk).problem.unwrap();
        assert!(matches!(p.kind, ProblemKind::Truncated(_)), "{p}");
        assert!(p.to_string().contains("last checkpoint at seq 8"), "{p}");
    }

    #[tokio::test]
    async fn torn_tail_is_not_tampering() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        let path = only_file(d.path());
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut torn = lines[..11].join("\n");
        torn.push('\n');
        torn.push_str(&lines[11][..40]);
        fs::write(&path, torn).unwrap();
        let r = verify(d.path(), &pk);
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!(r.torn_tails, vec![path]);
        assert_eq!(r.last_seq, 9);
        assert!(!r.closed);
    }

    #[tokio::test]
    async fn forged_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        edit_lines(&only_file(d.path()), |l| {
            l[4] = l[4].replace("\"seq\":4", "\"seq\":3")
        });
        let p = verify(d.path(), &pk).problem.unwrap();
        assert_eq!((p.kind, p.line), (ProblemKind::BadSignature, 5));

        // A checkpoint signed with another key.
        let d2 = tempfile::tempdir().unwrap();
        write_trail(d2.path(), 10, 4, 1 << 20).await;
        let p = verify(d2.path(), &[0u8; 32]).problem.unwrap();
        assert_eq!(p.kind, ProblemKind::BadSignature);
    }

    #[tokio::test]
    async fn truncation_that_drops_checkpointed_records() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 10, 4, 1 << 20).await;
        // Remove r7 and r8 but keep the checkpoint for seq 8.
        edit_lines(&only_file(d.path()), |l| {
            l.drain(7..9);
        });
        let p = verify(d.path(), &pk).problem.unwrap();
        assert!(matches!(p.kind, ProblemKind::Truncated(_)), "{p}");
    }

    #[tokio::test]
    async fn rotation_and_missing_files() {
        let d = tempfile::tempdir().unwrap();
        let pk = write_trail(d.path(), 40, 0, 2000).await;
        let files = list_files(d.path()).unwrap();
        assert!(files.len() >= 3, "{}", files.len());
        let r = strict(d.path(), &pk);
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!(r.records, 40);
        assert_eq!(r.checkpoints as usize, files.len());

        fs::remove_file(files.last().unwrap()).unwrap();
        let p = verify(d.path(), &pk).problem.unwrap();
        assert!(matches!(p.kind, ProblemKind::Truncated(_)), "{p}");

        fs::remove_file(&files[1]).unwrap();
        let p = verify(d.path(), &pk).problem.unwrap();
        assert!(matches!(p.kind, ProblemKind::Deleted { .. }), "{p}");
    }

    #[tokio::test]
    async fn reopen_after_crash_continues_chain() {
        let d = tempfile::tempdir().unwrap();
        write_trail(d.path(), 10, 4, 1 << 20).await;
        // Simulate a crash: lose the close checkpoint and tear the last record.
        let path = only_file(d.path());
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        fs::write(
            &path,
            format!("{}\n{}", lines[..11].join("\n"), &lines[11][..30]),
        )
        .unwrap();
        let pk = write_trail(d.path(), 5, 4, 1 << 20).await;
        let r = strict(d.path(), &pk);
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!((r.records, r.last_seq, r.files), (14, 14, 2));
        assert_eq!(r.torn_tails, vec![path.clone()]);
        assert_eq!(r.unclean_ends, vec![path]);
        assert!(r.closed);
    }
}
