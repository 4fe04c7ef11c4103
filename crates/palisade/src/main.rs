//! The `palisade` binary: parses the command line, builds the runtime and hands over to
//! [`palisade::cli`]. `palisade sandbox-exec PLAN` (the gateway's own re-exec helper) is handled
//! first, before any thread starts.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The sandbox helper runs before any thread exists (no runtime, no logging): it applies
    // the plan to this fresh process and execs the server.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "sandbox-exec") {
        palisade::cli::sandbox_exec(args.next());
    }
    let cli = palisade::cli::Cli::parse();
    palisade::cli::init_logging(&cli.log_format);
    let mut builder = match cli.worker_threads {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(palisade::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
