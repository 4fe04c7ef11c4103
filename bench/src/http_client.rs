//! One MCP client session over its own keep-alive HTTP/1.1 connection (hyper 1, no pooling).
//!
//! A [`Connection`] is one TCP connection with `TCP_NODELAY`; a [`Session`] is the protocol state
//! on top of it (the legacy `Mcp-Session-Id`, the request id counter and the prebuilt headers).
//! [`HttpCaller`] pairs them for the load loop and re-establishes both after a transport error,
//! a timeout or a 404 (session gone).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::driver::Caller;
use crate::mcp::{self, CallError, Era};

/// The largest response body the client reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Where the Streamable HTTP endpoint is.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` to connect to.
    pub addr: String,
    /// The `Host` header.
    pub host: HeaderValue,
    /// The request target (path and query).
    pub path: Uri,
}

impl Target {
    /// Parses an `http://host[:port]/path` URL (TLS is not supported: the gateway and the echo
    /// upstream listen on plain HTTP on loopback).
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported, got {url:?}");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("URL {url:?} has no host"))?;
        let addr = if authority.port().is_some() {
            authority.as_str().to_string()
        } else {
            format!("{}:80", authority.as_str())
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Target {
            host: HeaderValue::from_str(authority.as_str())?,
            path: path.parse()?,
            addr,
        })
    }
}

/// Parses a `Name: value` header argument.
pub fn parse_header(spec: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = spec
        .split_once(':')
        .with_context(|| format!("bad header {spec:?}: want 'Name: value'"))?;
    Ok((
        HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("bad header name in {spec:?}"))?,
        HeaderValue::from_str(value.trim())
            .with_context(|| format!("bad header value in {spec:?}"))?,
    ))
}

/// What every session of a run shares.
pub struct Config {
    pub target: Target,
    pub era: Era,
    /// Extra headers sent on every request (e.g. `Authorization`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The call each request makes.
    pub call: mcp::ToolCall,
}

impl Config {
    fn base_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(8 + self.headers.len());
        h.insert(HOST, self.target.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        for (name, value) in &self.headers {
            h.append(name.clone(), value.clone());
        }
        h
    }
}

/// A response, read in full.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    fn content_type(&self) -> Option<&str> {
        self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
    }
}

fn transport(e: impl std::fmt::Display) -> CallError {
    CallError::Transport(e.to_string())
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Connects (with `TCP_NODELAY`) and runs the HTTP/1.1 handshake.
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Connection, CallError> {
        let setup = async {
            let stream = TcpStream::connect(&target.addr).await.map_err(transport)?;
            stream.set_nodelay(true).map_err(transport)?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(transport)?;
            tokio::spawn(async move {
                // The connection ends when the sender is dropped or the peer closes; the next
                // request on the sender reports the error.
                let _ = conn.await;
            });
            Ok(Connection { sender })
        };
        tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| CallError::Timeout)?
    }

    /// POSTs `body` with `headers` and reads the whole response.
    pub async fn post(
        &mut self,
        target: &Target,
        headers: &HeaderMap,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let exchange = async {
            self.sender.ready().await.map_err(transport)?;
            let mut req = Request::new(Full::new(Bytes::from(body)));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = target.path.clone();
            *req.headers_mut() = headers.clone();
            let resp = self.sender.send_request(req).await.map_err(transport)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(transport)?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout)?
    }
}

/// The protocol state of one session.
pub struct Session {
    /// Headers for `tools/call` requests (session id, version, `Mcp-Method` / `Mcp-Name`).
    call_headers: HeaderMap,
    next_id: u64,
    /// The `Mcp-Session-Id` the server issued, if any.
    pub session_id: Option<HeaderValue>,
}

