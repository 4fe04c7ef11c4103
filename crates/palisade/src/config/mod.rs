//! The TOML configuration: its shape, its defaults, and the checks that run before anything
//! starts. `palisade check` runs exactly [`Config::load`]; `serve` refuses to start on any error.
//!
//! Every struct denies unknown keys, so a typo is an error that names the key, never a silently
//! ignored setting. Errors name the offending key and say how to fix it.

pub mod template;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

use crate::auth::apikey::{Pepper, PepperError, key_material, parse_stored_hash};

/// The maximum length of a namespaced tool or prompt name, per common client limits.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub rate_limits: RateLimits,
    #[serde(default)]
    pub storage: Storage,
    /// OAuth 2.1 resource server: which issuers' access tokens are accepted.
    pub oauth: Option<palisade_oauth::OAuthConfig>,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub secrets: Secrets,
    #[serde(default)]
    pub audit: Audit,
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub tenants: Vec<Tenant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Address of the MCP endpoint (served at `/mcp`).
    #[serde(default = "default_mcp_addr")]
    pub mcp: SocketAddr,
    /// Address of the admin listener: `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "default_admin_addr")]
    pub admin: SocketAddr,
    /// `Origin` values allowed besides loopback origins (exact match, e.g.
    /// `https://app.example.com`). A request without `Origin` (not from a browser) is allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// `Host` values allowed besides loopback names, for DNS-rebinding protection. When the
    /// MCP listener binds a non-loopback address, list the names clients use to reach it, or `*`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// A client must send its request headers within this time, or the connection is closed
    /// (slow-header clients cannot hold connections open). A new connection must send its
    /// first request's headers within this time too, in either HTTP version.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in progress for this long is closed (either HTTP version;
    /// an open SSE stream counts as a request in progress).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// A request body must arrive within this time, or the request is answered 408.
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_ms: u64,
    /// Connections from one address that have not yet sent an authenticated request, at most;
    /// further ones are closed at once. Behind a load balancer every client shares its address:
    /// raise this there.
    #[serde(default = "default_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: usize,
    /// Open connections to the MCP listener at most; further clients wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            mcp: default_mcp_addr(),
            admin: default_admin_addr(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            header_read_timeout_ms: default_header_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            body_read_timeout_ms: default_body_timeout(),
            max_unauthenticated_per_source: default_unauthenticated_per_source(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_timeout() -> u64 {
    10_000
}
fn default_idle_timeout() -> u64 {
    120_000
}
fn default_body_timeout() -> u64 {
    30_000
}
fn default_unauthenticated_per_source() -> usize {
    128
}
fn default_max_connections() -> usize {
    10_000
}

fn default_mcp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// File holding the server pepper that API keys are hashed under (≥ 32 bytes).
    pub pepper_file: Option<PathBuf>,
    /// Or: the name of an environment variable holding it.
    pub pepper_env: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The registry database: `sqlite://PATH` or `postgres://…`. Default: a SQLite file,
    /// `palisade.db` in `data_dir`.
    pub database_url: Option<String>,
    /// Where the gateway keeps its files; relative paths are relative to the config file.
    /// Default: `palisade-data` next to the config file.
    pub data_dir: Option<PathBuf>,
}

/// The master key that tenants' secrets in the registry store are sealed under (AES-256-GCM).
/// Without one, secrets can come only from the config (`[tenants.secrets]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// A file holding at least 32 random bytes.
    pub master_key_file: Option<PathBuf>,
    /// Or: the name of an environment variable holding them.
    pub master_key_env: Option<String>,
}

/// The audit trail: a record before every forwarded call (see `crate::audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// On by default; off only where another system audits every call.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where the files go; relative to the data directory. Default: `audit`.
    pub dir: Option<PathBuf>,
    /// A file is closed and a new one started once it holds this many bytes (default 64 MiB,
    /// at least 64 KiB). Each file's space is reserved 4 MiB at a time.
    pub max_file_bytes: Option<u64>,
    /// The secret the trail's keys derive from (fingerprints, subject hashes, checkpoint
    /// signatures), ≥ 32 bytes. Default: `audit.key` in the data directory, made on first start.
    pub key_file: Option<PathBuf>,
    pub key_env: Option<String>,
    /// This replica's name in the records. Default: `pid-<pid>`.
    pub replica: Option<String>,
    /// Record subjects as they are (service accounts only); by default they are keyed hashes.
    #[serde(default)]
    pub plain_subjects: bool,
    /// Where records go, all of them for every record: `file` (JSONL files in `dir`, the
    /// default), `postgres` (table `palisade_audit`, one chain per replica) and `stdout` (JSON
    /// lines for a log shipper). A call waits until its BEGIN is durable in every one.
    #[serde(default = "default_audit_sinks")]
    pub sinks: Vec<AuditSink>,
    /// The `postgres` sink's database, as a role made by `palisade audit init-postgres`.
    pub postgres_url: Option<String>,
    /// Or: the name of an environment variable holding that URL (it may hold a password).
    pub postgres_url_env: Option<String>,
}

