//! The stdio transport: an upstream as a child process speaking newline-delimited JSON-RPC.
//!
//! The child starts from an empty environment plus what its config names (invariant 4), in its
//! own process group so that stopping it takes its whole tree. Its stdout is hostile input: a
//! line longer than the limit, or one that is not a JSON-RPC message, closes the link and kills
//! the child (the supervisor restarts it); its stderr goes to the gateway log, tagged with the
//! server and truncated per line.

use std::process::Stdio as ProcStdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mcp_wire::Message;
use mcp_wire::lines::{Lines, OverLong};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use palisade_ids::TenantId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Link, Upstream, sandbox};
use crate::config;

const MAX_STDERR_LINE: usize = 4096;
/// Messages queued for the child's stdin before callers are refused (it is not reading).
const STDIN_QUEUE: usize = 1024;
/// Bytes gathered into one write to the child's stdin.
const MAX_BATCH: usize = 256 * 1024;

/// The reading half of a freshly spawned child, handed to [`StdioTransport::start_reader`].
pub(crate) struct Inbox {
    stdout: ChildStdout,
    stderr: ChildStderr,
    child: Child,
}

pub(crate) struct StdioTransport {
    name: Arc<str>,
    writer: std::sync::Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    pgid: Pid,
    max_line: usize,
    exited: CancellationToken,
    /// The sandboxed instance's own cgroup: torn down with it.
    cgroup: Option<palisade_sandbox::Cgroup>,
}

impl StdioTransport {
    /// The child's pid (it leads its own process group).
    pub(crate) fn pid(&self) -> u32 {
        self.pgid.as_raw() as u32
    }

    /// Starts the child: directly, or through the sandbox helper (which makes itself a session
    /// and process-group leader, so it must not be made one here).
    pub(crate) fn spawn(
        name: &Arc<str>,
        cfg: &config::Stdio,
        sandbox: Option<sandbox::Spawn>,
    ) -> std::io::Result<(StdioTransport, Inbox)> {
        let (mut cmd, cgroup) = match sandbox {
            Some(s) => {
                let mut cmd = Command::new(&s.program);
                cmd.args(&s.args);
                (cmd, s.cgroup)
            }
            None => {
                let mut cmd = Command::new(&cfg.command);
                cmd.args(&cfg.args).process_group(0);
                (cmd, None)
            }
        };
        cmd.env_clear()
            .envs(&cfg.env)
            .stdin(ProcStdio::piped())
            .stdout(ProcStdio::piped())
            .stderr(ProcStdio::piped())
            .kill_on_drop(true);
        if !cfg.env.contains_key("PATH") {
            cmd.env("PATH", config::DEFAULT_CHILD_PATH);
        }
        if let Some(cwd) = &cfg.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start `{}`: {e}", cfg.command))
        })?;
        let (Some(stdin), Some(stdout), Some(stderr), Some(pid)) = (
            child.stdin.take(),
            child.stdout.take(),
            child.stderr.take(),
            child.id(),
        ) else {
            return Err(std::io::Error::other("child process has no pipes"));
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
        tokio::spawn(async move {
            let mut stdin = stdin;
            let mut batch = Vec::with_capacity(8192);
            while let Some(first) = rx.recv().await {
                // Everything already queued goes out in one write: under load that is one
                // syscall and one wake-up of the child for many calls.
                batch.clear();
                batch.extend_from_slice(&first);
                batch.push(b'\n');
                while batch.len() < MAX_BATCH {
                    let Ok(next) = rx.try_recv() else { break };
                    batch.extend_from_slice(&next);
                    batch.push(b'\n');
                }
                if stdin.write_all(&batch).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
                if batch.capacity() > 4 * MAX_BATCH {
                    batch = Vec::with_capacity(8192);
                }
            }
            // Dropping stdin closes the pipe: the MCP way of asking a stdio server to exit.
        });
        let transport = StdioTransport {
            name: name.clone(),
            writer: std::sync::Mutex::new(Some(tx)),
            pgid: Pid::from_raw(pid as i32),
            max_line: cfg.max_line_bytes,
            exited: CancellationToken::new(),
            cgroup,
        };
        Ok((
            transport,
            Inbox {
                stdout,
                stderr,
                child,
            },
        ))
    }

    /// Queues one message for the child's stdin; `false` if the child is gone or not reading.
    pub(crate) fn send(&self, bytes: Vec<u8>) -> bool {
        let guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().is_some_and(|tx| tx.try_send(bytes).is_ok())
    }

    pub(crate) fn start_reader(&self, up: Arc<Upstream>, link: Arc<Link>, inbox: Inbox) {
        let Inbox {
            stdout,
            stderr,
            mut child,
        } = inbox;
        let exited = self.exited.clone();
        let watch_link = link.clone();
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => format!("the process exited ({status})"),
                Err(e) => format!("cannot wait for the process: {e}"),
            };
            exited.cancel();
            watch_link.close(reason);
        });
        let name = self.name.clone();
        // A dedicated instance's stderr is its tenant's log stream: every line carries the
        // tenant, so operators can follow one tenant's servers.
        let tenant: Option<TenantId> = up.tenant.as_ref().map(|t| t.tenant.clone());
        tokio::spawn(async move {
            let mut lines = LineReader::new(stderr, MAX_STDERR_LINE, OverLong::Truncate);
            while let Ok(Some(line)) = lines.next_line().await {
                let text = String::from_utf8_lossy(&line);
                match &tenant {
                    Some(t) => {
                        tracing::info!(target: "palisade::upstream::stderr", server = %name, tenant = %t, "{}", text.trim_end())
                    }
                    None => {
                        tracing::info!(target: "palisade::upstream::stderr", server = %name, "{}", text.trim_end())
                    }
                }
            }
        });
        let max = self.max_line;
        let pgid = self.pgid;
        let exited = self.exited.clone();
        tokio::spawn(async move {
            let mut lines = LineReader::new(stdout, max, OverLong::Refuse);
            let reason = loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        match Message::parse(&line) {
                            Ok(msg) => up.on_message(&link, msg, None),
                            Err(e) => {
                                break format!(
                                    "it wrote something other than a JSON-RPC message on stdout ({e})"
                                );
                            }
                        }
                    }
                    Ok(None) => {
                        // Usually the process is exiting; let the exit status be the reason.
                        tokio::select! {
                            _ = exited.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(2)) => break "it closed its stdout".to_string(),
                        }
                    }
                    Err(e) => break e,
                }
            };
            tracing::warn!(server = %up.name, %reason, "killing upstream process");
            let _ = killpg(pgid, Signal::SIGKILL);
            link.close(reason);
        });
    }

    /// Stops the child and its process group: close stdin, then SIGTERM, then SIGKILL.
    pub(crate) async fn stop(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let exited = self.exited.clone();
        let wait = |ms| tokio::time::timeout(Duration::from_millis(ms), exited.cancelled());
        if wait(500).await.is_err() {
            let _ = killpg(self.pgid, Signal::SIGTERM);
            if wait(1000).await.is_err() {
                let _ = killpg(self.pgid, Signal::SIGKILL);
                let _ = wait(2000).await;
            }
        }
        // Whatever is left of the group (grandchildren that outlived the leader) goes too,
        // and of a sandboxed instance's cgroup (descendants that left the group).
        let _ = killpg(self.pgid, Signal::SIGKILL);
        if let Some(cgroup) = &self.cgroup {
            sandbox::teardown(cgroup);
        }
    }
}

