//! The TOML configuration: its shape, its defaults, and the checks that run before anything
//! starts. `serve` refuses to start on any problem ([`Config::load`]); `palisade check` reports
//! every problem at once, with those only the host can tell ([`Config::check_with_host`]).
//!
//! Every struct denies unknown keys, so a typo is an error that names the key, never a silently
//! ignored setting. Each problem names the offending key and says how to fix it ([`Problems`]).
//! One file per section, each checking itself: `listen`, `limits` (with `[rate_limits]`),
//! `servers`, `tenants`; the small sections and what spans sections are checked here.

mod fleet;
mod limits;
mod listen;
mod servers;
pub mod template;
mod tenants;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

use crate::apikey::{Pepper, PepperError, key_material, parse_stored_hash};
pub use fleet::{Fleet, FleetKeyError};
pub use limits::Limits;
pub(crate) use limits::{QuarantineSettings, RateLimits};
pub use listen::Listen;
pub use servers::Stdio;
pub(crate) use servers::find_executable;
pub(crate) use servers::{DEFAULT_CHILD_PATH, Http, Placement, Server, UpstreamProtocol};
pub(crate) use tenants::{SecretSource, TenantDecl};

/// The maximum length of a namespaced tool or prompt name, per common client limits.
pub(crate) const MAX_NAME_LEN: usize = 64;

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
    pub fleet: Fleet,
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub tenants: Vec<TenantDecl>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// File holding the server pepper that API keys are hashed under (≥ 32 bytes).
    pub(crate) pepper_file: Option<PathBuf>,
    /// Or: the name of an environment variable holding it.
    pub(crate) pepper_env: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The registry database: `sqlite://PATH` or `postgres://…`. Default: a SQLite file,
    /// `palisade.db` in `data_dir`.
    pub(crate) database_url: Option<String>,
    /// Where the gateway keeps its files; relative paths are relative to the config file.
    /// Default: `palisade-data` next to the config file.
    pub(crate) data_dir: Option<PathBuf>,
}

/// The master key that tenants' secrets in the registry store are sealed under (AES-256-GCM).
/// Without one, secrets can come only from the config (`[tenants.secrets]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// A file holding at least 32 random bytes.
    pub(crate) master_key_file: Option<PathBuf>,
    /// Or: the name of an environment variable holding them.
    pub(crate) master_key_env: Option<String>,
}

/// The audit trail: a record before every forwarded call (see `crate::audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// On by default; off only where another system audits every call.
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    /// Where the files go; relative to the data directory. Default: `audit`.
    pub dir: Option<PathBuf>,
    /// A file is closed and a new one started once it holds this many bytes (default 64 MiB,
    /// at least 64 KiB). Each file's space is reserved 4 MiB at a time.
    pub(crate) max_file_bytes: Option<u64>,
    /// The secret the trail's keys derive from (fingerprints, subject hashes, checkpoint
    /// signatures), ≥ 32 bytes. Default: `audit.key` in the data directory, made on first start.
    pub key_file: Option<PathBuf>,
    pub(crate) key_env: Option<String>,
    /// This replica's name in the records. Default: `pid-<pid>`.
    pub replica: Option<String>,
    /// Record subjects as they are (service accounts only); by default they are keyed hashes.
    #[serde(default)]
    pub(crate) plain_subjects: bool,
    /// Where records go, all of them for every record: `file` (JSONL files in `dir`, the
    /// default), `postgres` (table `palisade_audit`, one chain per replica) and `stdout` (JSON
    /// lines for a log shipper). A call waits until its BEGIN is durable in every one.
    #[serde(default = "default_audit_sinks")]
    pub(crate) sinks: Vec<AuditSink>,
    /// The `postgres` sink's database, as a role made by `palisade audit init-postgres`.
    pub(crate) postgres_url: Option<String>,
    /// Or: the name of an environment variable holding that URL (it may hold a password).
    pub(crate) postgres_url_env: Option<String>,
}

/// An audit sink (see [`Audit::sinks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AuditSink {
    File,
    Postgres,
    Stdout,
}

fn default_audit_sinks() -> Vec<AuditSink> {
    vec![AuditSink::File]
}

impl Audit {
    /// The `postgres` sink's URL, from the config or its environment variable.
    pub(crate) fn postgres_url(&self) -> Option<String> {
        self.postgres_url.clone().or_else(|| {
            self.postgres_url_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        })
    }
}

impl Audit {
    fn check(&self, problems: &mut Problems) {
        if !self.enabled {
            return;
        }
        if self.sinks.is_empty() {
            problems.add(
                "audit.sinks",
                "name at least one of \"file\", \"postgres\", \"stdout\", or set audit.enabled = false",
            );
        }
        if self.max_file_bytes.is_some_and(|b| b < 64 << 10) {
            problems.add(
                "audit.max_file_bytes",
                "too small: use at least 65536 (64 KiB)",
            );
        }
        if self.sinks.contains(&AuditSink::Postgres)
            && self.postgres_url.is_none()
            && self.postgres_url_env.is_none()
        {
            problems.add(
                "audit.postgres_url",
                "the postgres audit sink needs audit.postgres_url or audit.postgres_url_env",
            );
        }
    }
}

