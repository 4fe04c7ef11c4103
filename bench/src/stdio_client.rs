//! Drives a stdio MCP server directly: many concurrent callers multiplexed over one child's
//! stdin/stdout (newline-delimited JSON-RPC), each request with a unique id.
//!
//! This is the "direct" baseline for a stdio upstream. A writer task batches whatever requests
//! are queued into one flush; a reader task routes each response line to the caller waiting for
//! its id. When the child's stdout closes, every waiting and later call fails with
//! [`CallError::Closed`].

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

use crate::driver::Caller;
use crate::mcp::{self, CallError, Era};

/// The longest line the reader accepts from the child.
const MAX_LINE: usize = 16 * 1024 * 1024;

type Pending = Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>;

/// One stdio child shared by all callers.
pub struct StdioMux {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Pending>,
    closed: Arc<AtomicBool>,
    next_id: AtomicU64,
    timeout: Duration,
}

/// Starts `command_line` (program and arguments separated by whitespace) with piped stdin and
/// stdout; stderr is inherited. The child is killed when the returned [`Child`] is dropped.
pub fn spawn(command_line: &str, timeout: Duration) -> anyhow::Result<(Arc<StdioMux>, Child)> {
    let mut words = command_line.split_whitespace();
    let Some(program) = words.next() else {
        bail!("empty --stdio-cmd");
    };
    let mut child = Command::new(program)
        .args(words)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {program:?}"))?;
    let stdin = child.stdin.take().context("child has no stdin")?;
    let stdout = child.stdout.take().context("child has no stdout")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let pending: Arc<Pending> = Arc::default();
    let closed = Arc::new(AtomicBool::new(false));
    tokio::spawn(write_loop(stdin, rx, closed.clone()));
    tokio::spawn(read_loop(stdout, pending.clone(), closed.clone()));
    let mux = StdioMux {
        tx,
        pending,
        closed,
        next_id: AtomicU64::new(1),
        timeout,
    };
    Ok((Arc::new(mux), child))
}

async fn write_loop(
    stdin: ChildStdin,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    closed: Arc<AtomicBool>,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, stdin);
    while let Some(first) = rx.recv().await {
        let mut result = out.write_all(&first).await;
        while result.is_ok() {
            match rx.try_recv() {
                Ok(more) => result = out.write_all(&more).await,
                Err(_) => break,
            }
        }
        if result.is_err() || out.flush().await.is_err() {
            break;
        }
    }
    closed.store(true, Ordering::SeqCst);
}

#[derive(Deserialize)]
struct Routing<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
}

async fn read_loop(stdout: ChildStdout, pending: Arc<Pending>, closed: Arc<AtomicBool>) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let mut bounded = (&mut reader).take(MAX_LINE as u64 + 1);
        match bounded.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            // A line without end: the framing is lost, treat the child as gone.
            Ok(_) if line.len() > MAX_LINE => break,
            Ok(_) => {}
        }
        let id = serde_json::from_slice::<Routing<'_>>(&line)
            .ok()
            .filter(|r| r.method.is_none())
            .and_then(|r| r.id)
            .and_then(|id| id.get().parse::<u64>().ok());
        let Some(id) = id else {
            continue; // notifications, server requests, noise
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(std::mem::take(&mut line));
        }
    }
    closed.store(true, Ordering::SeqCst);
    // Dropping the senders wakes every waiting caller with `Closed`.
    pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

impl StdioMux {
    /// A request id no other caller uses.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Sends one request line and waits for the response line with the same id.
    pub async fn request(&self, id: u64, mut body: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        if self.closed.load(Ordering::SeqCst) {
            self.forget(id);
            return Err(CallError::Closed);
        }
        body.push(b'\n');
        if self.tx.send(body).is_err() {
            self.forget(id);
            return Err(CallError::Closed);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => {
                self.forget(id);
                Err(CallError::Timeout)
            }
        }
    }

    /// Sends one notification line.
    pub fn notify(&self, body: &[u8]) -> Result<(), CallError> {
        let mut line = body.to_vec();
        line.push(b'\n');
        self.tx.send(line).map_err(|_| CallError::Closed)
    }

    /// Legacy era: `initialize` and `notifications/initialized` (once for the whole pipe).
    pub async fn handshake(&self, era: Era) -> Result<(), CallError> {
        if era == Era::Modern {
            return Ok(());
        }
        let id = self.next_id();
        let line = self.request(id, mcp::initialize_body(id)).await?;
        mcp::verify_message(&line, id, mcp::check_initialize)?;
        self.notify(mcp::INITIALIZED_BODY)
    }

    /// One `tools/call`, verified.
    pub async fn call(&self, era: Era, call: &mcp::ToolCall) -> Result<(), CallError> {
        let id = self.next_id();
        let line = self.request(id, mcp::call_body(era, id, call)).await?;
        mcp::verify_message(&line, id, |r| call.check(r))
    }
}

/// One of the concurrent callers sharing a [`StdioMux`].
pub struct StdioCaller {
    pub mux: Arc<StdioMux>,
    pub era: Era,
    pub call: Arc<mcp::ToolCall>,
}

impl Caller for StdioCaller {
    async fn call(&mut self) -> Result<(), CallError> {
        self.mux.call(self.era, &self.call).await
    }
}
