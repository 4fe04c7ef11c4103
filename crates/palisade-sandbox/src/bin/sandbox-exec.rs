//! `sandbox-exec PLAN_JSON`: applies the plan and execs its program (the same entry point as the
//! gateway's `palisade sandbox-exec`, as a standalone binary for tests).

fn main() {
    let Some(arg) = std::env::args().nth(1) else {
        eprintln!("palisade sandbox: plan: missing; usage: sandbox-exec PLAN_JSON");
        std::process::exit(palisade_sandbox::EXIT_SANDBOX_FAILED);
    };
    match serde_json::from_str(&arg) {
        Ok(plan) => palisade_sandbox::exec(plan),
        Err(e) => {
            eprintln!("palisade sandbox: plan: {e}");
            std::process::exit(palisade_sandbox::EXIT_SANDBOX_FAILED);
        }
    }
}