/// An audit sink (see [`Audit::sinks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    File,
    Postgres,
    Stdout,
}

fn default_audit_sinks() -> Vec<AuditSink> {
    vec![AuditSink::File]
}

impl Audit {
    /// The `postgres` sink's URL, from the config or its environment variable.
    pub fn postgres_url(&self) -> Option<String> {
        self.postgres_url.clone().or_else(|| {
            self.postgres_url_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        })
    }
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            enabled: true,
            dir: None,
            key_file: None,
            key_env: None,
            max_file_bytes: None,
            replica: None,
            plain_subjects: false,
            sinks: default_audit_sinks(),
            postgres_url: None,
            postgres_url_env: None,
        }
    }
}

/// Who may use the admin API (`/admin/v1` on the admin listener).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Admin API keys as `hmac-sha256:<hex>`, like tenant keys (`palisade key new`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// An access token from a configured issuer with this scope may use the admin API.
    #[serde(default = "default_admin_scope")]
    pub scope: String,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            keys: Vec::new(),
            scope: default_admin_scope(),
        }
    }
}

fn default_admin_scope() -> String {
    "palisade:admin".into()
}

/// A server's circuit breakers. A tenant's breaker on the server opens after `failures`
/// failures in a row of that tenant's calls (transport errors, timeouts, crashes; not a tool's
/// `isError` result), the server's own after `server_failures` of anyone's (default: four times
/// `failures`, so that one tenant's bad calls close the server to that tenant first). An open
/// breaker refuses calls for `open_secs`; then one probe call decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    pub server_failures: Option<u32>,
    #[serde(default = "default_breaker_open")]
    pub open_secs: u64,
}

impl BreakerSettings {
    pub fn server_failures(&self) -> u32 {
        self.server_failures
            .unwrap_or(self.failures.saturating_mul(4))
    }
}

fn default_breaker_failures() -> u32 {
    5
}

fn default_breaker_open() -> u64 {
    30
}

/// See [`Server::quarantine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineSettings {
    #[serde(default = "default_quarantine_crashes")]
    pub crashes: u32,
    #[serde(default = "default_quarantine_window")]
    pub window_secs: u64,
    #[serde(default = "default_quarantine_for")]
    pub for_secs: u64,
}

fn default_quarantine_crashes() -> u32 {
    3
}

fn default_quarantine_window() -> u64 {
    3600
}

fn default_quarantine_for() -> u64 {
    600
}

/// Rate limits (docs/ARCHITECTURE.md §4, steps 6 and 7): named tiers of per-tenant, per-subject
/// and per-tool rates; a tenant's policy picks its tier and may replace any of its rates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// The tier of tenants whose policy names none (absent: no limits for them).
    pub default_tier: Option<String>,
    #[serde(default)]
    pub tiers: BTreeMap<String, crate::policy::RateSet>,
    /// Share the buckets between replicas in this Redis (`redis://…`); absent: in process.
    /// Read at start; a change needs a restart.
    pub redis_url: Option<String>,
    /// Or: the name of an environment variable holding that URL (it may hold a password).
    pub redis_url_env: Option<String>,
    /// While Redis cannot be reached: `fail_open` (each replica applies the limits alone) or
    /// `fail_closed` (calls are refused).
    #[serde(default = "default_when_redis_down")]
    pub when_redis_down: palisade_limits::redis::WhenDown,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            default_tier: None,
            tiers: BTreeMap::new(),
            redis_url: None,
            redis_url_env: None,
            when_redis_down: default_when_redis_down(),
        }
    }
}

fn default_when_redis_down() -> palisade_limits::redis::WhenDown {
    palisade_limits::redis::WhenDown::FailOpen
}

