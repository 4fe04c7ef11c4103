//! bench-audit: how many records per second the audit writer makes durable, in process.
//!
//! Opens a file trail (JSONL, `fdatasync` per batch) in `--dir` and appends `--records` records
//! from `--appenders` concurrent tasks, each waiting for its record to be durable (as BEGIN
//! records are), then the same number as deferred appends (as END records are), and prints one
//! markdown row per run. The directory must be on the disk being measured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use palisade_audit::{AuditConfig, AuditLog, Fingerprinter, Kind, Record};

#[derive(Parser)]
struct Cli {
    /// Directory for the trail (emptied first).
    #[arg(long)]
    dir: PathBuf,
    /// Records per run.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Concurrent appenders, one run each (comma separated).
    #[arg(long, default_value = "16,256")]
    appenders: String,
}

fn record(fp: &Fingerprinter, i: usize) -> Record {
    let mut r = Record::new(Kind::Begin, "bench", "h:0123456789abcdef", "tools/call");
    let args = serde_json::json!({"message": "hello", "n": i});
    let (key_id, hash) = fp.fingerprint("bench", &args);
    r.server = Some("echo".into());
    r.target = Some("echo".into());
    r.args_fingerprint = Some(hash);
    r.key_id = Some(key_id);
    r.args_bytes = Some(24);
    r.decision = Some("allowed".into());
    r
}

async fn run(cli: &Cli, appenders: usize, durable: bool) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(&cli.dir);
    let log = AuditLog::open(AuditConfig::new(&cli.dir, "bench"), &[7u8; 32])?;
    let fp = Arc::new(Fingerprinter::new([3u8; 32], "k1"));
    let per_task = cli.records / appenders;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..appenders {
        let (log, fp) = (log.clone(), fp.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let r = record(&fp, t * per_task + i);
                if durable {
                    log.append(r).await?;
                } else {
                    log.append_deferred(r).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Deferred records count once they are durable too: close syncs the rest.
    log.close().await?;
    Ok((per_task * appenders) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    println!("| appenders | append | records/s |");
    println!("|---:|---|---:|");
    for n in cli.appenders.split(',') {
        let n: usize = n
            .trim()
            .parse()
            .context("--appenders: numbers, comma separated")?;
        for durable in [true, false] {
            let rate = run(&cli, n.max(1), durable).await?;
            let kind = if durable {
                "durable (waits for its sync)"
            } else {
                "deferred"
            };
            println!("| {n} | {kind} | {rate:.0} |");
        }
    }
    let _ = std::fs::remove_dir_all(&cli.dir);
    Ok(())
}
