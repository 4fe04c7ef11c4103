//! Reading a trail back for people: the stored record lines of the file sink's files or of the
//! PostgreSQL sink's rows, in chain order, from where the last read stopped (so a reader can
//! follow a trail as it grows, across rotations); and the three questions the command line
//! asks of them: a tenant's last records, the calls made with given arguments, the records of a
//! time window.
//!
//! Checkpoint lines are left out here: [`crate::verify`] is what checks them. Nothing here
//! changes a line: what a reader prints still hash-verifies.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::time::rfc3339_ms;
use crate::{AuditError, Kind, Record, list_files, read_file};

/// A readable trail.
pub enum Trail {
    /// The file sink's directory.
    Files(PathBuf),
    /// The `postgres` sink's URL (it may hold a password: never printed).
    Postgres(String),
}

/// Why a trail could not be read; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "no audit trail in {}: is [audit] dir right (or --dir)? The gateway writes it there once it has run with the file sink",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot read {}: {error}; check its permissions", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("a stored line is not an audit record ({0}): run `palisade audit verify` to find it")]
    NotARecord(String),
    #[error("record seq {seq} has an unreadable time {time:?}: run `palisade audit verify`")]
    BadTime { seq: u64, time: String },
    #[error(transparent)]
    Table(#[from] AuditError),
}

/// Where a read stopped: a file of the trail and how many of its bytes were read, or how many
/// rows of each replica's chain.
#[derive(Clone, Default)]
pub struct Position {
    file: Option<PathBuf>,
    offset: usize,
    rows: HashMap<String, usize>,
}

impl Trail {
    /// The stored record lines after `from` (all of them from `Position::default()`), in chain
    /// order, and where they end. The PostgreSQL table is read whole, every replica's chain in
    /// turn.
    pub async fn lines_after(&self, from: &Position) -> Result<(Vec<String>, Position), ReadError> {
        match self {
            Trail::Files(dir) => file_lines(dir, from),
            Trail::Postgres(url) => {
                let mut at = from.clone();
                let mut out = Vec::new();
                for (replica, lines) in crate::postgres::read_chains(url).await? {
                    let seen = at.rows.entry(replica).or_insert(0);
                    out.extend(
                        lines[(*seen).min(lines.len())..]
                            .iter()
                            .filter(|l| !is_checkpoint(l))
                            .cloned(),
                    );
                    *seen = lines.len();
                }
                Ok((out, at))
            }
        }
    }

    /// Every record of the trail, each with its stored line.
    pub async fn records(&self) -> Result<Vec<(String, Record)>, ReadError> {
        let (lines, _) = self.lines_after(&Position::default()).await?;
        parse(lines)
    }
}

fn is_checkpoint(line: &str) -> bool {
    line.starts_with("{\"checkpoint\"")
}

/// The record lines of the files in `dir` after `from`. A file's final line without a newline
/// is left out unless it is a whole record: a line torn by a crash, or one the gateway is still
/// writing (the next read after it is done returns it).
fn file_lines(dir: &Path, from: &Position) -> Result<(Vec<String>, Position), ReadError> {
    let files = match list_files(dir) {
        Ok(files) if !files.is_empty() => files,
        Ok(_) => return Err(ReadError::Missing(dir.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReadError::Missing(dir.to_owned()));
        }
        Err(error) => {
            return Err(ReadError::Io {
                path: dir.to_owned(),
                error,
            });
        }
    };
    let mut lines = Vec::new();
    let mut at = from.clone();
    for path in files {
        let start = match &from.file {
            Some(f) if path < *f => continue,
            Some(f) if path == *f => from.offset,
            _ => 0,
        };
        let text = match read_file(&path) {
            Ok(file) => file.text,
            Err(error) => return Err(ReadError::Io { path, error }),
        };
        let mut offset = start.min(text.len());
        for line in text.get(offset..).unwrap_or("").split_inclusive('\n') {
            let (body, whole) = match line.strip_suffix('\n') {
                Some(body) => (body, true),
                None => (line, serde_json::from_str::<Record>(line).is_ok()),
            };
            if !whole {
                break;
            }
            offset += line.len();
            if !body.is_empty() && !is_checkpoint(body) {
                lines.push(body.to_owned());
            }
        }
        at = Position {
            file: Some(path),
            offset,
            rows: HashMap::new(),
        };
    }
    Ok((lines, at))
}