impl RateLimits {
    /// The Redis URL, from the config or its environment variable.
    pub fn redis_url(&self) -> Option<String> {
        self.redis_url.clone().or_else(|| {
            self.redis_url_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body; larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects in a client's message; deeper gets 400 (-32600).
    /// At most 100, below what the gateway's and most upstreams' JSON parsers accept.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Legacy sessions idle this long are closed.
    #[serde(default = "default_session_idle")]
    pub session_idle_secs: u64,
    /// On shutdown, how long in-flight calls may take to finish.
    #[serde(default = "default_drain")]
    pub shutdown_grace_secs: u64,
    /// Open legacy sessions per tenant; `initialize` beyond it is refused (429).
    #[serde(default = "default_max_sessions")]
    pub max_sessions_per_tenant: usize,
    /// Calls per tenant parked waiting for a modern client's input; beyond it such a call ends
    /// with an error instead of parking.
    #[serde(default = "default_max_parked")]
    pub max_parked_per_tenant: usize,
    /// Bytes a tenant's legacy sessions may store in all (what their clients declared, their
    /// subscriptions, and a fixed cost per session); `initialize` or `resources/subscribe`
    /// beyond it is refused.
    #[serde(default = "default_session_memory")]
    pub session_memory_per_tenant: usize,
    /// `subscriptions/listen` streams a tenant may hold open at once.
    #[serde(default = "default_max_listens")]
    pub max_listens_per_tenant: usize,
    /// `initialize` per tenant: sessions opened per second on average, in bursts of `burst`.
    #[serde(default = "default_initialize_rate")]
    pub initialize_rate: palisade_limits::Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            max_json_depth: default_max_json_depth(),
            session_idle_secs: default_session_idle(),
            shutdown_grace_secs: default_drain(),
            max_sessions_per_tenant: default_max_sessions(),
            max_parked_per_tenant: default_max_parked(),
            session_memory_per_tenant: default_session_memory(),
            initialize_rate: default_initialize_rate(),
            max_listens_per_tenant: default_max_listens(),
        }
    }
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}
fn default_max_listens() -> usize {
    1000
}
fn default_session_memory() -> usize {
    64 << 20
}
fn default_initialize_rate() -> palisade_limits::Rate {
    palisade_limits::Rate {
        per_second: 50.0,
        burst: 200,
    }
}
fn default_max_json_depth() -> usize {
    64
}
fn default_session_idle() -> u64 {
    30 * 60
}
fn default_drain() -> u64 {
    10
}
fn default_max_sessions() -> usize {
    10_000
}
fn default_max_parked() -> usize {
    1_000
}

/// Which era the gateway speaks to an upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// `server/discover` first; the legacy era if the upstream refuses it or passes over it
    /// (the handshake module says how that is told from a slow start).
    #[default]
    Auto,
    Legacy,
    Modern,
}

