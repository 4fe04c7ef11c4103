//! Checkpoints: the signed line written every `checkpoint_every` records or
//! `checkpoint_interval`, before rotation and at close, naming the chain's sequence number and
//! hash, and the previous checkpoint.

use serde::{Deserialize, Serialize};

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
    /// The seq the checkpoint before this one covers (0 if none), so that removing a
    /// checkpoint shows. Absent in trails written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<u64>,
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
