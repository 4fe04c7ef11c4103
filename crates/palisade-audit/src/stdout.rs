//! The stream sink: every stored line (records and checkpoints) as one JSON line on a stream,
//! normally the gateway's stdout, for a log shipper to forward to a SIEM.
//!
//! A batch counts as durable once it is written and flushed: the shipper owns it from there.
//! A write error (the reader went away) fails the batch, so with this sink configured calls fail
//! closed rather than go unrecorded. Lines already flushed cannot be taken back: after a failed
//! batch the stream may repeat a seq, which the chain makes visible.

use std::io::{self, Write};

use crate::log::Sink;

/// Lines to a stream, flushed once per batch.
pub struct StreamSink {
    out: Box<dyn Write + Send>,
    pending: Vec<u8>,
    flushed: u64,
}

impl StreamSink {
    /// The process's standard output.
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()))
    }

    /// Any stream (tests use a pipe or a file).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        StreamSink {
            out,
            pending: Vec::new(),
            flushed: 0,
        }
    }
}

impl Sink for StreamSink {
    fn len(&self) -> u64 {
        self.flushed + self.pending.len() as u64
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.out.write_all(&self.pending)?;
        self.out.flush()?;
        self.flushed += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.pending.clear();
        self.flushed = len;
        Ok(())
    }
    fn rotate(&mut self, _first_seq: u64) -> io::Result<()> {
        Ok(())
    }
}
