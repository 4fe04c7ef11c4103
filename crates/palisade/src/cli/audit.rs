//! `palisade audit`: reading the audit trail from the command line.
//!
//! - `verify` checks the trail's hash chain and signed checkpoints — the files, and each
//!   replica's chain in the PostgreSQL table — and names the first bad record (modified,
//!   deleted, reordered, truncated, bad signature); a torn last line after a crash is reported
//!   as such, not as tampering.
//! - `tail` shows a tenant's last records (every kind), oldest first, one line each or as stored;
//!   `--follow` keeps printing new ones, across rotations.
//! - `find` fingerprints the arguments given in a file with the key the gateway uses and lists
//!   the tenant's BEGIN and DENIED records with that fingerprint, each with its END: calls are
//!   found by what was sent without the trail ever holding it (nor this command printing it).
//! - `export` prints the stored record lines byte for byte (so each still hash-verifies),
//!   filtered by time and tenant; checkpoints are left out.
//!
//! - `init-postgres` creates the PostgreSQL sink's table and its insert-and-select-only role.
//!
//! `tail`, `find` and `export` read the trail through [`palisade_audit::read`] (the file sink's
//! files, or the PostgreSQL sink's rows when the config has no file sink, or `--sink postgres`),
//! which also answers their questions; this module holds their arguments and their printing.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use palisade_audit::read::{self, Position, Trail};
use palisade_audit::{FileText, Kind, Record, VerifyOptions, verify_sources, verify_with};

use super::onboard::StoreArgs;
use crate::audit::{AuditKeys, audit_dir};
use crate::config::{AuditSink, Config};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify the trail; exits non-zero at the first problem.
    Verify {
        /// The trail's directory (default: the config's; then only the files are checked).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The gateway was stopped cleanly, so each chain must end with its shutdown
        /// checkpoint: anything cut off the end is then reported as truncated.
        #[arg(long)]
        expect_closed: bool,
        /// Check checkpoints with this Ed25519 public key (base64, as the gateway publishes at
        /// `/audit/public-key`) instead of deriving it from the audit key: an auditor needs
        /// nothing secret.
        #[arg(long)]
        public_key: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Create the PostgreSQL sink's table (append-only: UPDATE, DELETE and TRUNCATE are
    /// refused) and the role the gateway writes it as (INSERT and SELECT only).
    InitPostgres {
        /// An administrator's connection URL to the audit database.
        #[arg(long, env = "PALISADE_AUDIT_ADMIN_URL")]
        database_url: String,
        /// The writer role to create (with LOGIN) and grant.
        #[arg(long, default_value = "palisade_audit")]
        role: String,
    },
    /// A tenant's last records (BEGIN, END, DENIED, ADMIN), oldest first.
    Tail {
        #[arg(long)]
        tenant: String,
        /// How many records.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: usize,
        /// Keep printing new records as they are written (Ctrl-C stops).
        #[arg(long)]
        follow: bool,
        /// Print the records as stored (JSON lines) instead of one summary line each.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        trail: TrailArgs,
    },
    /// Calls a tenant made with the given arguments: their BEGIN or DENIED records, each with
    /// its END. The arguments are only fingerprinted, never printed.
    Find {
        #[arg(long)]
        tenant: String,
        /// Only calls of this tool, as its server names it (e.g. `echo`, not `kit__echo`).
        #[arg(long)]
        tool: Option<String>,
        /// A file holding the arguments as one JSON value (`-`: standard input).
        #[arg(long)]
        args: PathBuf,
        #[command(flatten)]
        trail: TrailArgs,
    },
    /// Print the stored record lines as they are (checkpoints left out).
    Export {
        /// Only records at or after this time: RFC 3339 (`2026-11-27T17:00:00Z`) or that long
        /// ago (`15m`, `2h`, `7d`).
        #[arg(long, value_parser = when)]
        since: Option<i64>,
        /// Only records before this time (same forms as --since).
        #[arg(long, value_parser = when)]
        until: Option<i64>,
        /// Only this tenant's records.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum)]
        format: ExportFormat,
        #[command(flatten)]
        trail: TrailArgs,
    },
}

