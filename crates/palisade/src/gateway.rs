//! The gateway's shared state, built once from the config: the authenticator, the upstreams
//! and their supervisors, each tenant's view of them, the sessions and the metrics.
//! Request handling borrows it; nothing here knows about HTTP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::catalog::Names;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::Parked;
use crate::session::Sessions;
use crate::upstream::Upstream;

/// What one tenant may reach.
pub struct Tenant {
    pub id: Arc<str>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Whether names are prefixed with their server (see [`crate::catalog`]).
    pub namespacing: bool,
}

impl Tenant {
    pub fn upstream(&self, server: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == server)
    }
}

pub struct Gateway {
    pub config: Config,
    pub auth: Box<dyn Authenticator>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub tenants: HashMap<Arc<str>, Tenant>,
    pub sessions: Sessions,
    pub names: Names,
    /// Calls waiting for a modern client's input (see [`Parked`]).
    pub parked: Arc<Parked>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the gateway starts draining: long-lived streams end.
    pub draining: CancellationToken,
    /// Cancelled last: upstream links close and processes stop.
    pub stopping: CancellationToken,
    supervisors: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Gateway {
    pub fn new(config: Config, auth: Box<dyn Authenticator>) -> Arc<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let stopping = CancellationToken::new();
        // No ambient proxy for upstreams: an operator names each upstream's URL explicitly,
        // and per-request proxy matching costs URL parsing on the hot path.
        let http_client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let upstreams: Vec<Arc<Upstream>> = config
            .servers
            .iter()
            .map(|s| {
                Upstream::new(
                    s.clone(),
                    metrics.clone(),
                    stopping.clone(),
                    http_client.clone(),
                )
            })
            .collect();
        let tenants = config
            .tenants
            .iter()
            .map(|t| {
                let id: Arc<str> = t.id.as_str().into();
                let ups = t
                    .servers
                    .iter()
                    .filter_map(|name| {
                        upstreams
                            .iter()
                            .find(|u| &*u.name == name.as_str())
                            .cloned()
                    })
                    .collect();
                (
                    id.clone(),
                    Tenant {
                        id,
                        upstreams: ups,
                        namespacing: t.namespacing,
                    },
                )
            })
            .collect();
        let sessions = Sessions::new(
            Duration::from_secs(config.limits.session_idle_secs),
            config.limits.max_sessions_per_tenant,
            metrics.clone(),
        );
        Arc::new(Gateway {
            config,
            auth,
            upstreams,
            tenants,
            sessions,
            names: Names::default(),
            parked: Arc::new(Parked::default()),
            metrics,
            draining: CancellationToken::new(),
            stopping,
            supervisors: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Starts every upstream's supervisor and the session reaper.
    pub fn start(self: &Arc<Self>) {
        let mut sups = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        for u in &self.upstreams {
            sups.push(u.start());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = tick.tick() => { me.sessions.reap_idle(); }
                    _ = me.draining.cancelled() => return,
                }
            }
        });
    }

    /// Stops upstreams (killing their processes) and waits for their supervisors.
    pub async fn stop(&self) {
        self.draining.cancel();
        self.sessions.close_all();
        self.stopping.cancel();
        let sups: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.supervisors.lock().unwrap_or_else(|e| e.into_inner()));
        for s in sups {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
    }
}
