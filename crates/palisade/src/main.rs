//! The `palisade` binary: parses the command line and hands over to [`palisade::cli`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = palisade::cli::Cli::parse();
    palisade::cli::init_logging(&cli.log_format);
    match palisade::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