/// Each line with its record.
pub fn parse(lines: Vec<String>) -> Result<Vec<(String, Record)>, ReadError> {
    lines
        .into_iter()
        .map(|line| match serde_json::from_str::<Record>(&line) {
            Ok(r) => Ok((line, r)),
            Err(e) => Err(ReadError::NotARecord(e.to_string())),
        })
        .collect()
}

/// A tenant's last `n` records, oldest first (several replicas' chains interleave in time).
pub fn last_of_tenant(
    records: Vec<(String, Record)>,
    tenant: &str,
    n: usize,
) -> Vec<(String, Record)> {
    let mut own: Vec<_> = records
        .into_iter()
        .filter(|(_, r)| r.tenant == tenant)
        .collect();
    own.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    own.split_off(own.len().saturating_sub(n))
}

/// The calls of one tenant made with given arguments.
#[derive(Debug, Default)]
pub struct Calls {
    /// Each BEGIN or DENIED record, with its END if there is one.
    pub found: Vec<(Record, Option<Record>)>,
    /// Calls fingerprinted under another key than the one asked for: they cannot be matched.
    pub other_keys: usize,
}

/// `tenant`'s calls (of `tool` only, if given, as its server names it) whose arguments had
/// `fingerprint` under the key `key_id`.
pub fn calls_with(
    records: Vec<Record>,
    tenant: &str,
    tool: Option<&str>,
    (key_id, fingerprint): (&str, &str),
) -> Calls {
    let records: Vec<Record> = records.into_iter().filter(|r| r.tenant == tenant).collect();
    let ends: HashMap<&str, &Record> = records
        .iter()
        .filter(|r| r.kind == Kind::End)
        .map(|r| (r.id.as_str(), r))
        .collect();
    let mut calls = Calls::default();
    for r in records
        .iter()
        .filter(|r| matches!(r.kind, Kind::Begin | Kind::Denied))
        .filter(|r| tool.is_none_or(|t| r.target.as_deref() == Some(t)))
    {
        if r.key_id.as_deref() != Some(key_id) {
            calls.other_keys += usize::from(r.key_id.is_some());
            continue;
        }
        if r.args_fingerprint.as_deref() == Some(fingerprint) {
            let end = ends.get(r.id.as_str()).map(|e| (*e).clone());
            calls.found.push((r.clone(), end));
        }
    }
    calls
}

