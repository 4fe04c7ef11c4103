//! The audit verifier on arbitrary trail bytes: `palisade_audit::verify_sources` (what
//! `palisade audit verify` runs over the files or the database rows), which parses every line
//! as a record or a signed checkpoint, and the line helpers `split_line` and `canonical_json`.
//!
//! Input: up to four "files" separated by NUL (a NUL ends a file's text, as the file reader's
//! preallocated padding does).
//!
//! Checks:
//! - no panic, whatever the lines (torn, reordered, huge numbers, bad signatures);
//! - a report without a problem is consistent: its records are numbered 1..=last_seq, the head
//!   is 64 hex digits, and it has no more records and checkpoints than lines;
//! - `split_line` splits only a line ending in `,"hash":"<64 hex>"}` and the parts rebuild it;
//! - `canonical_json` (RFC 8785, used for argument fingerprints) is idempotent: its output
//!   parses and canonicalizes to itself, large doubles included (a finding, fixed: README.md).
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use palisade_audit::{FileText, VerifyOptions, canonical_json, split_line, verify_sources};

/// The public key checkpoints are checked against (no fuzz input can sign for it).
const PUBLIC_KEY: [u8; 32] = [0x3b; 32];

fuzz_target!(|data: &[u8]| {
    let files: Vec<&[u8]> = data.split(|b| *b == 0).take(4).collect();
    let lines: usize = files.iter().map(|f| f.split(|b| *b == b'\n').count()).sum();
    let sources = files.iter().enumerate().map(|(i, f)| {
        let text = FileText {
            text: String::from_utf8_lossy(f).into_owned(),
            garbage_after_padding: false,
        };
        (PathBuf::from(format!("audit-{i}.jsonl")), Ok(text))
    });
    for expect_closed in [false, true] {
        let report = verify_sources(
            &PathBuf::from("trail"),
            files.len(),
            sources.clone(),
            &PUBLIC_KEY,
            VerifyOptions { expect_closed },
        );
        assert_eq!(report.files, files.len());
        assert_eq!(report.head.len(), 64);
        if report.ok() {
            assert_eq!(
                report.records, report.last_seq,
                "records not numbered 1..=last_seq"
            );
            assert!((report.records + report.checkpoints) as usize <= lines);
            assert!(report.last_checkpoint_seq <= report.last_seq);
        }
        let _ = report.problem.map(|p| p.to_string());
    }

    for line in files.iter().flat_map(|f| f.split(|b| *b == b'\n')) {
        let line = String::from_utf8_lossy(line);
        if let Some((body, hash)) = split_line(&line) {
            assert_eq!(hash.len(), 64);
            assert_eq!(format!("{body},\"hash\":\"{hash}\"}}"), line);
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            let c = canonical_json(&v);
            let back: serde_json::Value = serde_json::from_str(&c)
                .unwrap_or_else(|e| panic!("canonical JSON does not parse: {e}: {c}"));
            assert_eq!(canonical_json(&back), c, "canonical_json is not idempotent");
        }
    }
});
