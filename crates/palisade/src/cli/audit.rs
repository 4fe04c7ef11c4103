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
//! `tail`, `find` and `export` read the trail through `read_lines`: the file sink's files, or the
//! PostgreSQL sink's rows when the config has no file sink (or `--sink postgres`).

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use palisade_audit::{
    FileText, Kind, Record, VerifyOptions, list_files, read_file, verify_sources, verify_with,
};

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
        #[arg(long, value_parser = parse_when)]
        since: Option<i64>,
        /// Only records before this time (same forms as --since).
        #[arg(long, value_parser = parse_when)]
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
pub enum ReadSink {
    File,
    Postgres,
}

/// A readable trail.
enum Source {
    Files(PathBuf),
    /// The `postgres` sink's URL (it may hold a password: never printed).
    Postgres(String),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// The stored lines, one JSON record per line.
    Jsonl,
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
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
        } => tail(&trail.source()?, &tenant, lines, follow, json).await,
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
        } => export(&trail.source()?, since, until, tenant.as_deref()).await,
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
    fn source(&self) -> anyhow::Result<Source> {
        if let Some(dir) = &self.dir {
            return Ok(Source::Files(dir.clone()));
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
            ReadSink::File => {
                Source::Files(audit_dir(&config, &self.store.paths(&config).data_dir))
            }
            ReadSink::Postgres => Source::Postgres(config.audit.postgres_url().ok_or_else(
                || anyhow!("[audit] has the postgres sink but no postgres_url (or its variable is unset)"),
            )?),
        })
    }
}

/// The stored record lines of `source` after `from`, and where they end (see `file_lines`).
/// The PostgreSQL table is read whole, every replica's chain in turn.
async fn read_lines(source: &Source, from: &Position) -> anyhow::Result<(Vec<String>, Position)> {
    match source {
        Source::Files(dir) => file_lines(dir, from),
        Source::Postgres(url) => {
            let mut at = from.clone();
            let mut out = Vec::new();
            for (replica, lines) in palisade_audit::postgres::read_chains(url).await? {
                let seen = at.rows.entry(replica).or_insert(0);
                out.extend(
                    lines[(*seen).min(lines.len())..]
                        .iter()
                        .filter(|l| !l.starts_with("{\"checkpoint\""))
                        .cloned(),
                );
                *seen = lines.len();
            }
            Ok((out, at))
        }
    }
}

/// Where reading stopped: a file of the trail and how many of its bytes were read, or how many
/// rows of each replica's chain.
#[derive(Clone, Default)]
struct Position {
    file: Option<PathBuf>,
    offset: usize,
    rows: HashMap<String, usize>,
}

/// The stored record lines in `dir` after `from` (all of them from `Position::default()`), in
/// chain order, and where they end. Checkpoint lines are left out, and so is a file's final
/// line without a newline unless it is a whole record: a line torn by a crash, or one the
/// gateway is still writing (the next read after it is done returns it).
fn file_lines(dir: &Path, from: &Position) -> anyhow::Result<(Vec<String>, Position)> {
    let none = || {
        anyhow!(
            "no audit trail in {}: is [audit] dir right (or --dir)? The gateway writes it there once it has run with the file sink",
            dir.display()
        )
    };
    let files = match list_files(dir) {
        Ok(files) if files.is_empty() => return Err(none()),
        Ok(files) => files,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(none()),
        Err(e) => {
            return Err(anyhow!(e).context(format!(
                "cannot read the audit trail in {}: check its permissions",
                dir.display()
            )));
        }
    };
    let mut lines = Vec::new();
    let mut at = from.clone();
    for path in files {
        let start = match &from.file {
            Some(f) if path < *f => continue,
            Some(f) if path == *f => from.offset,
            _ => 0,
        };
        let text = read_file(&path)
            .with_context(|| format!("cannot read {}: check its permissions", path.display()))?
            .text;
        let mut offset = start.min(text.len());
        for line in text.get(offset..).unwrap_or("").split_inclusive('\n') {
            let (body, whole) = match line.strip_suffix('\n') {
                Some(body) => (body, true),
                None => (line, serde_json::from_str::<Record>(line).is_ok()),
            };
            if !whole {
                break;
            }
            offset += line.len();
            if !body.is_empty() && !body.starts_with("{\"checkpoint\"") {
                lines.push(body.to_owned());
            }
        }
        at = Position {
            file: Some(path),
            offset,
            rows: HashMap::new(),
        };
    }
    Ok((lines, at))
}

