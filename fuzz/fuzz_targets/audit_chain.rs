//! Audit lines written and verified: records with fuzzer-chosen field values chained with
//! `palisade_audit::Chain::append`, signed checkpoints (`CheckpointLine`), rotations into new
//! files, then `verify_sources` over the result, untouched and with one byte changed.
//!
//! Input fields (split at NUL): operations (one byte each), a tamper spec (line, offset,
//! byte), then a pool of strings used as field values.
//!
//! Checks:
//! - no panic writing or verifying any record text (control characters, quotes, non-ASCII);
//! - an untouched trail verifies: no problem, every record and checkpoint counted, the head
//!   is the chain's head, `closed` exactly when it ends with a close checkpoint;
//! - any single changed byte in any line is reported as a problem (never accepted);
//! - argument fingerprints do not depend on key order or whitespace (`Fingerprinter` over
//!   RFC 8785 canonical JSON), large doubles included (a finding, fixed: README.md).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use palisade_audit::{
    Chain, Checkpoint, CheckpointLine, FileText, Fingerprinter, Kind, Record, VerifyOptions,
    canonical_json, verify_sources,
};
use palisade_fuzz::{fields, text};

fn key() -> &'static Ed25519KeyPair {
    static K: OnceLock<Ed25519KeyPair> = OnceLock::new();
    K.get_or_init(|| Ed25519KeyPair::from_seed_unchecked(&[0x42; 32]).expect("seed"))
}

fn checkpoint(chain: &mut Chain, reason: &str, time: &str) -> String {
    let checkpoint = Checkpoint {
        seq: chain.last_seq(),
        hash: hex::encode(chain.head()),
        time: time.to_owned(),
        reason: reason.to_owned(),
        prev: Some(chain.last_checkpoint()),
    };
    chain.checkpointed();
    let sig = key().sign(&checkpoint.signed_bytes());
    let line = CheckpointLine {
        checkpoint,
        sig: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
    };
    serde_json::to_string(&line).expect("checkpoint line")
}

fn verify(files: &[Vec<String>], expect_closed: bool) -> palisade_audit::Report {
    let sources = files.iter().enumerate().map(|(i, lines)| {
        let mut text = String::new();
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        (
            PathBuf::from(format!("audit-{i}.jsonl")),
            Ok(FileText {
                text,
                garbage_after_padding: false,
            }),
        )
    });
    verify_sources(
        &PathBuf::from("trail"),
        files.len(),
        sources,
        key().public_key().as_ref(),
        VerifyOptions { expect_closed },
    )
}

fuzz_target!(|data: &[u8]| {
    let f = fields(data, 3);
    let (ops, tamper) = (&f[0][..f[0].len().min(48)], f[1]);
    let pool: Vec<String> = f[2].split(|b| *b == b'\n').map(text).collect();
    let pick = |i: usize| pool[i % pool.len()].as_str();

    let mut chain = Chain::new();
    let mut files: Vec<Vec<String>> = vec![Vec::new()];
    let (mut records, mut checkpoints) = (0u64, 0u64);
    for (i, &op) in ops.iter().enumerate() {
        match op & 3 {
            0 | 1 => {
                let kind =
                    [Kind::Begin, Kind::End, Kind::Denied, Kind::Admin][(op >> 2) as usize & 3];
                let mut r = Record::new(kind, pick(i), pick(i + 1), pick(i + 2));
                if op & 0x10 != 0 {
                    r.session = Some(pick(i + 3).to_owned());
                    r.server = Some(pick(i + 4).to_owned());
                    r.target = Some(pick(i + 5).to_owned());
                    r.decision = Some(pick(i + 6).to_owned());
                }
                if op & 0x20 != 0 {
                    r.outcome = Some(pick(i + 7).to_owned());
                    r.args_bytes = Some(u64::MAX >> (op >> 6));
                    r.latency_us = Some(u64::from(op) << 40);
                    r.replica = pick(i + 8).to_owned();
                    r.id = pick(i + 9).to_owned();
                    r.time = pick(i + 10).to_owned();
                }
                let line = chain.append(&mut r).expect("a record always encodes");
                files.last_mut().expect("a file").push(line);
                records += 1;
            }
            2 => {
                let line = checkpoint(&mut chain, "periodic", pick(i));
                files.last_mut().expect("a file").push(line);
                checkpoints += 1;
            }
            _ => {
                let line = checkpoint(&mut chain, "rotate", pick(i));
                files.last_mut().expect("a file").push(line);
                checkpoints += 1;
                files.push(Vec::new());
            }
        }
    }
    let closed = ops.len() % 2 == 1;
    if closed {
        files
            .last_mut()
            .expect("a file")
            .push(checkpoint(&mut chain, "close", "now"));
        checkpoints += 1;
    }

    let report = verify(&files, closed);
    assert!(
        report.ok(),
        "untouched trail refused: {:?}\n{files:#?}",
        report.problem
    );
    assert_eq!(report.records, records);
    assert_eq!(report.checkpoints, checkpoints);
    assert_eq!(report.last_seq, chain.last_seq());
    assert_eq!(report.head, hex::encode(chain.head()));
    assert_eq!(report.closed, closed);
    assert!(report.torn_tails.is_empty() && report.unclean_ends.is_empty());

    // One byte changed anywhere must be noticed.
    let total: usize = files.iter().map(Vec::len).sum();
    if tamper.len() >= 4 && total > 0 {
        let mut which = u16::from_le_bytes([tamper[0], tamper[1]]) as usize % total;
        let (fi, li) = files
            .iter()
            .enumerate()
            .find_map(|(fi, lines)| {
                if which < lines.len() {
                    Some((fi, which))
                } else {
                    which -= lines.len();
                    None
                }
            })
            .expect("a line");
        let mut bytes = files[fi][li].clone().into_bytes();
        let at = tamper[2] as usize * 7 % bytes.len();
        if bytes[at] != tamper[3] {
            bytes[at] = tamper[3];
            let mut changed = files.clone();
            changed[fi][li] = String::from_utf8_lossy(&bytes).into_owned();
            let report = verify(&changed, false);
            assert!(
                !report.ok(),
                "a changed byte went unnoticed: file {fi} line {li} offset {at} -> {:#04x}\n{}",
                tamper[3],
                changed[fi][li]
            );
        }
    }

    // Fingerprints of JSON arguments are canonical.
    let fp = Fingerprinter::new([9; 32], "k1");
    for s in pool.iter().take(4) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
            let canon: serde_json::Value =
                serde_json::from_str(&canonical_json(&v)).expect("canonical parses");
            assert_eq!(fp.fingerprint("t", &v), fp.fingerprint("t", &canon));
        }
    }
});
