//! The hash chain over exact stored bytes.
//!
//! A stored record line is `serde_json::to_string(&record)` (fields in declaration order, no
//! whitespace) followed by `\n`. The `hash` field is always last, so every line ends with
//! `,"hash":"<64 lowercase hex>"}`. Call everything before that suffix the *body*:
//!
//! ```text
//! line = body ++ ",\"hash\":\"" ++ hex(hash) ++ "\"}"
//! hash = SHA-256( prev_hash_bytes (32 raw bytes) ++ body bytes )
//! ```
//!
//! `prev_hash` is the previous record's hash (32 zero bytes for the first record ever, see
//! [`GENESIS_HASH`]); the body also contains `"prev_hash":"<hex>"`. Verification never
//! re-canonicalizes: it hashes the bytes as stored.

use sha2::{Digest, Sha256};

use crate::{AuditError, Record};

/// `prev_hash` of the first record in a trail.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

const HASH_PREFIX: &str = ",\"hash\":\"";
const SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// Where a stored chain ends: its last record's seq and hash.
pub type Head = (u64, [u8; 32]);

/// SHA-256 over `prev ++ body`.
pub fn hash_line(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    out
}

/// Splits a stored line (without its newline) into `(body, hash hex)`, or `None` if it does
/// not end with a well-formed `,"hash":"<64 hex>"}`.
pub fn split_line(line: &str) -> Option<(&str, &str)> {
    if line.len() < SUFFIX_LEN || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - SUFFIX_LEN;
    let (body, rest) = (line.get(..cut)?, line.get(cut..)?);
    let hex = rest.strip_prefix(HASH_PREFIX)?.strip_suffix("\"}")?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Some((body, hex))
    } else {
        None
    }
}

/// Chain state: the next sequence number, the head hash, and the seq the last checkpoint
/// covers (each checkpoint names the one before it, so removing one shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    head: [u8; 32],
    checkpoint: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
}

impl Chain {
    /// An empty trail: first seq 1, prev hash [`GENESIS_HASH`].
    pub fn new() -> Self {
        Chain {
            next_seq: 1,
            head: GENESIS_HASH,
            checkpoint: 0,
        }
    }

    /// Continue after a record with `last_seq` and hash `head`, the last checkpoint covering
    /// seq `last_checkpoint` (0 if none).
    pub fn resume(last_seq: u64, head: [u8; 32], last_checkpoint: u64) -> Self {
        Chain {
            next_seq: last_seq + 1,
            head,
            checkpoint: last_checkpoint,
        }
    }

    /// Seq the last checkpoint covers (0 if none).
    pub fn last_checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// A checkpoint now covers the chain up to its last record.
    pub fn checkpointed(&mut self) {
        self.checkpoint = self.last_seq();
    }

    /// Seq of the last appended record (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Hash of the last appended record ([`GENESIS_HASH`] if none).
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// Assigns `seq`, `prev_hash` and `hash` to `rec` and returns its stored line (no newline).
    pub fn append(&mut self, rec: &mut Record) -> Result<String, AuditError> {
        rec.seq = self.next_seq;
        rec.prev_hash = hex::encode(self.head);
        rec.hash = String::new();
        let unhashed =
            serde_json::to_string(&*rec).map_err(|e| AuditError::Encode(e.to_string()))?;
        let body = unhashed
            .strip_suffix(",\"hash\":\"\"}")
            .ok_or_else(|| AuditError::Encode("hash is not the last field".into()))?;
        let hash = hash_line(&self.head, body.as_bytes());
        rec.hash = hex::encode(hash);
        let line = format!("{body}{HASH_PREFIX}{}\"}}", rec.hash);
        self.next_seq += 1;
        self.head = hash;
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn line_format_and_linking() {
        let mut c = Chain::new();
        let mut r1 = Record::new(Kind::Begin, "t1", "s", "tools/call");
        let l1 = c.append(&mut r1).unwrap();
        let mut r2 = Record::new(Kind::End, "t1", "s", "tools/call");
        let l2 = c.append(&mut r2).unwrap();
        assert!(l1.starts_with("{\"seq\":1,\"id\":"));
        assert!(l1.ends_with(&format!(",\"hash\":\"{}\"}}", r1.hash)));
        let (b1, h1) = split_line(&l1).unwrap();
        assert_eq!(hex::encode(hash_line(&GENESIS_HASH, b1.as_bytes())), h1);
        let (b2, h2) = split_line(&l2).unwrap();
        assert_eq!(r2.prev_hash, h1);
        let mut prev = [0u8; 32];
        hex::decode_to_slice(h1, &mut prev).unwrap();
        assert_eq!(hex::encode(hash_line(&prev, b2.as_bytes())), h2);
        assert_eq!((r2.seq, c.last_seq()), (2, 2));
        let parsed: Record = serde_json::from_str(&l2).unwrap();
        assert_eq!(parsed, r2);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), l2);
    }

    #[test]
    fn split_rejects_bad_suffix() {
        assert!(split_line("{\"a\":1}").is_none());
        let bad = format!("{{\"a\":1,\"hash\":\"{}\"}}", "G".repeat(64));
        assert!(split_line(&bad).is_none());
    }
}