impl Storage {
    fn check(&self, problems: &mut Problems) {
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            problems.add(
                "storage.database_url",
                "use sqlite://PATH or postgres://USER@HOST/DB",
            );
        }
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

fn yes() -> bool {
    true
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The OS error is part of the message, not a source: said once.
    #[error("cannot read config {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(Problems),
}

/// Figment's errors, each on its own line, with keys as the file spells them (figment puts
/// every key under its `default.` profile).
fn figment_message(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| e.to_string().replace("for key \"default.", "for key \""))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Durations are bounded so that adding one to the clock can never overflow: a day in
/// milliseconds, 30 days in seconds.
const MAX_MS: u64 = 24 * 3600 * 1000;
const MAX_SECS: u64 = 30 * 24 * 3600;

/// Every problem found in a config, each naming the key at fault and saying how to fix it.
#[derive(Debug, Default)]
pub struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.0.push((key.into(), problem.into()));
    }

    fn at_most(&mut self, key: &str, value: u64, max: u64) {
        if value > max {
            let unit = if max == MAX_MS {
                "ms (a day)"
            } else {
                "s (30 days)"
            };
            self.add(
                key,
                format!("{value} is too long; use at most {max} {unit}"),
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Err` with every problem, if there is one.
    fn into_result(self) -> Result<(), ConfigError> {
        match self.is_empty() {
            true => Ok(()),
            false => Err(ConfigError::Invalid(self)),
        }
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let [(key, problem)] = self.0.as_slice() {
            return write!(f, "config key `{key}`: {problem}");
        }
        write!(f, "the config has {} problems:", self.0.len())?;
        for (key, problem) in &self.0 {
            write!(f, "\n  config key `{key}`: {problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a config file, without validating it.
    pub fn parse(path: &Path) -> Result<Config, ConfigError> {
        if let Err(error) = std::fs::metadata(path) {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                error,
            });
        }
        Figment::from(Toml::file_exact(path))
            .extract()
            .map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: figment_message(e),
            })
    }

    /// Parses and validates config text (used by the demo and tests).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            Figment::from(Toml::string(text))
                .extract()
                .map_err(|e| ConfigError::Parse {
                    path: PathBuf::from("<inline>"),
                    message: figment_message(e),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem of the config at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.problems().into_result()
    }

    /// Each section checks itself; what spans sections (tenants naming servers, keys used
    /// twice, keys without a pepper) is checked here.
    fn problems(&self) -> Problems {
        let mut problems = Problems::default();
        self.listen.check(&mut problems);
        self.limits.check(&mut problems);
        self.rate_limits.check(&mut problems);
        let servers = servers::check(&self.servers, &mut problems);
        let tenant_keys = tenants::check(&self.tenants, &servers, &mut problems);
        for k in &self.admin.keys {
            match parse_stored_hash(k) {
                None => problems.add("admin.keys", tenants::STORED_KEY_FORMAT),
                Some(hash) if tenant_keys.contains(&hash) => problems.add(
                    "admin.keys",
                    "an admin key is also a tenant's key; give the admin API a key of its own",
                ),
                Some(_) => {}
            }
        }
        if let Some(Err(e)) = self.oauth.as_ref().map(|o| o.validate()) {
            problems.add("oauth", e);
        }
        self.storage.check(&mut problems);
        self.audit.check(&mut problems);
        self.fleet.check(&mut problems);
        if self.fleet.shares_sessions()
            && self.rate_limits.redis_url.is_none()
            && self.rate_limits.redis_url_env.is_none()
        {
            problems.add(
                "fleet",
                "a fleet key shares sessions between replicas through Redis: set rate_limits.redis_url (or redis_url_env) too",
            );
        }
        let any_keys =
            self.tenants.iter().any(|t| !t.keys.is_empty()) || !self.admin.keys.is_empty();
        if any_keys && self.auth.pepper_file.is_none() && self.auth.pepper_env.is_none() {
            problems.add(
                "auth",
                "API keys are configured but no pepper is: set auth.pepper_file or auth.pepper_env",
            );
        }
        problems
    }

    /// For `palisade check`: the config's problems and those only the host can tell (each
    /// stdio command can be found and run with the PATH its child will get), all at once.
    /// `serve` does not require the host's (a missing command is an upstream that is down,
    /// retried with backoff).
    pub(crate) fn check_with_host(&self) -> Result<(), ConfigError> {
        let mut problems = self.problems();
        for (i, s) in self.servers.iter().enumerate() {
            s.check_host(&format!("servers[{i}]"), &mut problems);
        }
        problems.into_result()
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
    pub(crate) database_url: String,
    /// Tenants' working directories live under `tenants/`.
    pub(crate) data_dir: PathBuf,
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
    pub(crate) fn private_paths(&self, data_dir: &Path) -> Vec<PathBuf> {
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
        assert!(c.check_with_host().is_ok());
        let c = Config::from_toml(
            &BASE.replace("command = \"true\"", "command = \"no-such-binary-here\""),
        )
        .unwrap();
        let err = c.check_with_host().unwrap_err().to_string();
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
        let err = Config::from_toml(&format!("[listen]\nfoo = 1\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"for key "listen.foo""#), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "[limits]\nmax_body_bytes = 5\nmax_json_depth = 1\n{}",
            BASE.replace("id = \"acme\"", "id = \"ACME\"")
                .replace("servers = [\"kit\"]", "servers = [\"nope\"]")
        );
        let err = Config::from_toml(&text).unwrap_err().to_string();
        for key in [
            "limits.max_body_bytes",
            "limits.max_json_depth",
            "tenants[0].id",
            "tenants[0].servers",
        ] {
            assert!(err.contains(&format!("config key `{key}`")), "{key}: {err}");
        }
        assert!(err.starts_with("the config has 4 problems:"), "{err}");
        let c = Config::from_toml(&BASE.replace("\"true\"", "\"no-such-command-here\"")).unwrap();
        let err = c.check_with_host().unwrap_err().to_string();
        assert!(err.contains("servers[0].stdio.command"), "{err}");
    }

    #[test]
    fn an_unreadable_file_is_said_once() {
        let err = Config::load(Path::new("/no/such/palisade.toml")).unwrap_err();
        assert!(std::error::Error::source(&err).is_none());
        let text = err.to_string();
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
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