/// The stored lines of the records written in `[since, until)` (Unix milliseconds; either end
/// open when `None`), of `tenant` only if given, in chain order.
pub fn window(
    records: Vec<(String, Record)>,
    since: Option<i64>,
    until: Option<i64>,
    tenant: Option<&str>,
) -> Result<Vec<String>, ReadError> {
    let mut out = Vec::new();
    for (line, r) in records {
        if tenant.is_some_and(|t| r.tenant != t) {
            continue;
        }
        if since.is_some() || until.is_some() {
            let t = rfc3339_ms(&r.time).ok_or(ReadError::BadTime {
                seq: r.seq,
                time: r.time.clone(),
            })?;
            if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                continue;
            }
        }
        out.push(line);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, kind: Kind, tenant: &str, time: &str) -> Record {
        let mut r = Record::new(kind, tenant, "s", "tools/call");
        r.seq = seq;
        r.time = time.into();
        r
    }

    fn line(r: &Record) -> String {
        serde_json::to_string(r).unwrap()
    }

    /// Records of `tenant` at `times`, numbered from 1, each with its line.
    fn stored(at: &[(&str, &str)]) -> Vec<(String, Record)> {
        (1..)
            .zip(at)
            .map(|(seq, (tenant, time))| record(seq, Kind::Begin, tenant, time))
            .map(|r| (line(&r), r))
            .collect()
    }

    #[tokio::test]
    async fn a_followed_trail_gives_each_line_once_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let trail = Trail::Files(dir.path().to_owned());
        assert!(matches!(
            trail.lines_after(&Position::default()).await,
            Err(ReadError::Missing(_))
        ));
        let t = "2026-01-01T00:00:00.000Z";
        let (a, b, c) = (
            record(1, Kind::Begin, "acme", t),
            record(2, Kind::End, "acme", t),
            record(3, Kind::Begin, "globex", t),
        );
        let first = dir
            .path()
            .join("audit-00000000000000000001-0000000000001.jsonl");
        // A checkpoint, a record, and a record still being written (no newline, not whole).
        let torn = &line(&b)[..20];
        std::fs::write(
            &first,
            format!("{{\"checkpoint\":1}}\n{}\n{torn}", line(&a)),
        )
        .unwrap();
        let (lines, at) = trail.lines_after(&Position::default()).await.unwrap();
        assert_eq!(lines, [line(&a)]);
        // The line is finished, and the trail rotates to a second file.
        std::fs::write(
            &first,
            format!("{{\"checkpoint\":1}}\n{}\n{}\n", line(&a), line(&b)),
        )
        .unwrap();
        let second = dir
            .path()
            .join("audit-00000000000000000003-0000000000002.jsonl");
        std::fs::write(&second, format!("{}\n", line(&c))).unwrap();
        let (lines, at) = trail.lines_after(&at).await.unwrap();
        assert_eq!(lines, [line(&b), line(&c)]);
        assert!(trail.lines_after(&at).await.unwrap().0.is_empty());
        assert_eq!(trail.records().await.unwrap().len(), 3);
    }

    #[test]
    fn a_line_that_is_not_a_record_is_named_as_such() {
        assert!(matches!(
            parse(vec!["{}".into()]),
            Err(ReadError::NotARecord(_))
        ));
    }

    #[test]
    fn a_tenants_last_records_come_oldest_first() {
        let rs = stored(&[
            ("acme", "2026-01-01T00:00:03.000Z"),
            ("globex", "2026-01-01T00:00:04.000Z"),
            ("acme", "2026-01-01T00:00:01.000Z"),
            ("acme", "2026-01-01T00:00:02.000Z"),
        ]);
        let seqs = |v: Vec<(String, Record)>| v.iter().map(|(_, r)| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(last_of_tenant(rs.clone(), "acme", 2)), [4, 1]);
        assert_eq!(seqs(last_of_tenant(rs, "acme", 10)), [3, 4, 1]);
    }

    #[test]
    fn calls_are_found_by_fingerprint_under_their_key_with_their_end() {
        let t = "2026-01-01T00:00:00.000Z";
        let with = |seq, kind, tenant: &str, key: &str, fp: &str, tool: &str| {
            let mut r = record(seq, kind, tenant, t);
            r.key_id = Some(key.into());
            r.args_fingerprint = Some(fp.into());
            r.target = Some(tool.into());
            r
        };
        let begin = with(1, Kind::Begin, "acme", "k1", "f", "echo");
        let mut end = record(2, Kind::End, "acme", t);
        end.id = begin.id.clone();
        let records = vec![
            begin.clone(),
            end.clone(),
            with(3, Kind::Denied, "acme", "k1", "f", "other"),
            with(4, Kind::Begin, "acme", "k1", "g", "echo"),
            with(5, Kind::Begin, "globex", "k1", "f", "echo"),
            with(6, Kind::Begin, "acme", "k0", "f", "echo"),
        ];
        let all = calls_with(records.clone(), "acme", None, ("k1", "f"));
        let seqs: Vec<_> = all.found.iter().map(|(r, _)| r.seq).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(all.found[0].1.as_ref().map(|e| e.seq), Some(2));
        assert_eq!(all.found[1].1, None);
        assert_eq!(all.other_keys, 1);
        let echo = calls_with(records, "acme", Some("echo"), ("k1", "f"));
        assert_eq!(echo.found.len(), 1);
    }

    #[test]
    fn a_window_keeps_its_start_and_not_its_end() {
        let rs = stored(&[
            ("acme", "2026-01-01T00:00:00.000Z"),
            ("globex", "2026-01-01T00:00:01.000Z"),
            ("acme", "2026-01-01T00:00:02.000Z"),
        ]);
        let at = |s: &str| rfc3339_ms(s);
        let lines = window(
            rs.clone(),
            at("2026-01-01T00:00:00Z"),
            at("2026-01-01T00:00:02Z"),
            None,
        )
        .unwrap();
        assert_eq!(lines, [rs[0].0.clone(), rs[1].0.clone()]);
        assert_eq!(
            window(rs.clone(), None, None, Some("acme")).unwrap().len(),
            2
        );
        let mut bad = rs[0].1.clone();
        bad.time = "yesterday".into();
        assert!(matches!(
            window(vec![(line(&bad), bad)], Some(0), None, None),
            Err(ReadError::BadTime { seq: 1, .. })
        ));
        // Without a time bound the time is not read.
        assert_eq!(window(rs, None, None, None).unwrap().len(), 3);
    }
}
