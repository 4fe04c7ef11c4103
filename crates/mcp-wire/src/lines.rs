//! Newline-delimited framing (the stdio transport), without I/O: bytes go in with
//! [`Lines::push`], lines come out of [`Lines::next_line`], each without its `\n` (or `\r\n`).
//!
//! Invariant: the buffer never holds more than `max + 1` bytes (a line of `max` and its `\r`)
//! plus the last chunk pushed, whatever the peer writes. A line longer than `max` is refused ([`OverLong::Refuse`], for messages: a
//! cut message is not a message) or cut to `max` bytes with the rest skipped
//! ([`OverLong::Truncate`], for log lines).

use bytes::{Buf, BytesMut};

/// What to do with a line longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLong {
    /// Fail: the stream cannot be framed any further.
    Refuse,
    /// Yield its first `max` bytes and skip the rest.
    Truncate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a line longer than {max} bytes")]
pub struct TooLong {
    pub max: usize,
}

/// A line splitter with a bound on line length (see the module comment).
#[derive(Debug)]
pub struct Lines {
    buf: BytesMut,
    max: usize,
    over_long: OverLong,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    /// Skipping the rest of a truncated line.
    discarding: bool,
}

impl Lines {
    pub fn new(max: usize, over_long: OverLong) -> Lines {
        Lines {
            buf: BytesMut::with_capacity(8192),
            max,
            over_long,
            scanned: 0,
            discarding: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held, not yet returned as a line.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete line, or `None` until more bytes are pushed.
    pub fn next_line(&mut self) -> Result<Option<BytesMut>, TooLong> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + pos;
                let mut line = self.buf.split_to(end);
                self.buf.advance(1);
                self.scanned = 0;
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                if line.len() > self.max {
                    self.refuse()?;
                    line.truncate(self.max);
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            // A line of exactly `max` may still be waiting for the `\n` after its `\r`.
            let pending_cr = self.buf.len() == self.max + 1 && self.buf.last() == Some(&b'\r');
            if self.buf.len() <= self.max || pending_cr {
                return Ok(None);
            }
            self.refuse()?;
            let cut = (!self.discarding).then(|| self.buf.split_to(self.max));
            self.buf.clear();
            self.scanned = 0;
            self.discarding = true;
            if cut.is_some() {
                return Ok(cut);
            }
        }
    }

    /// At the end of the stream: the last line if it had no newline.
    pub fn finish(&mut self) -> Result<Option<BytesMut>, TooLong> {
        self.scanned = 0;
        if self.buf.is_empty() || std::mem::take(&mut self.discarding) {
            self.buf.clear();
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.buf);
        if line.len() > self.max {
            self.refuse()?;
            line.truncate(self.max);
        }
        Ok(Some(line))
    }

    fn refuse(&self) -> Result<(), TooLong> {
        match self.over_long {
            OverLong::Refuse => Err(TooLong { max: self.max }),
            OverLong::Truncate => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mode: OverLong, data: &[u8]) -> (Vec<Vec<u8>>, Option<TooLong>) {
        let mut lines = Lines::new(8, mode);
        lines.push(data);
        let mut out = Vec::new();
        loop {
            match lines.next_line() {
                Ok(Some(l)) => out.push(l.to_vec()),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        match lines.finish() {
            Ok(last) => out.extend(last.map(|l| l.to_vec())),
            Err(e) => return (out, Some(e)),
        }
        (out, None)
    }

    #[test]
    fn lines_are_bounded() {
        let data: &[u8] = b"one\r\ntwo\nthree-is-long\nfour";
        let (lines, err) = all(OverLong::Refuse, data);
        assert_eq!(lines, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(err, Some(TooLong { max: 8 }));

        let (lines, err) = all(OverLong::Truncate, data);
        let want: [&[u8]; 4] = [b"one", b"two", b"three-is", b"four"];
        assert_eq!(lines, want);
        assert_eq!(err, None);
    }

    #[test]
    fn a_long_line_without_newline_is_cut_once_and_skipped() {
        let mut lines = Lines::new(4, OverLong::Truncate);
        lines.push(b"abcdefgh");
        assert_eq!(&lines.next_line().unwrap().unwrap()[..], b"abcd");
        lines.push(b"ijkl");
        assert!(lines.next_line().unwrap().is_none());
        assert_eq!(lines.buffered(), 4);
        lines.push(b"mn\nok\n");
        assert_eq!(&lines.next_line().unwrap().unwrap()[..], b"ok");
        assert!(lines.finish().unwrap().is_none());
    }

    #[test]
    fn a_line_of_the_limit_may_wait_for_the_newline_after_its_cr() {
        let mut lines = Lines::new(4, OverLong::Refuse);
        lines.push(b"abcd\r");
        assert!(lines.next_line().unwrap().is_none());
        lines.push(b"\nabcd\r");
        assert_eq!(&lines.next_line().unwrap().unwrap()[..], b"abcd");
        assert!(lines.next_line().unwrap().is_none());
        assert_eq!(lines.finish(), Err(TooLong { max: 4 }));
    }
}