/// Where a server's calls run (docs/ARCHITECTURE.md §5).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// One instance serves every tenant.
    #[default]
    Shared,
    /// Each tenant gets its own instance, started from this server's settings as a template
    /// (`${tenant.id}`, `${secret:NAME}`), on first use, in its own working directory.
    Dedicated,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Unique, `[a-z0-9_-]`, no `__` (it separates server and tool in namespaced names).
    pub name: String,
    pub stdio: Option<Stdio>,
    pub http: Option<Http>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub placement: Placement,
    /// Dedicated placement: a tenant's instance idle this long is stopped (started again on
    /// the next call); 0 keeps it running.
    #[serde(default = "default_idle_secs")]
    pub idle_secs: u64,
    /// Dedicated placement: replace a tenant's process after it served this many calls
    /// (0: never), once no call is in flight.
    #[serde(default)]
    pub max_calls_per_process: u64,
    /// Dedicated placement: replace a tenant's process after this many seconds (0: never),
    /// once no call is in flight.
    #[serde(default)]
    pub max_age_secs: u64,
    /// Dedicated placement: client calls in flight on one tenant's process at most; more are
    /// refused at once (0: no limit).
    #[serde(default)]
    pub max_inflight_per_process: usize,
    /// Dedicated placement: processes kept running per tenant (started with the tenant, never
    /// stopped for idleness), 0 to `max_processes`; 0 starts the first on first use.
    #[serde(default)]
    pub min_processes: usize,
    /// Dedicated placement: processes per tenant at most. A call goes to a process with fewer
    /// than `max_inflight_per_process` calls in flight (one, when that is 0); when none has
    /// room and the pool is below this size, another process starts.
    #[serde(default = "one")]
    pub max_processes: usize,
    /// Dedicated placement: how often a running process is pinged (0: never); one that does
    /// not answer within `health_timeout_ms` is restarted.
    #[serde(default = "default_health_interval")]
    pub health_interval_secs: u64,
    #[serde(default = "default_health_timeout")]
    pub health_timeout_ms: u64,
    /// Dedicated stdio servers: the sandbox each tenant's process runs in (`palisade doctor`
    /// says what this host supports). Absent: no sandbox beyond the clean environment.
    pub sandbox: Option<palisade_sandbox::Profile>,
    /// Calls in flight to this server from all tenants together (0: no cap); see `queue_ms`.
    #[serde(default)]
    pub max_inflight: usize,
    /// Calls in flight to this server from one tenant (0: no cap); see `queue_ms`.
    #[serde(default)]
    pub max_inflight_per_tenant: usize,
    /// When a cap on calls in flight is reached, how long a call waits for a place before it
    /// is refused (0: refused at once). Waits are bounded; nothing queues for ever.
    #[serde(default)]
    pub queue_ms: u64,
    /// Circuit breakers for this server and for each tenant on it (absent: none).
    pub breaker: Option<BreakerSettings>,
    /// A global rate for this server (a third-party API's limit), shared between the tenants
    /// calling it by their `quota_weight`; a tenant alone may use all of it.
    pub quota: Option<palisade_limits::Rate>,
    /// Crash attribution: a tenant whose calls were in flight when the server went away
    /// `crashes` times within `window_secs` is refused on it for `for_secs` (absent: never).
    pub quarantine: Option<QuarantineSettings>,
    /// Shared servers: tools named `<tenant>__<tool>` belong to that tenant. It sees them as
    /// `<tool>` (in place of a common tool of that name) and no other tenant sees them.
    #[serde(default)]
    pub tenant_tools: bool,
    /// Per-tool timeouts in ms, by the tool's name on this server, replacing `call_timeout_ms`
    /// for those tools (a slow report, a quick lookup).
    #[serde(default)]
    pub tool_timeouts_ms: BTreeMap<String, u64>,
    /// Longest a call may take before the gateway cancels it upstream.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_ms: u64,
    /// Longest the handshake (spawn + initialize) may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// How long a list fan-out waits for this server before serving the others without it.
    #[serde(default = "default_list_timeout")]
    pub list_timeout_ms: u64,
}

fn one() -> usize {
    1
}

fn default_health_interval() -> u64 {
    30
}
fn default_health_timeout() -> u64 {
    5_000
}

fn default_idle_secs() -> u64 {
    300
}

