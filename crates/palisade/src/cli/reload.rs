//! Config hot reload: on SIGHUP or when the config file changes, load and validate it, then
//! apply it to the running gateway. A config that does not load is rejected with a logged
//! error and the `palisade_config_reloads_total{outcome="rejected"}` metric; the old one keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{Debouncer, RecommendedCache};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::gateway::Gateway;

/// Starts the watcher and the SIGHUP handler; they stop when the gateway drains.
pub(super) fn spawn(gw: Arc<Gateway>, path: PathBuf) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = watch_file(&path, tx.clone());
    if let Err(e) = &watcher {
        tracing::warn!(config = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
    }
    tokio::spawn(async move {
        // Keeps the watcher alive as long as this task.
        let _watcher = watcher;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = rx.recv() => {}
                _ = hangup => {}
                _ = gw.draining.cancelled() => return,
            }
            reload(&gw, &path).await;
        }
    });
}

async fn reload(gw: &Gateway, path: &Path) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            gw.metrics.config_reload("rejected");
            tracing::error!(error = %e, "config reload rejected; the previous config keeps serving");
            return;
        }
    };
    if config.data_paths(Path::new("")) != gw.config().data_paths(Path::new("")) {
        tracing::warn!("storage settings changed: they take effect at the next restart");
    }
    match gw.reload(config).await {
        Ok(()) => {
            gw.metrics.config_reload("applied");
            tracing::info!(config = %path.display(), "config reloaded");
        }
        Err(e) => {
            gw.metrics.config_reload("rejected");
            tracing::error!(error = %e, "config reload failed; the previous config keeps serving");
        }
    }
}

/// Watches the file's directory (editors replace files by renaming) and signals changes to
/// the file, debounced.
fn watch_file(
    path: &Path,
    tx: mpsc::Sender<()>,
) -> Result<Debouncer<RecommendedWatcher, RecommendedCache>, notify_debouncer_full::notify::Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let name = path.file_name().map(|n| n.to_owned());
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(300),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            let Ok(events) = result else { return };
            let ours = events
                .iter()
                .flat_map(|e| e.paths.iter())
                .any(|p| p.file_name() == name.as_deref());
            if ours {
                // A reload is already queued if this fails: nothing is lost.
                let _ = tx.try_send(());
            }
        },
    )?;
    debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(debouncer)
}