impl Session {
    /// Starts a session on `conn`: for the legacy era `initialize` and
    /// `notifications/initialized`; nothing to send for the modern era.
    pub async fn start(conn: &mut Connection, cfg: &Config) -> Result<Session, CallError> {
        let mut call_headers = cfg.base_headers();
        call_headers.insert(
            HeaderName::from_static("mcp-protocol-version"),
            HeaderValue::from_static(cfg.era.version()),
        );
        let mut session_id = None;
        match cfg.era {
            Era::Modern => {
                call_headers.insert(
                    HeaderName::from_static("mcp-method"),
                    HeaderValue::from_static("tools/call"),
                );
                call_headers.insert(
                    HeaderName::from_static("mcp-name"),
                    HeaderValue::from_static("echo"),
                );
            }
            Era::Legacy => {
                let init_headers = cfg.base_headers();
                let answer = conn
                    .post(
                        &cfg.target,
                        &init_headers,
                        mcp::initialize_body(0),
                        cfg.timeout,
                    )
                    .await?;
                if answer.status != StatusCode::OK {
                    return Err(CallError::Status(answer.status.as_u16()));
                }
                mcp::verify_response(
                    answer.content_type(),
                    &answer.body,
                    0,
                    mcp::check_initialize,
                )?;
                session_id = answer.headers.get("mcp-session-id").cloned();
                if let Some(sid) = &session_id {
                    call_headers.insert(HeaderName::from_static("mcp-session-id"), sid.clone());
                }
                let answer = conn
                    .post(
                        &cfg.target,
                        &call_headers,
                        mcp::INITIALIZED_BODY.to_vec(),
                        cfg.timeout,
                    )
                    .await?;
                if !answer.status.is_success() {
                    return Err(CallError::Status(answer.status.as_u16()));
                }
            }
        }
        Ok(Session {
            call_headers,
            next_id: 1,
            session_id,
        })
    }

    /// One `tools/call`, verified.
    pub async fn call(&mut self, conn: &mut Connection, cfg: &Config) -> Result<(), CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = mcp::call_body(cfg.era, id, &cfg.call);
        let answer = conn
            .post(&cfg.target, &self.call_headers, body, cfg.timeout)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(CallError::Status(answer.status.as_u16()));
        }
        mcp::verify_response(answer.content_type(), &answer.body, id, |r| {
            cfg.call.check(r)
        })
    }
}

/// A session for the load loop: connects and starts lazily, and again after a fatal error.
pub struct HttpCaller {
    cfg: Arc<Config>,
    live: Option<(Connection, Session)>,
}

impl HttpCaller {
    pub fn new(cfg: Arc<Config>) -> HttpCaller {
        HttpCaller { cfg, live: None }
    }

    async fn call_once(&mut self) -> Result<(), CallError> {
        let cfg = &self.cfg;
        if self.live.is_none() {
            let setup = async {
                let mut conn = Connection::connect(&cfg.target, cfg.timeout).await?;
                let session = Session::start(&mut conn, cfg).await?;
                Ok::<_, CallError>((conn, session))
            };
            match setup.await {
                Ok(live) => self.live = Some(live),
                Err(e) => {
                    // Do not hammer a peer that refuses connections or sessions.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return Err(e);
                }
            }
        }
        let Some((conn, session)) = self.live.as_mut() else {
            return Err(CallError::Closed);
        };
        let result = session.call(conn, cfg).await;
        if result.as_ref().is_err_and(CallError::needs_reconnect) {
            self.live = None;
        }
        result
    }
}

impl Caller for HttpCaller {
    fn call(&mut self) -> impl Future<Output = Result<(), CallError>> + Send {
        self.call_once()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_headers() {
        let t = Target::parse("http://127.0.0.1:18080/mcp").expect("valid");
        assert_eq!(t.addr, "127.0.0.1:18080");
        assert_eq!(t.path, "/mcp");
        assert_eq!(t.host, "127.0.0.1:18080");
        let t = Target::parse("http://localhost/mcp?x=1").expect("valid");
        assert_eq!(t.addr, "localhost:80");
        assert_eq!(t.path, "/mcp?x=1");
        assert!(Target::parse("https://x/mcp").is_err());
        assert!(Target::parse("not a url").is_err());
        let (n, v) = parse_header("Authorization: Bearer abc:def").expect("valid");
        assert_eq!(n, "authorization");
        assert_eq!(v, "Bearer abc:def");
        assert!(parse_header("nocolon").is_err());
    }
}
