//! Test helpers: palisade-sql as a real child process spoken to over stdio, assertions minted
//! with a key the test controls (published to the server as a JWKS file), and a scratch
//! PostgreSQL database with its own roles.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};

pub const META_KEY: &str = "io.palisade/tenant";

/// A running palisade-sql speaking newline-delimited JSON-RPC on its stdio.
pub struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Server {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-sql"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("TENANT_ID")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("palisade-sql starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut server = Server {
            child,
            stdin,
            stdout,
            next_id: 1,
        };
        let init = server.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
        );
        assert_eq!(
            init["result"]["serverInfo"]["name"], "palisade-sql",
            "{init}"
        );
        server.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        server
    }

    fn send(&mut self, message: Value) {
        writeln!(self.stdin, "{message}").expect("write to palisade-sql");
        self.stdin.flush().expect("flush");
    }

    /// Sends a request and returns its response (notifications in between are skipped).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            let n = self
                .stdout
                .read_line(&mut line)
                .expect("read from palisade-sql");
            assert!(n > 0, "palisade-sql closed its stdout");
            let message: Value = serde_json::from_str(&line).expect("a JSON line");
            if message["id"] == json!(id) {
                return message;
            }
        }
    }

    /// Calls a tool, with `assertion` in `_meta` when given; returns the call's result.
    pub fn call(&mut self, tool: &str, arguments: Value, assertion: Option<&str>) -> Value {
        let mut params = json!({"name": tool, "arguments": arguments});
        if let Some(token) = assertion {
            params["_meta"] = json!({ META_KEY: token });
        }
        let response = self.request("tools/call", params);
        response["result"].clone()
    }

    pub fn query(&mut self, sql: &str, assertion: Option<&str>) -> Value {
        self.call("query_database", json!({"sql": sql}), assertion)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of an `isError` result; panics on success.
pub fn error_text(result: &Value) -> String {
    assert_eq!(
        result["isError"], true,
        "expected a tool error, got {result}"
    );
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The rows of a successful `query_database` result.
pub fn rows(result: &Value) -> Vec<Value> {
    assert_eq!(result["isError"], false, "expected rows, got {result}");
    result["structuredContent"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The distinct `tenant_id`s in a result whose first column is `tenant_id`.
pub fn tenants_in(result: &Value) -> Vec<String> {
    let mut seen: Vec<String> = rows(result)
        .iter()
        .filter_map(|r| r[0].as_str().map(str::to_owned))
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An Ed25519 signing key and its JWKS file, standing in for the gateway's.
pub struct Issuer {
    pair: Ed25519KeyPair,
    pub kid: String,
}

impl Issuer {
    pub fn new(kid: &str) -> Issuer {
        let seed: [u8; 32] = rand::random();
        Issuer {
            pair: Ed25519KeyPair::from_seed_unchecked(&seed).unwrap(),
            kid: kid.to_owned(),
        }
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid,
            "x": B64URL.encode(self.pair.public_key().as_ref()),
        }]})
    }

    pub fn write_jwks(&self, path: &Path) {
        std::fs::write(path, self.jwks().to_string()).unwrap();
    }

    /// Signs `claims` with this key under `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = self.pair.sign(input.as_bytes());
        format!("{input}.{}", B64URL.encode(sig.as_ref()))
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A valid assertion for `tenant` to audience `sql`, like the gateway's.
    pub fn for_tenant(&self, tenant: &str) -> String {
        self.sign(&claims(tenant))
    }
}

/// The gateway's claims for `tenant`, valid for 60 s from now, for audience `sql`.
pub fn claims(tenant: &str) -> Value {
    let now = now();
    json!({
        "iss": "palisade", "aud": "sql", "iat": now, "exp": now + 60,
        "jti": format!("{:032x}", rand::random::<u128>()),
        "tenant": tenant, "sub": "tester", "scope": "", "audit_id": "test",
    })
}

/// A JWKS file for `issuer` in `dir`.
pub fn jwks_file(dir: &Path, issuer: &Issuer) -> PathBuf {
    let path = dir.join("jwks.json");
    issuer.write_jwks(&path);
    path
}

/// palisade-sql in shared placement on the SQLite files in `dir`, trusting `issuer`'s key
/// (published as `dir/jwks.json`), with `extra` arguments.
pub fn shared_sqlite(dir: &Path, issuer: &Issuer, extra: &[&str]) -> Server {
    let jwks = jwks_file(dir, issuer);
    let mut args = vec!["serve", "--placement", "shared", "--sqlite-dir"];
    args.push(dir.to_str().expect("a UTF-8 path"));
    args.extend(["--jwks-file", jwks.to_str().expect("a UTF-8 path")]);
    args.extend_from_slice(extra);
    Server::spawn(&args, &[])
}

/// Writes the sample SQLite databases for acme and globex into `dir`.
pub fn sqlite_sample(dir: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_palisade-sql"))
        .args(["migrate", "--sqlite-dir"])
        .arg(dir)
        .args(["--tenants", "acme,globex"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}