fn default_call_timeout() -> u64 {
    60_000
}
fn default_connect_timeout() -> u64 {
    10_000
}
fn default_list_timeout() -> u64 {
    5_000
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdio {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// The child's whole environment (it inherits nothing from the gateway). `PATH` defaults to
    /// `/usr/local/bin:/usr/bin:/bin` when not given.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    /// Longest stdout line accepted; a longer one kills the child.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
}

fn default_max_line() -> usize {
    16 * 1024 * 1024
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub url: String,
    /// Extra headers sent on every request (the upstream's own credentials, for example).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A tenant declared in the config. It is reconciled into the registry store at start and on
/// every reload; removing it from the file deletes it. Tenants created through the admin API
/// or the CLI live only in the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// A slug: `[a-z0-9-]`, 1–63 characters.
    pub id: String,
    pub display_name: Option<String>,
    /// Names of the servers this tenant may use.
    pub servers: Vec<String>,
    /// Prefix tool and prompt names with `<server>__` and resource URIs with `<server>+`.
    /// May be `false` only for a tenant with a single server.
    #[serde(default = "yes")]
    pub namespacing: bool,
    /// API keys as `hmac-sha256:<hex>` = HMAC-SHA256(pepper, key); see `palisade key new`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Scopes the keys above carry.
    #[serde(default)]
    pub key_scopes: Vec<String>,
    /// The tenant's tool policy; when absent, the one set through the admin API (if any) stays.
    pub policy: Option<crate::policy::Policy>,
    /// Secrets for its dedicated servers' templates (`${secret:NAME}`), read from the gateway
    /// host when an instance starts: `NAME = { env = "VAR" }` or `NAME = { file = "/path" }`.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
}

/// Where a tenant's secret is read from. The value never appears in the config, logs or errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable of the gateway process.
    pub env: Option<String>,
    /// A file on the gateway host (one trailing newline is dropped).
    pub file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// A configuration that cannot be used, with the key at fault and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if let Err(source) = std::fs::metadata(path) {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
        let config: Config = Figment::from(Toml::file_exact(path))
            .extract()
            .map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates config text (used by the demo and tests).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            Figment::from(Toml::string(text))
                .extract()
                .map_err(|e| ConfigError::Parse {
                    path: PathBuf::from("<inline>"),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        /// Durations are bounded so that adding one to the clock can never overflow.
        const MAX_MS: u64 = 24 * 3600 * 1000;
        const MAX_SECS: u64 = 30 * 24 * 3600;
        fn at_most(key: &str, value: u64, max: u64) -> Result<(), ConfigError> {
            if value > max {
                let unit = if max == MAX_MS {
                    "ms (a day)"
                } else {
                    "s (30 days)"
                };
                return Err(invalid(
                    key,
                    format!("{value} is too long; use at most {max} {unit}"),
                ));
            }
            Ok(())
        }
        let l = &self.listen;
        for (name, value) in [
            ("listen.header_read_timeout_ms", l.header_read_timeout_ms),
            ("listen.idle_timeout_ms", l.idle_timeout_ms),
            ("listen.body_read_timeout_ms", l.body_read_timeout_ms),
        ] {
            at_most(name, value, MAX_MS)?;
        }
        at_most(
            "limits.session_idle_secs",
            self.limits.session_idle_secs,
            MAX_SECS,
        )?;
        at_most(
            "limits.shutdown_grace_secs",
            self.limits.shutdown_grace_secs,
            MAX_SECS,
        )?;
        if [
            l.header_read_timeout_ms,
            l.idle_timeout_ms,
            l.body_read_timeout_ms,
        ]
        .contains(&0)
            || l.max_connections == 0
            || l.max_unauthenticated_per_source == 0
        {
            return Err(invalid(
                "listen",
                "header_read_timeout_ms, idle_timeout_ms, body_read_timeout_ms, max_connections and max_unauthenticated_per_source must be greater than 0",
            ));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1024"));
        }
        if self.limits.session_memory_per_tenant < 1 << 20 {
            return Err(invalid(
                "limits.session_memory_per_tenant",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        let rate = self.limits.initialize_rate;
        if !(rate.per_second > 0.0 && rate.per_second.is_finite()) || rate.burst == 0 {
            return Err(invalid(
                "limits.initialize_rate",
                "per_second must be a positive number and burst at least 1",
            ));
        }
        if !(2..=100).contains(&self.limits.max_json_depth) {
            return Err(invalid(
                "limits.max_json_depth",
                "must be between 2 and 100",
            ));
        }
        let mut names = HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let key = format!("servers[{i}]");
            if !valid_server_name(&s.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!(
                        "`{}` is not a valid server name: use 1-32 of [a-z0-9_-], without `__` and not ending in `_`",
                        s.name
                    ),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("server `{}` is defined twice", s.name),
                ));
            }
            match (&s.stdio, &s.http) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key,
                        format!("server `{}` has both [stdio] and [http]; keep one", s.name),
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        key,
                        format!(
                            "server `{}` needs a [servers.stdio] or [servers.http] table",
                            s.name
                        ),
                    ));
                }
                (Some(stdio), None) => {
                    if stdio.command.trim().is_empty() {
                        return Err(invalid(format!("{key}.stdio.command"), "must not be empty"));
                    }
                    if stdio.max_line_bytes < 1024 {
                        return Err(invalid(
                            format!("{key}.stdio.max_line_bytes"),
                            "must be at least 1024",
                        ));
                    }
                }
                (None, Some(http)) => {
                    let ok = http.url.parse::<http::Uri>().ok().is_some_and(|u| {
                        matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some()
                    });
                    if !ok {
                        return Err(invalid(
                            format!("{key}.http.url"),
                            format!("`{}` is not an http:// or https:// URL", http.url),
                        ));
                    }
                    for name in http.headers.keys() {
                        if name.parse::<http::HeaderName>().is_err() {
                            return Err(invalid(
                                format!("{key}.http.headers"),
                                format!("`{name}` is not a valid header name"),
                            ));
                        }
                    }
                }
            }
            let templated = template::fields(s).try_fold(false, |any, (field, text)| {
                template::check(text)
                    .map(|has| any || has)
                    .map_err(|e| invalid(format!("{key}.{field}"), e))
            })?;
            if let Some(profile) = &s.sandbox {
                if s.placement != Placement::Dedicated || s.stdio.is_none() {
                    return Err(invalid(
                        format!("{key}.sandbox"),
                        "a sandbox applies to the processes of a dedicated stdio server: set placement = \"dedicated\" and use [servers.stdio]",
                    ));
                }
                profile
                    .validate()
                    .map_err(|e| invalid(format!("{key}.sandbox"), e))?;
            }
            if templated && s.placement == Placement::Shared {
                return Err(invalid(
                    key,
                    format!(
                        "server `{}` uses ${{…}} placeholders, which only a dedicated server can fill: set placement = \"dedicated\"",
                        s.name
                    ),
                ));
            }
            if s.max_processes == 0 || s.max_processes > 64 || s.min_processes > s.max_processes {
                return Err(invalid(
                    format!("{key}.max_processes"),
                    "use 1 to 64 processes per tenant, and min_processes at most max_processes",
                ));
            }
            if s.call_timeout_ms == 0 || s.connect_timeout_ms == 0 || s.list_timeout_ms == 0 {
                return Err(invalid(key, "timeouts must be greater than 0"));
            }
            let mut durations = vec![
                ("call_timeout_ms", s.call_timeout_ms, MAX_MS),
                ("connect_timeout_ms", s.connect_timeout_ms, MAX_MS),
                ("list_timeout_ms", s.list_timeout_ms, MAX_MS),
                ("health_timeout_ms", s.health_timeout_ms, MAX_MS),
                ("queue_ms", s.queue_ms, MAX_MS),
                ("idle_secs", s.idle_secs, MAX_SECS),
                ("max_age_secs", s.max_age_secs, MAX_SECS),
                ("health_interval_secs", s.health_interval_secs, MAX_SECS),
            ];
            durations.extend(
                s.breaker
                    .map(|b| ("breaker.open_secs", b.open_secs, MAX_SECS)),
            );
            if let Some(q) = s.quarantine {
                durations.push(("quarantine.window_secs", q.window_secs, MAX_SECS));
                durations.push(("quarantine.for_secs", q.for_secs, MAX_SECS));
            }
            for (name, value, max) in durations {
                at_most(&format!("{key}.{name}"), value, max)?;
            }
            for (tool, ms) in &s.tool_timeouts_ms {
                at_most(&format!("{key}.tool_timeouts_ms.{tool}"), *ms, MAX_MS)?;
            }
        }
        let mut tenant_ids = HashSet::new();
        let mut key_hashes = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let key = format!("tenants[{i}]");
            if !valid_tenant_id(&t.id) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!(
                        "`{}` is not a valid tenant id: use 1-63 of [a-z0-9-], starting with a letter or digit",
                        t.id
                    ),
                ));
            }
            if !tenant_ids.insert(t.id.as_str()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("tenant `{}` is defined twice", t.id),
                ));
            }
            for s in &t.servers {
                if !names.contains(s.as_str()) {
                    return Err(invalid(
                        format!("{key}.servers"),
                        format!(
                            "tenant `{}` names server `{s}`, which no [[servers]] entry defines",
                            t.id
                        ),
                    ));
                }
            }
            if !t.namespacing && t.servers.len() > 1 {
                return Err(invalid(
                    format!("{key}.namespacing"),
                    format!(
                        "tenant `{}` has {} servers; names can only stay unprefixed with exactly one",
                        t.id,
                        t.servers.len()
                    ),
                ));
            }
            for k in &t.keys {
                let Some(hash) = parse_stored_hash(k) else {
                    return Err(invalid(
                        format!("{key}.keys"),
                        "keys are stored as `hmac-sha256:<64 hex digits>`; create one with `palisade key new --config FILE`",
                    ));
                };
                if !key_hashes.insert(hash) {
                    return Err(invalid(
                        format!("{key}.keys"),
                        "this key is listed twice in the config (a key belongs to exactly one tenant)",
                    ));
                }
            }
        }
        for (i, t) in self.tenants.iter().enumerate() {
            for (name, source) in &t.secrets {
                if !template::valid_secret_name(name) {
                    return Err(invalid(
                        format!("tenants[{i}].secrets"),
                        format!("`{name}` is not a valid secret name: use [A-Za-z0-9_-]"),
                    ));
                }
                if source.env.is_some() == source.file.is_some() {
                    return Err(invalid(
                        format!("tenants[{i}].secrets.{name}"),
                        "give exactly one of env = \"VAR\" or file = \"/path\"",
                    ));
                }
            }
            if let Some(p) = &t.policy {
                p.validate()
                    .map_err(|e| invalid(format!("tenants[{i}].policy"), e))?;
            }
        }
        for k in &self.admin.keys {
            let Some(hash) = parse_stored_hash(k) else {
                return Err(invalid(
                    "admin.keys",
                    "keys are stored as `hmac-sha256:<64 hex digits>`; create one with `palisade key new --config FILE`",
                ));
            };
            if key_hashes.contains(&hash) {
                return Err(invalid(
                    "admin.keys",
                    "an admin key is also a tenant's key; give the admin API a key of its own",
                ));
            }
        }
        if let Some(o) = &self.oauth {
            o.validate().map_err(|e| invalid("oauth", e))?;
        }
        if let Some(url) = &self.storage.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "storage.database_url",
                "use sqlite://PATH or postgres://USER@HOST/DB",
            ));
        }
        for (name, set) in &self.rate_limits.tiers {
            set.validate()
                .map_err(|e| invalid(format!("rate_limits.tiers.{name}"), e))?;
        }
        if let Some(t) = &self.rate_limits.default_tier
            && !self.rate_limits.tiers.contains_key(t)
        {
            return Err(invalid(
                "rate_limits.default_tier",
                format!("there is no [rate_limits.tiers.{t}]"),
            ));
        }
        if self.audit.enabled {
            if self.audit.sinks.is_empty() {
                return Err(invalid(
                    "audit.sinks",
                    "name at least one of \"file\", \"postgres\", \"stdout\", or set audit.enabled = false",
                ));
            }
            if self.audit.max_file_bytes.is_some_and(|b| b < 64 << 10) {
                return Err(invalid(
                    "audit.max_file_bytes",
                    "too small: use at least 65536 (64 KiB)",
                ));
            }
            if self.audit.sinks.contains(&AuditSink::Postgres)
                && self.audit.postgres_url.is_none()
                && self.audit.postgres_url_env.is_none()
            {
                return Err(invalid(
                    "audit.postgres_url",
                    "the postgres audit sink needs audit.postgres_url or audit.postgres_url_env",
                ));
            }
        }
        let any_keys =
            self.tenants.iter().any(|t| !t.keys.is_empty()) || !self.admin.keys.is_empty();
        if any_keys && self.auth.pepper_file.is_none() && self.auth.pepper_env.is_none() {
            return Err(invalid(
                "auth",
                "API keys are configured but no pepper is: set auth.pepper_file or auth.pepper_env",
            ));
        }
        if !self.listen.mcp.ip().is_loopback() && self.listen.allowed_hosts.is_empty() {
            return Err(invalid(
                "listen.allowed_hosts",
                "the MCP listener binds a non-loopback address: list the host names clients use (or \"*\" to disable the DNS-rebinding check)",
            ));
        }
        Ok(())
    }

    /// Checks that need the host, for `palisade check`: each stdio command can be found and run
    /// with the PATH its child will get. `serve` does not require this (a missing command is an
    /// upstream that is down, retried with backoff).
    pub fn check_host(&self) -> Result<(), ConfigError> {
        for (i, s) in self.servers.iter().enumerate() {
            let Some(stdio) = &s.stdio else { continue };
            let path = stdio
                .env
                .get("PATH")
                .map(String::as_str)
                .unwrap_or(DEFAULT_CHILD_PATH);
            if find_executable(&stdio.command, path, stdio.cwd.as_deref()).is_none() {
                return Err(invalid(
                    format!("servers[{i}].stdio.command"),
                    format!(
                        "`{}` is not an executable file, nor found on the child's PATH ({path}); give an absolute path or set PATH in servers[{i}].stdio.env",
                        stdio.command
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Where the gateway keeps its state, relative paths resolved against `base` (the config
    /// file's directory): the data directory, and the registry database (the configured URL,
    /// or a SQLite file in the data directory).
    pub fn data_paths(&self, base: &Path) -> DataPaths {
        let data_dir = base.join(
            self.storage
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("palisade-data")),
        );
        let database_url = match &self.storage.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", data_dir.join("palisade.db").display()),
        };
        DataPaths {
            database_url,
            data_dir,
        }
    }
}

/// Where the gateway keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPaths {
    /// The registry store: `sqlite://PATH` or `postgres://…`.
    pub database_url: String,
    /// Tenants' working directories live under `tenants/`.
    pub data_dir: PathBuf,
}

impl Config {
    /// The pepper `[auth]` names (`pepper_file` or `pepper_env`), which API keys are hashed
    /// under.
    pub fn pepper(&self) -> Result<Pepper, PepperError> {
        let bytes = key_material(
            self.auth.pepper_file.as_deref(),
            self.auth.pepper_env.as_deref(),
        )?
        .ok_or(PepperError::NotConfigured)?;
        Pepper::new(bytes)
    }

    /// Files and directories holding the gateway's secrets and state, which no process it
    /// starts may see: the data directory (registry, audit trail, assertion keys, other
    /// tenants' working directories) and every configured secret file.
    pub fn private_paths(&self, data_dir: &Path) -> Vec<PathBuf> {
        let mut paths = vec![data_dir.to_owned()];
        paths.extend(self.audit.dir.iter().map(|d| data_dir.join(d)));
        paths.extend(
            [
                &self.auth.pepper_file,
                &self.secrets.master_key_file,
                &self.audit.key_file,
            ]
            .into_iter()
            .flatten()
            .cloned(),
        );
        for t in &self.tenants {
            paths.extend(t.secrets.values().filter_map(|s| s.file.clone()));
        }
        // Absolute, as the sandbox helper covers them from the process's own root.
        paths
            .into_iter()
            .filter_map(|p| std::fs::canonicalize(&p).ok())
            .collect()
    }
}

/// The PATH a stdio child gets when its config sets none.
pub const DEFAULT_CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub(crate) fn find_executable(command: &str, path: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let p = match cwd {
            Some(dir) if !command.starts_with('/') => dir.join(command),
            _ => PathBuf::from(command),
        };
        return runnable(&p).then_some(p);
    }
    path.split(':')
        .map(|dir| Path::new(dir).join(command))
        .find(|p| runnable(p))
}

pub fn valid_server_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.contains("__")
        && !name.ends_with('_')
}

pub fn valid_tenant_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[servers]]
name = "kit"
[servers.stdio]
command = "true"