/// Reads a byte stream as lines no longer than `max` bytes (the framing is
/// [`mcp_wire::lines::Lines`]; this only feeds it).
struct LineReader<R> {
    inner: R,
    lines: Lines,
    chunk: Box<[u8]>,
    done: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize, over_long: OverLong) -> Self {
        LineReader {
            inner,
            lines: Lines::new(max, over_long),
            chunk: vec![0; 8192].into_boxed_slice(),
            done: false,
        }
    }

    /// The next line without its newline; `None` at the end of the stream.
    async fn next_line(&mut self) -> Result<Option<BytesMut>, String> {
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) if self.done => return Ok(None),
                Ok(None) => {}
                Err(e) => return Err(format!("it wrote {e} on stdout")),
            }
            match self.inner.read(&mut self.chunk).await {
                Ok(0) => {
                    self.done = true;
                    return self
                        .lines
                        .finish()
                        .map_err(|e| format!("it wrote {e} on stdout"));
                }
                Ok(n) => self.lines.push(&self.chunk[..n]),
                Err(e) => return Err(format!("reading its stdout failed: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_to_the_end_of_the_stream() {
        let data: &[u8] = b"one\r\ntwo\nthree-is-long\nfour";
        let mut r = LineReader::new(data, 8, OverLong::Truncate);
        let mut got = Vec::new();
        while let Some(line) = r.next_line().await.unwrap() {
            got.push(line.to_vec());
        }
        let want: [&[u8]; 4] = [b"one", b"two", b"three-is", b"four"];
        assert_eq!(got, want);
        let mut r = LineReader::new(data, 8, OverLong::Refuse);
        r.next_line().await.unwrap();
        r.next_line().await.unwrap();
        assert_eq!(
            r.next_line().await.unwrap_err(),
            "it wrote a line longer than 8 bytes on stdout"
        );
    }
}