/// Where the trail is: `--dir`, or the config's file or PostgreSQL sink.
#[derive(Args)]
pub struct TrailArgs {
    /// The trail's directory (default: the config's).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Which sink to read when the config has several (default: file, then postgres).
    #[arg(long, value_enum)]
    sink: Option<ReadSink>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum ReadSink {
    File,
    Postgres,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// The stored lines, one JSON record per line.
    Jsonl,
}

pub(super) async fn run(command: AuditCommand) -> anyhow::Result<()> {
    let done = match command {
        AuditCommand::Verify {
            dir,
            expect_closed,
            public_key,
            store,
        } => return verify(dir, expect_closed, public_key, store).await,
        AuditCommand::InitPostgres { database_url, role } => {
            palisade_audit::postgres::install(&database_url, &role).await?;
            println!(
                "audit table palisade_audit ready; role {role} may insert and select only. \
                 Give the gateway [audit] sinks = [\"postgres\", …] and postgres_url (or \
                 postgres_url_env) connecting as {role}, and a distinct [audit] replica per gateway."
            );
            return Ok(());
        }
        AuditCommand::Tail {
            tenant,
            lines,
            follow,
            json,
            trail,
        } => tail(&trail.trail()?, &tenant, lines, follow, json).await,
        AuditCommand::Find {
            tenant,
            tool,
            args,
            trail,
        } => find(&trail, &tenant, tool.as_deref(), &args).await,
        AuditCommand::Export {
            since,
            until,
            tenant,
            format: ExportFormat::Jsonl,
            trail,
        } => export(&trail.trail()?, since, until, tenant.as_deref()).await,
    };
    // A reader that went away (`| head`) is not an error.
    match done {
        Err(e)
            if e.downcast_ref::<io::Error>().map(io::Error::kind)
                == Some(io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn verify(
    dir: Option<PathBuf>,
    expect_closed: bool,
    public_key: Option<String>,
    store: StoreArgs,
) -> anyhow::Result<()> {
    let config = Config::load(&store.config)?;
    let data_dir = store.paths(&config).data_dir;
    let public = match public_key {
        Some(b64) => {
            use base64::Engine as _;
            let key = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .filter(|k| k.len() == 32);
            key.ok_or_else(|| {
                anyhow!("--public-key: give the 32-byte Ed25519 key in base64, as /audit/public-key shows it")
            })?
        }
        None => AuditKeys::load(&config, &data_dir)?.public_key()?,
    };
    let opts = VerifyOptions { expect_closed };
    let mut reports = Vec::new();
    let files = dir.clone().or_else(|| {
        config
            .audit
            .sinks
            .contains(&AuditSink::File)
            .then(|| audit_dir(&config, &data_dir))
    });
    if let Some(dir) = files {
        reports.push((dir.display().to_string(), verify_with(&dir, &public, opts)));
    }
    if dir.is_none() && config.audit.sinks.contains(&AuditSink::Postgres) {
        let url = config
            .audit
            .postgres_url()
            .ok_or_else(|| anyhow!("[audit] has the postgres sink but no postgres_url"))?;
        for (replica, lines) in palisade_audit::postgres::read_chains(&url).await? {
            let name = PathBuf::from(format!("postgres:{replica}"));
            let text = FileText {
                text: lines.join("\n") + "\n",
                garbage_after_padding: false,
            };
            let report = verify_sources(
                &name,
                1,
                std::iter::once((name.clone(), Ok(text))),
                &public,
                opts,
            );
            reports.push((format!("postgres replica {replica}"), report));
        }
    }
    if reports.is_empty() {
        bail!(
            "nothing to verify: [audit] sinks has neither \"file\" nor \"postgres\" (or give --dir)"
        );
    }
    let mut bad = None;
    for (name, report) in &reports {
        println!(
            "{name}: {} files, {} records, {} checkpoints, last seq {}{}",
            report.files,
            report.records,
            report.checkpoints,
            report.last_seq,
            if report.closed {
                ", closed"
            } else {
                ", not closed (running, or stopped by a crash)"
            }
        );
        for torn in &report.torn_tails {
            println!(
                "torn tail (a crash mid-write, not tampering): {}",
                torn.display()
            );
        }
        if let Some(p) = &report.problem {
            eprintln!("{name}: {p}");
            bad.get_or_insert_with(|| p.to_string());
        }
    }
    match bad {
        None => {
            println!("OK");
            Ok(())
        }
        Some(p) => bail!("audit trail is not intact: {p}"),
    }
}

impl TrailArgs {
    /// The trail to read (the config is read only when `--dir` is not given).
    fn trail(&self) -> anyhow::Result<Trail> {
        if let Some(dir) = &self.dir {
            return Ok(Trail::Files(dir.clone()));
        }
        let config = Config::load(&self.store.config)?;
        let has = |s| config.audit.sinks.contains(&s);
        let pick = match self.sink {
            Some(ReadSink::File) if has(AuditSink::File) => ReadSink::File,
            Some(ReadSink::Postgres) if has(AuditSink::Postgres) => ReadSink::Postgres,
            None if has(AuditSink::File) => ReadSink::File,
            None if has(AuditSink::Postgres) => ReadSink::Postgres,
            _ => bail!(
                "[audit] sinks in {} has no sink these commands can read (\"file\" or \"postgres\"): give the files' directory with --dir",
                self.store.config.display()
            ),
        };
        Ok(match pick {
            ReadSink::File => Trail::Files(audit_dir(&config, &self.store.paths(&config).data_dir)),
            ReadSink::Postgres => Trail::Postgres(config.audit.postgres_url().ok_or_else(
                || anyhow!("[audit] has the postgres sink but no postgres_url (or its variable is unset)"),
            )?),
        })
    }
}

async fn tail(
    trail: &Trail,
    tenant: &str,
    n: usize,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let print = |out: &mut io::StdoutLock<'_>, line: &str, r: &Record| -> io::Result<()> {
        if json {
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{}", summary(r))
        }
    };
    let (lines, mut at) = trail.lines_after(&Position::default()).await?;
    for (line, r) in read::last_of_tenant(read::parse(lines)?, tenant, n) {
        print(&mut out, &line, &r)?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (lines, next) = trail.lines_after(&at).await?;
        at = next;
        for (line, r) in read::parse(lines)? {
            if r.tenant == tenant {
                print(&mut out, &line, &r)?;
            }
        }
        out.flush()?;
    }
}

/// One record as a line: time, kind, seq, id, method, server/target, outcome or decision,
/// latency.
fn summary(r: &Record) -> String {
    let kind = match r.kind {
        Kind::Begin => "BEGIN",
        Kind::End => "END",
        Kind::Denied => "DENIED",
        Kind::Admin => "ADMIN",
    };
    let what = match (&r.server, &r.target) {
        (Some(s), Some(t)) => format!("{s}/{t}"),
        (Some(x), None) | (None, Some(x)) => x.clone(),
        (None, None) => "-".to_owned(),
    };
    let result = r
        .outcome
        .as_deref()
        .or(r.decision.as_deref())
        .unwrap_or("-");
    let latency = r.latency_us.map_or_else(
        || "-".to_owned(),
        |us| format!("{:.3}ms", us as f64 / 1000.0),
    );
    printable(&format!(
        "{} {kind:<6} {:>8} {} {} {what} {result} {latency}",
        r.time, r.seq, r.id, r.method
    ))
}

/// `s` with control characters escaped: targets and outcomes can hold text a caller chose,
/// which must not drive the terminal.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

async fn find(
    trail: &TrailArgs,
    tenant: &str,
    tool: Option<&str>,
    args: &Path,
) -> anyhow::Result<()> {
    let config = Config::load(&trail.store.config)?;
    let data_dir = trail.store.paths(&config).data_dir;
    if config.audit.key_file.is_none()
        && config.audit.key_env.is_none()
        && !data_dir.join("audit.key").exists()
    {
        bail!(
            "no audit key: neither [audit] key_file nor key_env is set and {} does not exist; find needs the key the gateway fingerprinted with",
            data_dir.join("audit.key").display()
        );
    }
    let fingerprinter = AuditKeys::load(&config, &data_dir)?.fingerprinter();
    let value = read_args(args)?;
    let (key_id, fingerprint) = fingerprinter.fingerprint(tenant, &value);
    let records = trail.trail()?.records().await?;
    let calls = read::calls_with(
        records.into_iter().map(|(_, r)| r).collect(),
        tenant,
        tool,
        (&key_id, &fingerprint),
    );
    let mut out = io::stdout().lock();
    for (call, end) in &calls.found {
        writeln!(out, "{}", summary(call))?;
        if let Some(end) = end {
            writeln!(out, "{}", summary(end))?;
        }
    }
    writeln!(out, "{} calls found", calls.found.len())?;
    if calls.other_keys > 0 {
        eprintln!(
            "note: {} calls were fingerprinted under another audit key than the current one ({key_id}) and cannot be matched",
            calls.other_keys
        );
    }
    Ok(())
}

/// The JSON value in `path` (`-`: standard input). Errors never quote the content.
fn read_args(path: &Path) -> anyhow::Result<serde_json::Value> {
    let (what, text) = if path == Path::new("-") {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the arguments from standard input")?;
        ("standard input".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the arguments file {}: give a file holding the call's arguments as JSON, or - for standard input",
                path.display()
            )
        })?;
        (path.display().to_string(), text)
    };
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{what} is not one JSON value (line {}, column {}): give the call's arguments as JSON, e.g. {{\"message\": \"hi\"}}",
            e.line(),
            e.column()
        )
    })
}

async fn export(
    trail: &Trail,
    since: Option<i64>,
    until: Option<i64>,
    tenant: Option<&str>,
) -> anyhow::Result<()> {
    let lines = read::window(trail.records().await?, since, until, tenant)?;
    let mut out = io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// A `--since`/`--until` value as Unix milliseconds: RFC 3339, or a duration ago (`90s`,
/// `15m`, `2h`, `7d`).
fn when(s: &str) -> Result<i64, String> {
    palisade_audit::time::time_or_ago(s, palisade_audit::time::now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