[[tenants]]
id = "acme"
servers = ["kit"]
"#;

    #[test]
    fn minimal_config_has_defaults() {
        let c = Config::from_toml(BASE).unwrap();
        assert_eq!(c.listen.mcp.port(), 8080);
        assert_eq!(c.limits.max_body_bytes, 4 * 1024 * 1024);
        assert!(c.tenants[0].namespacing);
    }

    #[test]
    fn check_host_finds_commands() {
        let c = Config::from_toml(&BASE.replace("command = \"true\"", "command = \"sh\"")).unwrap();
        assert!(c.check_host().is_ok());
        let c = Config::from_toml(
            &BASE.replace("command = \"true\"", "command = \"no-such-binary-here\""),
        )
        .unwrap();
        let err = c.check_host().unwrap_err().to_string();
        assert!(
            err.contains("servers[0].stdio.command") && err.contains("PATH"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml(&format!("{BASE}\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn durations_are_bounded() {
        let huge = BASE.replace(
            "name = \"kit\"\n",
            "name = \"kit\"\ncall_timeout_ms = 9223372036854775807\n",
        );
        let err = Config::from_toml(&huge).unwrap_err().to_string();
        assert!(
            err.contains("servers[0].call_timeout_ms") && err.contains("at most 86400000 ms"),
            "{err}"
        );
        let tool = BASE.replace(
            "name = \"kit\"\n",
            "name = \"kit\"\ntool_timeouts_ms = { slow = 90000000 }\n",
        );
        let err = Config::from_toml(&tool).unwrap_err().to_string();
        assert!(err.contains("tool_timeouts_ms.slow"), "{err}");
        let idle = format!("[limits]\nsession_idle_secs = 99999999\n{BASE}");
        let err = Config::from_toml(&idle).unwrap_err().to_string();
        assert!(err.contains("limits.session_idle_secs"), "{err}");
    }

    #[test]
    fn errors_name_key_and_fix() {
        let err = Config::from_toml(&BASE.replace("servers = [\"kit\"]", "servers = [\"nope\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tenants[0].servers") && err.contains("nope"),
            "{err}"
        );
        let err = Config::from_toml(&BASE.replace("name = \"kit\"", "name = \"a__b\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("servers[0].name"), "{err}");
        let twice = format!(
            "{BASE}keys = [\"hmac-sha256:{0}\", \"hmac-sha256:{0}\"]\n",
            "ab".repeat(32)
        );
        let err = Config::from_toml(&twice).unwrap_err().to_string();
        assert!(
            err.contains("tenants[0].keys") && err.contains("twice"),
            "{err}"
        );
        let err = Config::from_toml(&format!("{BASE}keys = [\"plain-key\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("palisade key new"), "{err}");
        let err = Config::from_toml(&format!(
            "{BASE}keys = [\"hmac-sha256:{}\"]\n",
            "ab".repeat(32)
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("pepper"), "{err}");
    }
}