/// Each line with its record.
fn parse(lines: Vec<String>) -> anyhow::Result<Vec<(String, Record)>> {
    lines
        .into_iter()
        .map(|line| match serde_json::from_str::<Record>(&line) {
            Ok(r) => Ok((line, r)),
            Err(e) => Err(anyhow!(
                "a stored line is not an audit record ({e}): run `palisade audit verify` to find it"
            )),
        })
        .collect()
}

async fn tail(
    source: &Source,
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
    let (lines, mut at) = read_lines(source, &Position::default()).await?;
    let mut records: Vec<(String, Record)> = parse(lines)?
        .into_iter()
        .filter(|(_, r)| r.tenant == tenant)
        .collect();
    // Several replicas' chains interleave in time.
    records.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    for (line, r) in &records[records.len().saturating_sub(n)..] {
        print(&mut out, line, r)?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (lines, next) = read_lines(source, &at).await?;
        at = next;
        for (line, r) in parse(lines)? {
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
    let (lines, _) = read_lines(&trail.source()?, &Position::default()).await?;
    let records: Vec<Record> = parse(lines)?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.tenant == tenant)
        .collect();
    let ends: HashMap<&str, &Record> = records
        .iter()
        .filter(|r| r.kind == Kind::End)
        .map(|r| (r.id.as_str(), r))
        .collect();
    let mut out = io::stdout().lock();
    let (mut found, mut other_keys) = (0, 0);
    for r in records
        .iter()
        .filter(|r| matches!(r.kind, Kind::Begin | Kind::Denied))
        .filter(|r| tool.is_none_or(|t| r.target.as_deref() == Some(t)))
    {
        if r.key_id.as_deref() != Some(key_id.as_str()) {
            other_keys += usize::from(r.key_id.is_some());
            continue;
        }
        if r.args_fingerprint.as_deref() != Some(fingerprint.as_str()) {
            continue;
        }
        found += 1;
        writeln!(out, "{}", summary(r))?;
        if let Some(end) = ends.get(r.id.as_str()) {
            writeln!(out, "{}", summary(end))?;
        }
    }
    writeln!(out, "{found} calls found")?;
    if other_keys > 0 {
        eprintln!(
            "note: {other_keys} calls were fingerprinted under another audit key than the current one ({key_id}) and cannot be matched"
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
    source: &Source,
    since: Option<i64>,
    until: Option<i64>,
    tenant: Option<&str>,
) -> anyhow::Result<()> {
    let (lines, _) = read_lines(source, &Position::default()).await?;
    let mut out = io::stdout().lock();
    for (line, r) in parse(lines)? {
        if tenant.is_some_and(|t| r.tenant != t) {
            continue;
        }
        if since.is_some() || until.is_some() {
            let t = rfc3339_ms(&r.time).ok_or_else(|| {
                anyhow!(
                    "record seq {} has an unreadable time {:?}: run `palisade audit verify`",
                    r.seq,
                    r.time
                )
            })?;
            if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                continue;
            }
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// A `--since`/`--until` value as Unix milliseconds: RFC 3339, or a duration ago (`90s`,
/// `15m`, `2h`, `7d`).
fn parse_when(s: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{s:?} is neither an RFC 3339 time (2026-11-27T17:00:00Z) nor a duration ago (15m, 2h, 7d)"
        )
    };
    if let Some(t) = rfc3339_ms(s) {
        return Ok(t);
    }
    let unit = s.chars().last().ok_or_else(bad)?;
    let ms_per = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return Err(bad()),
    };
    let count: i64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    count
        .checked_mul(ms_per)
        .filter(|ago| *ago >= 0)
        .map(|ago| now - ago)
        .ok_or_else(bad)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as Unix milliseconds.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| digits(s.get(from..to)?);
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        ms = format!("{:0<3}", &frac[..digits.min(3)]).parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (digits(&rest[1..3])?, digits(&rest[4..6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    // Days from civil (H. Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// A run of ASCII digits as a number (no sign, no spaces).
fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2024-02-29T12:34:56.789Z"),
            Some(1_709_210_096_789)
        );
        assert_eq!(
            rfc3339_ms("2024-02-29T14:34:56.7891+02:00"),
            Some(1_709_210_096_789)
        );
        assert_eq!(
            rfc3339_ms("2024-02-29T12:04:56.7-00:30"),
            Some(1_709_210_096_700)
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01",
            "+024-01-01T00:00:00Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let two_hours = parse_when("2h").unwrap();
        assert!((now - 7_200_000 - two_hours).abs() < 5_000);
        assert!(parse_when("7d").unwrap() < parse_when("15m").unwrap());
        assert_eq!(parse_when("2026-11-27T17:00:00Z"), Ok(1_795_798_800_000));
        for bad in ["", "h", "2x", "-2h", "yesterday"] {
            assert!(parse_when(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
