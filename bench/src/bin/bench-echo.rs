//! `bench-echo`: a deliberately fast MCP upstream with one tool, `echo`, so that measurements of
//! the gateway are not hidden by the upstream's own cost.
//!
//! - `bench-echo http --listen 127.0.0.1:0`: Streamable HTTP at `/mcp` on hyper 1 (HTTP/1.1,
//!   keep-alive, JSON responses only, never SSE). Prints `listening on http://ADDR/mcp`.
//! - `bench-echo stdio`: newline-delimited JSON-RPC on stdin/stdout.
//!
//! The MCP handling itself is `palisade_bench::echo::handle`.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade_bench::echo::{self, Reply};
use tokio::net::TcpListener;

/// The largest request body accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Parser)]
#[command(
    version,
    about = "A deliberately fast MCP echo upstream for benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve Streamable HTTP at /mcp.
    Http {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Runtime worker threads (1 = a single-threaded runtime).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Serve newline-delimited JSON-RPC on stdin/stdout.
    Stdio,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Http { listen, threads } => {
            let runtime = if threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()?
            };
            runtime.block_on(serve_http(listen))
        }
        Mode::Stdio => serve_stdio(),
    }
}

async fn serve_http(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}/mcp")?;
        out.flush()?;
    }
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin or exit.
                eprintln!("bench-echo: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

fn plain(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/mcp" {
        return Ok(plain(StatusCode::NOT_FOUND));
    }
    match *req.method() {
        Method::POST => {}
        // Ending a session: nothing to free, sessions are not tracked.
        Method::DELETE => return Ok(plain(StatusCode::OK)),
        _ => {
            let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST, DELETE"));
            return Ok(resp);
        }
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE)),
    };
    Ok(match echo::handle(&body) {
        Reply::Accepted => plain(StatusCode::ACCEPTED),
        Reply::Json {
            status,
            body,
            new_session,
        } => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let headers = resp.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if new_session && let Ok(sid) = HeaderValue::from_str(&echo::new_session_id()) {
                headers.insert("mcp-session-id", sid);
            }
            resp
        }
    })
}

/// Reads one message per line and answers in order; flushes when no more input is buffered, so
/// a burst of requests is answered with one write.
fn serve_stdio() -> anyhow::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, std::io::stdin().lock());
    let mut output = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let message = line.trim_ascii();
        if !message.is_empty()
            && let Reply::Json { body, .. } = echo::handle(message)
        {
            output.write_all(&body)?;
            output.write_all(b"\n")?;
        }
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
    output.flush()?;
    Ok(())
}
