//! `palisade audit verify`: checks the audit trail's hash chain and signed checkpoints, and
//! names the first bad record (modified, deleted, reordered, truncated, bad signature); a torn
//! last line after a crash is reported as such, not as tampering.

use std::path::PathBuf;

use clap::Subcommand;

use super::onboard::StoreArgs;
use crate::audit::{AuditKeys, audit_dir};
use crate::config::Config;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify the trail; exits non-zero at the first problem.
    Verify {
        /// The trail's directory (default: the config's).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { dir, store } => {
            let config = Config::load(&store.config)?;
            let data_dir = store.paths(&config).data_dir;
            let keys = AuditKeys::load(&config, &data_dir)?;
            let public = keys.public_key()?;
            let dir = dir.unwrap_or_else(|| audit_dir(&config, &data_dir));
            let report = palisade_audit::verify(&dir, &public);
            println!(
                "{}: {} files, {} records, {} checkpoints, last seq {}",
                dir.display(),
                report.files,
                report.records,
                report.checkpoints,
                report.last_seq
            );
            for torn in &report.torn_tails {
                println!("torn tail (a crash mid-write, not tampering): {torn:?}");
            }
            match &report.problem {
                None => {
                    println!("OK");
                    Ok(())
                }
                Some(p) => anyhow::bail!("audit trail is not intact: {p}"),
            }
        }
    }
}
