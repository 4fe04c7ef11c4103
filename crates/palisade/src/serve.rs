//! Starting a gateway: from a config value to listeners serving on the caller's runtime.
//!
//! `palisade serve`, the demo and the in-process tests all start here, so a test's gateway is
//! built exactly as the binary builds it. [`GatewayBuilder::start`] opens the registry store,
//! binds both listeners (port 0 gives free ports), opens the [`Gateway`] and spawns the HTTP
//! servers; the returned [`Running`] owns them. Signals and config-file reloads are the
//! binary's business (`cli`), not this module's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::apikey::{Pepper, PepperError};
use crate::config::{Config, DataPaths};
use crate::gateway::{Gateway, GatewayError};
use crate::http::{self, Bound};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {}", dir.display())]
    DataDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the registry store")]
    Store(#[source] palisade_store::StoreError),
    #[error("auth")]
    Pepper(#[source] PepperError),
    #[error(transparent)]
    Listen(std::io::Error),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// A gateway to start: a config value, where its state lives, and optionally the pepper.
pub struct GatewayBuilder {
    config: Config,
    paths: DataPaths,
    pepper: Option<Pepper>,
}

impl GatewayBuilder {
    pub fn new(config: Config, paths: DataPaths) -> GatewayBuilder {
        GatewayBuilder {
            config,
            paths,
            pepper: None,
        }
    }

    /// Hashes API keys under `pepper` instead of the one the config names (the demo makes its
    /// own).
    pub fn pepper(mut self, pepper: Pepper) -> GatewayBuilder {
        self.pepper = Some(pepper);
        self
    }

    /// Opens the store, binds `listen.mcp` and `listen.admin`, opens the gateway and serves it
    /// on the current runtime until [`Running::stop`] (or the gateway drains).
    pub async fn start(self) -> Result<Running, StartError> {
        let pepper = match self.pepper {
            Some(p) => p,
            None => pepper_or_random(&self.config)?,
        };
        raise_open_file_limit(self.config.listen.max_connections);
        let store = open_store(&self.paths.database_url).await?;
        let bound = Bound::bind(self.config.listen.mcp, self.config.listen.admin)
            .await
            .map_err(StartError::Listen)?;
        let mcp = bound.mcp.local_addr().map_err(StartError::Listen)?;
        let admin = bound.admin.local_addr().map_err(StartError::Listen)?;
        let gateway = Gateway::open(self.config, pepper, store, self.paths.data_dir).await?;
        let served = tokio::spawn(http::serve(gateway.clone(), bound));
        let heartbeat = crate::fleet::spawn_heartbeat(gateway.clone());
        crate::fleet::spawn_events(&gateway);
        Ok(Running {
            mcp_url: format!("http://{mcp}/mcp"),
            admin_url: format!("http://{admin}"),
            gateway,
            served: Some(served),
            heartbeat: Some(heartbeat),
        })
    }
}

/// A gateway serving on this runtime. Dropping it starts the drain without waiting for it.
pub struct Running {
    /// The MCP endpoint, `http://ADDR/mcp`.
    pub mcp_url: String,
    /// The admin listener's base URL, `http://ADDR`.
    pub admin_url: String,
    gateway: Arc<Gateway>,
    served: Option<JoinHandle<std::io::Result<()>>>,
    /// Ends after the gateway stops, with a last heartbeat that says so.
    heartbeat: Option<JoinHandle<()>>,
}

impl Running {
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Serves until the gateway drains (a signal, [`Running::stop`]) and has stopped.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let result = match self.served.take() {
            Some(served) => served
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        };
        // The fleet hears that this replica stopped (a store that does not answer soon is not
        // waited for: the heartbeat's age says the same, later).
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), heartbeat).await;
        }
        result
    }

    /// Drains the gateway as SIGTERM would and waits until it has stopped.
    pub async fn stop(self) -> std::io::Result<()> {
        self.gateway.draining.cancel();
        self.wait().await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.served.is_some() {
            self.gateway.draining.cancel();
        }
    }
}

/// The pepper the config names. Without one, API keys cannot be checked: a random pepper is
/// used so that nothing matches, and the gateway says so.
pub(crate) fn pepper_or_random(config: &Config) -> Result<Pepper, StartError> {
    match config.pepper() {
        Ok(p) => Ok(p),
        Err(e)
            if config.tenants.iter().all(|t| t.keys.is_empty()) && config.admin.keys.is_empty() =>
        {
            tracing::warn!("{e}; API keys cannot be used until a pepper is configured");
            Ok(Pepper::random())
        }
        Err(e) => Err(StartError::Pepper(e)),
    }
}

/// Opens the registry store at `url`, creating a SQLite file's directory if needed.
pub(crate) async fn open_store(url: &str) -> Result<palisade_store::Store, StartError> {
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(dir) = Path::new(path.split('?').next().unwrap_or(path)).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
            dir: dir.to_owned(),
            source,
        })?;
    }
    palisade_store::Store::open(url)
        .await
        .map_err(StartError::Store)
}

/// Each connection holds a file descriptor, and the usual soft limit (1024) is far below
/// `listen.max_connections`: past it, accepting fails and clients wait. The soft limit is
/// raised to the hard one (as Go's runtime does), and a limit that is still too low is said.
fn raise_open_file_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Room for upstream connections, audit and store files beside the clients.
    let wanted = max_connections as u64 + 256;
    if limit < wanted {
        tracing::warn!(
            open_file_limit = limit,
            wanted,
            "the open-file limit is below listen.max_connections plus room for upstreams: \
             connections beyond it wait; raise it (ulimit -n, LimitNOFILE=) or lower \
             listen.max_connections"
        );
    }
}
