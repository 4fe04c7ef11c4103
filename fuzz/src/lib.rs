//! Helpers shared by the fuzz targets: splitting one input into fields, a Tokio runtime, and a
//! loopback HTTP server that serves fuzzer-chosen bytes (for the JWKS fetches of
//! `palisade-oauth`, whose parsers are reachable only through a fetch).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};

/// Field separator in multi-field inputs. The seeds in `corpus/` use it too.
pub const SEP: u8 = 0;

/// Splits `data` at [`SEP`] into exactly `n` fields (missing ones are empty; the last one keeps
/// any further separators).
pub fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.iter().position(|b| *b == SEP) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => {
                out.push(rest);
                rest = &[];
            }
        }
    }
    out.push(rest);
    out
}

/// Lossy UTF-8, for fields that the code under test takes as `&str`.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether the refusal `msg` of `token` echoes the token. A short token can be part of the
/// refusal's fixed wording (`tenant a` is in "the tenant assertion ..."), so containing it is
/// not enough: the token with its letters' case swapped must be in its own refusal too
/// (`refuse` gives that refusal's text).
pub fn echoes(token: &str, msg: &str, refuse: impl FnOnce(&str) -> String) -> bool {
    if token.len() < 8 || !msg.contains(token) {
        return false;
    }
    let swapped: String = token
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    swapped == token || refuse(&swapped).contains(&swapped)
}

/// The text of the refusal `verify` ends in, or nothing if it accepts (for [`echoes`]).
pub fn refusal<T, E: std::fmt::Display>(
    verify: impl std::future::Future<Output = Result<T, E>>,
) -> String {
    runtime()
        .block_on(verify)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// One current-thread Tokio runtime per process; `block_on` it from the fuzz closure.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// What [`Fixture`] answers: `metadata` for paths containing `/.well-known/`, `body` otherwise.
#[derive(Clone, Default)]
pub struct Served {
    pub body: Vec<u8>,
    pub metadata: Vec<u8>,
    /// A `Cache-Control` value (only visible ASCII is sent).
    pub cache_control: Option<Vec<u8>>,
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1 answering every `GET` with [`Served`]. Every
/// request of a target goes here: the targets' `reqwest` clients also use it as their proxy, so
/// a fuzzer-chosen URL can never reach another host.
pub struct Fixture {
    pub port: u16,
    served: Arc<Mutex<Served>>,
}

impl Fixture {
    pub fn start() -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fixture server");
        let port = listener.local_addr().expect("local addr").port();
        let served = Arc::new(Mutex::new(Served::default()));
        let shared = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        Fixture { port, served }
    }

    pub fn set(&self, served: Served) {
        *self.served.lock().unwrap_or_else(|e| e.into_inner()) = served;
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client whose every request goes through this server (as an HTTP proxy: `CONNECT` is
    /// refused, plain requests are answered directly).
    pub fn client(&self) -> reqwest::Client {
        let proxy = reqwest::Proxy::all(self.base()).expect("proxy URL");
        reqwest::Client::builder()
            .proxy(proxy)
            .pool_max_idle_per_host(4)
            .build()
            .expect("reqwest client")
    }
}

fn serve(stream: TcpStream, served: &Mutex<Served>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        if content_length > 0 {
            let mut skip = vec![0; content_length.min(1 << 20)];
            reader.read_exact(&mut skip)?;
        }
        if request_line.starts_with("CONNECT ") {
            out.write_all(
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )?;
            return Ok(());
        }
        let s = served.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let body = if request_line.contains("/.well-known/") {
            &s.metadata
        } else {
            &s.body
        };
        let mut head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(cc) = &s.cache_control {
            let cc: String = cc
                .iter()
                .filter(|b| (0x20..0x7f).contains(*b))
                .map(|b| *b as char)
                .collect();
            head.push_str(&format!("cache-control: {cc}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_split() {
        assert_eq!(
            super::fields(b"a\0b\0c\0d", 3),
            vec![&b"a"[..], b"b", b"c\0d"]
        );
        assert_eq!(super::fields(b"a", 3), vec![&b"a"[..], b"", b""]);
    }
}
