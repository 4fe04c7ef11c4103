//! `[[servers]]`: the MCP servers behind the gateway, how each is reached (stdio or HTTP), its
//! placement, and its process, timeout and protection settings.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::limits::{BreakerSettings, QuarantineSettings};
use super::{MAX_MS, MAX_SECS, Problems, template};

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
    pub(crate) max_age_secs: u64,
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
    pub(crate) health_timeout_ms: u64,
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
    pub(crate) tool_timeouts_ms: BTreeMap<String, u64>,
    /// Longest a call may take before the gateway cancels it upstream.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_ms: u64,
    /// Longest the handshake (spawn + initialize) may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// How long a list fan-out waits for this server before serving the others without it.
    #[serde(default = "default_list_timeout")]
    pub(crate) list_timeout_ms: u64,
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

/// The PATH a stdio child gets when its config sets none.
pub(crate) const DEFAULT_CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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

pub(crate) fn valid_server_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.contains("__")
        && !name.ends_with('_')
}

/// Checks every server; returns the names defined (each once), for the tenants' checks.
pub(super) fn check<'c>(servers: &'c [Server], problems: &mut Problems) -> HashSet<&'c str> {
    let mut names = HashSet::new();
    for (i, s) in servers.iter().enumerate() {
        let key = format!("servers[{i}]");
        if !valid_server_name(&s.name) {
            problems.add(
                format!("{key}.name"),
                format!(
                    "`{}` is not a valid server name: use 1-32 of [a-z0-9_-], without `__` and not ending in `_`",
                    s.name
                ),
            );
        } else if !names.insert(s.name.as_str()) {
            problems.add(
                format!("{key}.name"),
                format!("server `{}` is defined twice", s.name),
            );
        }
        s.check(&key, problems);
    }
    names
}

impl Server {
    fn check(&self, key: &str, problems: &mut Problems) {
        match (&self.stdio, &self.http) {
            (Some(_), Some(_)) => problems.add(
                key,
                format!(
                    "server `{}` has both [stdio] and [http]; keep one",
                    self.name
                ),
            ),
            (None, None) => problems.add(
                key,
                format!(
                    "server `{}` needs a [servers.stdio] or [servers.http] table",
                    self.name
                ),
            ),
            (Some(stdio), None) => {
                if stdio.command.trim().is_empty() {
                    problems.add(format!("{key}.stdio.command"), "must not be empty");
                }
                if stdio.max_line_bytes < 1024 {
                    problems.add(
                        format!("{key}.stdio.max_line_bytes"),
                        "must be at least 1024",
                    );
                }
            }
            (None, Some(http)) => {
                let ok = http.url.parse::<http::Uri>().ok().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some()
                });
                if !ok {
                    problems.add(
                        format!("{key}.http.url"),
                        format!("`{}` is not an http:// or https:// URL", http.url),
                    );
                }
                for name in http.headers.keys() {
                    if name.parse::<http::HeaderName>().is_err() {
                        problems.add(
                            format!("{key}.http.headers"),
                            format!("`{name}` is not a valid header name"),
                        );
                    }
                }
            }
        }
        let mut templated = false;
        for (field, text) in template::fields(self) {
            match template::check(text) {
                Ok(has) => templated |= has,
                Err(e) => problems.add(format!("{key}.{field}"), e),
            }
        }
        if let Some(profile) = &self.sandbox {
            if self.placement != Placement::Dedicated || self.stdio.is_none() {
                problems.add(
                    format!("{key}.sandbox"),
                    "a sandbox applies to the processes of a dedicated stdio server: set placement = \"dedicated\" and use [servers.stdio]",
                );
            } else if let Err(e) = profile.validate() {
                problems.add(format!("{key}.sandbox"), e);
            }
        }
        if templated && self.placement == Placement::Shared {
            problems.add(
                key,
                format!(
                    "server `{}` uses ${{…}} placeholders, which only a dedicated server can fill: set placement = \"dedicated\"",
                    self.name
                ),
            );
        }
        if self.max_processes == 0
            || self.max_processes > 64
            || self.min_processes > self.max_processes
        {
            problems.add(
                format!("{key}.max_processes"),
                "use 1 to 64 processes per tenant, and min_processes at most max_processes",
            );
        }
        if self.call_timeout_ms == 0 || self.connect_timeout_ms == 0 || self.list_timeout_ms == 0 {
            problems.add(key, "timeouts must be greater than 0");
        }
        let mut durations = vec![
            ("call_timeout_ms", self.call_timeout_ms, MAX_MS),
            ("connect_timeout_ms", self.connect_timeout_ms, MAX_MS),
            ("list_timeout_ms", self.list_timeout_ms, MAX_MS),
            ("health_timeout_ms", self.health_timeout_ms, MAX_MS),
            ("queue_ms", self.queue_ms, MAX_MS),
            ("idle_secs", self.idle_secs, MAX_SECS),
            ("max_age_secs", self.max_age_secs, MAX_SECS),
            ("health_interval_secs", self.health_interval_secs, MAX_SECS),
        ];
        durations.extend(
            self.breaker
                .map(|b| ("breaker.open_secs", b.open_secs, MAX_SECS)),
        );
        if let Some(q) = self.quarantine {
            durations.push(("quarantine.window_secs", q.window_secs, MAX_SECS));
            durations.push(("quarantine.for_secs", q.for_secs, MAX_SECS));
        }
        for (name, value, max) in durations {
            problems.at_most(&format!("{key}.{name}"), value, max);
        }
        for (tool, ms) in &self.tool_timeouts_ms {
            problems.at_most(&format!("{key}.tool_timeouts_ms.{tool}"), *ms, MAX_MS);
        }
    }

    /// What only the host can tell (for `palisade check`): a stdio command can be found and
    /// run with the PATH its child will get.
    pub(super) fn check_host(&self, key: &str, problems: &mut Problems) {
        let Some(stdio) = &self.stdio else { return };
        let path = stdio
            .env
            .get("PATH")
            .map(String::as_str)
            .unwrap_or(DEFAULT_CHILD_PATH);
        if find_executable(&stdio.command, path, stdio.cwd.as_deref()).is_none() {
            problems.add(
                format!("{key}.stdio.command"),
                format!(
                    "`{}` is not an executable file, nor found on the child's PATH ({path}); give an absolute path or set PATH in {key}.stdio.env",
                    stdio.command
                ),
            );
        }
    }
}
