//! The gateway's shared state: the config in force, the registry cache and the store behind
//! it, the authenticator, the running upstreams, the sessions and the metrics. Request handling
//! borrows it; nothing here knows about HTTP.
//!
//! Change flows one way: the store (written by the admin API, the CLI, or config
//! reconciliation) bumps its revision; a background task polls it every
//! [`REFRESH_EVERY`] and rebuilds the [`Registry`], then ends the sessions it no longer admits.
//! So a suspension or revocation reaches open sessions within a second, on every replica that
//! shares the store. A config reload ([`Gateway::reload`]) restarts only the upstreams whose
//! settings changed.
//!
//! Upstreams come in two placements (docs/ARCHITECTURE.md §5): shared ones run for every tenant and
//! follow the config; a dedicated server gets one instance per active tenant, which follows the
//! registry: created with the tenant's entry, started on its first call, stopped when idle, and
//! stopped for good when the tenant is suspended or deleted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_ids::TenantId;
use palisade_oauth::Verifier;
use palisade_store::{
    Declared, NewKey, NewTenant, Source, Status, Store, StoreError, TenantRecord,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::apikey::{Pepper, config_key_id, parse_stored_hash};
use crate::assertion::Assertions;
use crate::audit::Auditor;
use crate::auth::Authenticator;
use crate::catalog::Names;
use crate::config::{Config, Placement};
use crate::limits::Protection;
use crate::listens::Listens;
use crate::metrics::Metrics;
use crate::pipeline::Parked;
use crate::registry::Registry;
use crate::secrets::{MasterKey, Vault};
use crate::session::shared::Shared;
use crate::session::{SessionLimits, Sessions, Sharing};
use crate::upstream::{TenantContext, Upstream};

/// How often the store's revision is polled.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// How often API keys' last-use times are written.
const LAST_USED_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("registry store: {0}")]
    Store(#[from] StoreError),
    #[error("[oauth]: {0}")]
    OAuth(String),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditSetupError),
    #[error("[rate_limits]: {0}")]
    Limits(#[from] palisade_limits::LimitError),
    #[error(transparent)]
    Assertions(#[from] crate::assertion::AssertionError),
    #[error(transparent)]
    FleetKey(#[from] crate::config::FleetKeyError),
    #[error("[rate_limits] redis_url is not a Redis URL (the fleet's sessions are kept there)")]
    SessionStore,
}

/// The session table: with a fleet key, one whose sessions any replica continues.
fn sessions(
    config: &Config,
    replica: &str,
    metrics: &Arc<Metrics>,
) -> Result<Sessions, GatewayError> {
    let limits = SessionLimits::of(&config.limits);
    let table = Sessions::new(limits, metrics.clone());
    let Some(sealer) = config.fleet.sealer()? else {
        return Ok(table);
    };
    // `palisade check` refuses a fleet key without a Redis URL.
    let url = config
        .rate_limits
        .redis_url()
        .ok_or(GatewayError::SessionStore)?;
    let store = Shared::new(&url, config.fleet.name(), replica, limits.idle)
        .ok_or(GatewayError::SessionStore)?;
    let store = Arc::new(store);
    // Bounded: a writer that falls behind drops copies, never a client's events.
    let (mirror, rx) = tokio::sync::mpsc::channel(8192);
    let counted = metrics.clone();
    store.mirror_writer(rx, move || counted.session_store_failed());
    Ok(table.shared(Sharing {
        sealer,
        store,
        mirror,
    }))
}

/// A tenant's own instance of a dedicated server: (tenant, server).
type InstanceKey = (TenantId, Arc<str>);

/// A running upstream and what stops it.
struct Running {
    upstream: Arc<Upstream>,
    stop: CancellationToken,
    supervisor: Option<JoinHandle<()>>,
}

pub struct Gateway {
    config: ArcSwap<Config>,
    pub store: Store,
    /// This replica's name in the fleet (`[fleet] replica`, `PALISADE_REPLICA`, the host name).
    pub(crate) replica: String,
    pub auth: Authenticator,
    registry: ArcSwap<Registry>,
    /// Shared upstreams, by server name.
    running: Mutex<HashMap<Arc<str>, Running>>,
    /// Tenants' own instances of dedicated servers, by (tenant, server): created with the
    /// registry entry of an active tenant, started on first use, stopped when the tenant is
    /// suspended or deleted or the server's settings change.
    dedicated: Mutex<HashMap<InstanceKey, Running>>,
    /// Tenants' working directories live under `<data_dir>/tenants/`.
    data_dir: std::path::PathBuf,
    /// Tenants' secrets in the store, sealed under the master key (fixed until restart).
    pub(crate) vault: Arc<Vault>,
    /// The audit trail, unless `[audit] enabled = false`.
    pub audit: Option<Arc<Auditor>>,
    /// Rate limits (docs/ARCHITECTURE.md §4, steps 6 and 7).
    pub(crate) protection: Protection,
    /// Signs the tenant context of calls to shared servers.
    pub assertions: Assertions,
    pub sessions: Sessions,
    /// Open `subscriptions/listen` streams.
    pub listens: Arc<Listens>,
    pub names: Names,
    /// Calls waiting for a modern client's input (see [`Parked`]).
    pub parked: Arc<Parked>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the gateway is asked to stop ([`Gateway::leave`]): `/readyz` answers 503
    /// from then on, while calls are still served until `draining`.
    pub(crate) leaving: CancellationToken,
    /// Cancelled when the gateway starts draining: it accepts no more connections, and
    /// long-lived streams end.
    pub(crate) draining: CancellationToken,
    /// Cancelled last: upstream links close and processes stop.
    pub stopping: CancellationToken,
    http_client: reqwest::Client,
    /// Stops the JWKS refresh of the verifier in force.
    verifier_stop: Mutex<CancellationToken>,
    /// One reload or refresh at a time.
    changing: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Gateway {
    /// Builds the gateway: reconciles the config's tenants into the store and loads the
    /// registry. Nothing runs until [`Gateway::start`].
    pub async fn open(
        config: Config,
        pepper: Pepper,
        store: Store,
        data_dir: std::path::PathBuf,
    ) -> Result<Arc<Gateway>, GatewayError> {
        let metrics = Arc::new(Metrics::new());
        let stopping = CancellationToken::new();
        // No ambient proxy for upstreams: an operator names each upstream's URL explicitly,
        // and per-request proxy matching costs URL parsing on the hot path.
        let http_client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            // Each legacy client session of an HTTP upstream has its own upstream session: idle
            // connections are kept for the busiest, not for every one.
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let verifier = build_verifier(&config, &http_client)?;
        let vault = Arc::new(Vault {
            store: store.clone(),
            key: MasterKey::from_config(&config)?.map(Arc::new),
        });
        let assertions = Assertions::open(data_dir.join("assertion-keys"))?;
        let audit = if config.audit.enabled {
            Some(Arc::new(Auditor::open(&config, &data_dir)?))
        } else {
            tracing::warn!("the audit trail is off ([audit] enabled = false)");
            None
        };
        let replica = config.fleet.replica_name();
        let parked = Arc::new(Parked::new(&replica, config.fleet.shares_sessions()));
        let sessions = sessions(&config, &replica, &metrics)?;
        let gw = Arc::new(Gateway {
            auth: Authenticator::new(pepper, verifier),
            replica,
            config: ArcSwap::from_pointee(config.clone()),
            store,
            registry: ArcSwap::from_pointee(Registry::default()),
            running: Mutex::new(HashMap::new()),
            dedicated: Mutex::new(HashMap::new()),
            data_dir,
            vault,
            audit,
            protection: Protection::new(&config.rate_limits, config.fleet.name())?,
            assertions,
            sessions,
            listens: Arc::default(),
            names: Names::default(),
            parked,
            metrics,
            leaving: CancellationToken::new(),
            draining: CancellationToken::new(),
            stopping,
            http_client,
            verifier_stop: Mutex::new(CancellationToken::new()),
            changing: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
        });
        crate::upstream::sandbox::keep_private(config.private_paths(&gw.data_dir));
        report_sandboxes(&config);
        gw.sync_upstreams(&config);
        gw.store.reconcile(&declared(&config)).await?;
        gw.refresh(true).await?;
        Ok(gw)
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The registry snapshot in force.
    pub fn registry(&self) -> arc_swap::Guard<Arc<Registry>> {
        self.registry.load()
    }

    /// The running upstreams, by name.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut ups: Vec<Arc<Upstream>> = lock(&self.running)
            .values()
            .map(|r| r.upstream.clone())
            .collect();
        ups.sort_by(|a, b| a.name.cmp(&b.name));
        ups
    }

    /// A tenant's own instances (dedicated servers), by server name.
    pub(crate) fn instances_of(&self, tenant: &str) -> Vec<Arc<Upstream>> {
        let mut list: Vec<Arc<Upstream>> = lock(&self.dedicated)
            .iter()
            .filter(|((t, _), _)| &**t == tenant)
            .map(|(_, r)| r.upstream.clone())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Updates the gauges of tenants' instances by server and state (at each scrape).
    pub(crate) fn observe_instances(&self) {
        let mut census: HashMap<(String, &'static str), i64> = HashMap::new();
        let mut sandboxes: HashMap<(String, String), i64> = HashMap::new();
        let pools: Vec<Arc<Upstream>> = lock(&self.dedicated)
            .values()
            .map(|r| r.upstream.clone())
            .collect();
        for u in pools.iter().flat_map(|p| p.instances()) {
            let state = u.state();
            let server = u.name.to_string();
            if state == "ready" {
                let level = u.sandbox_level().unwrap_or_else(|| "none".into());
                *sandboxes.entry((server.clone(), level)).or_default() += 1;
            }
            *census.entry((server, state)).or_default() += 1;
        }
        self.metrics.instances_observed(&census);
        self.metrics.sandboxes_observed(&sandboxes);
    }

    /// Starts upstream supervisors, JWKS fetching, and the background loops: session reaping
    /// and idle rate-limit buckets, registry refresh, last-use flushing.
    pub fn start(self: &Arc<Self>) {
        start_all(&mut lock(&self.running));
        start_all(&mut lock(&self.dedicated));
        self.start_verifier(self.auth.oauth());
        let me = self.clone();
        let refresher = tokio::spawn(async move {
            let mut refresh = tokio::time::interval(REFRESH_EVERY);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reap = tokio::time::interval(Duration::from_secs(5));
            let mut flush = tokio::time::interval(LAST_USED_EVERY);
            // Often enough that a session in use never expires in the fleet's store, which
            // gives it one idle period from each flush.
            let every =
                (me.sessions.idle() / 3).clamp(Duration::from_millis(250), Duration::from_secs(5));
            let mut activity = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = refresh.tick() => {
                        if let Err(e) = me.refresh(false).await {
                            me.metrics.registry_refresh_failed();
                            tracing::warn!(error = %e, "registry refresh failed; serving the last snapshot");
                        }
                    }
                    _ = reap.tick() => {
                        me.sessions.reap_idle().await;
                        me.protection.evict_idle();
                        me.assertions.reload();
                    }
                    _ = flush.tick() => me.flush_last_used().await,
                    _ = activity.tick() => me.sessions.flush_activity().await,
                    _ = me.draining.cancelled() => return,
                }
            }
        });
        lock(&self.tasks).push(refresher);
    }

    /// Reloads the registry if the store changed (or always, with `force`), then ends the
    /// sessions the new registry no longer admits.
    pub(crate) async fn refresh(&self, force: bool) -> Result<(), GatewayError> {
        let _one = self.changing.lock().await;
        if !force && self.store.revision().await? == self.registry.load().revision {
            return Ok(());
        }
        let snapshot = self.store.snapshot().await?;
        self.rebuild(snapshot);
        Ok(())
    }

    fn rebuild(&self, snapshot: palisade_store::Snapshot) {
        let config = self.config();
        let shared: HashMap<Arc<str>, Arc<Upstream>> = lock(&self.running)
            .iter()
            .map(|(k, r)| (k.clone(), r.upstream.clone()))
            .collect();
        let started = self.started();
        let mut dedicated = lock(&self.dedicated);
        let mut in_use = HashSet::new();
        let mut resolve = |t: &TenantRecord, server: &str| -> Option<Arc<Upstream>> {
            let cfg = config.server(server)?;
            if cfg.placement == Placement::Shared {
                return shared.get(server).cloned();
            }
            // A suspended tenant has no processes.
            if t.status != Status::Active {
                return None;
            }
            let ctx = TenantContext {
                tenant: t.id.clone(),
                secrets: config
                    .tenants
                    .iter()
                    .find(|d| d.id == *t.id)
                    .map(|d| d.secrets.clone())
                    .unwrap_or_default(),
                workdir: self.data_dir.join("tenants").join(&t.id).join(server),
            };
            let key: InstanceKey = (ctx.tenant.clone(), server.into());
            let current = dedicated.get(&key).is_some_and(|r| {
                r.upstream.config == *cfg && r.upstream.tenant.as_ref() == Some(&ctx)
            });
            if !current {
                if let Some(old) = dedicated.remove(&key) {
                    old.stop.cancel();
                }
                let stop = self.stopping.child_token();
                let upstream = Upstream::dedicated(
                    cfg.clone(),
                    ctx,
                    self.vault.clone(),
                    self.metrics.clone(),
                    stop.clone(),
                    self.http_client.clone(),
                );
                self.tap(&upstream, &stop);
                // The supervisor waits for the first call before starting a process.
                let supervisor = started.then(|| upstream.start());
                dedicated.insert(
                    key.clone(),
                    Running {
                        upstream,
                        stop,
                        supervisor,
                    },
                );
            }
            let upstream = dedicated.get(&key).map(|r| r.upstream.clone());
            in_use.insert(key);
            upstream
        };
        let old = self.registry.load_full();
        let new = Arc::new(Registry::build(snapshot, &mut resolve, &old));
        // Instances of tenants that are gone, suspended, or no longer placed there stop now.
        dedicated.retain(|key, r| {
            let keep = in_use.contains(key);
            if !keep {
                tracing::info!(tenant = %key.0, server = %key.1, "stopping the tenant's instance");
                r.stop.cancel();
            }
            keep
        });
        drop(dedicated);
        self.registry.store(new.clone());
        let doomed = |tenant: &str, key: Option<&str>| {
            let tenant_ok = new
                .tenant(tenant)
                .is_some_and(|t| t.status == Status::Active);
            let key_ok = key.is_none_or(|k| new.key_is_live(k));
            !(tenant_ok && key_ok)
        };
        let closed = self
            .sessions
            .close_where(|s| doomed(&s.tenant, s.key.as_deref()))
            + self.listens.end_where(doomed);
        if closed > 0 {
            tracing::info!(
                sessions = closed,
                "ended sessions and listens of suspended or deleted tenants and revoked keys"
            );
        }
    }

    /// Applies a new, already validated config: upstreams whose settings changed restart,
    /// declared tenants are reconciled into the store, the OAuth issuers are replaced. Listen
    /// addresses and limits other than per-call ones take effect at the next restart.
    pub async fn reload(&self, config: Config) -> Result<(), GatewayError> {
        let verifier = build_verifier(&config, &self.http_client)?;
        self.store.reconcile(&declared(&config)).await?;
        let old = self.config();
        if old.listen.mcp != config.listen.mcp || old.listen.admin != config.listen.admin {
            tracing::warn!("listen addresses changed: they take effect at the next restart");
        }
        self.sync_upstreams(&config);
        if self.started() {
            self.start_verifier(verifier.clone());
        }
        self.auth.set_oauth(verifier);
        self.config.store(Arc::new(config));
        self.refresh(true).await?;
        self.start_supervisors();
        Ok(())
    }

    /// Makes the running shared upstreams match the config: new ones are created (and started
    /// if the gateway runs), changed or removed ones stopped. (Dedicated instances follow the
    /// registry: see [`Gateway::rebuild`].)
    fn sync_upstreams(&self, config: &Config) {
        let mut running = lock(&self.running);
        running.retain(|name, r| {
            let keep = config
                .server(name)
                .is_some_and(|s| *s == r.upstream.config && s.placement == Placement::Shared);
            if !keep {
                tracing::info!(server = %name, "upstream removed or changed: stopping it");
                r.stop.cancel();
            }
            keep
        });
        let shared = config
            .servers
            .iter()
            .filter(|s| s.placement == Placement::Shared);
        for server in shared {
            if running.contains_key(server.name.as_str()) {
                continue;
            }
            let stop = self.stopping.child_token();
            let upstream = Upstream::new(
                server.clone(),
                self.metrics.clone(),
                stop.clone(),
                self.http_client.clone(),
            );
            self.tap(&upstream, &stop);
            running.insert(
                upstream.name.clone(),
                Running {
                    upstream,
                    stop,
                    supervisor: None,
                },
            );
        }
    }

    /// With a fleet key, relays what the upstream says for sessions to the other replicas.
    fn tap(&self, upstream: &Upstream, stop: &CancellationToken) {
        if let Some(sharing) = self.sessions.sharing() {
            sharing.store.tap(upstream, stop.clone());
        }
    }

    fn started(&self) -> bool {
        !lock(&self.tasks).is_empty()
    }

    /// Fetches the issuers' keys and keeps them fresh; the previous verifier's refresh stops.
    fn start_verifier(&self, verifier: Option<Arc<Verifier>>) {
        let stop = self.stopping.child_token();
        lock(&self.verifier_stop).cancel();
        *lock(&self.verifier_stop) = stop.clone();
        if let Some(v) = verifier {
            tokio::spawn(async move {
                v.start(stop).await;
            });
        }
    }

    fn start_supervisors(&self) {
        if !self.started() {
            return; // `start` will
        }
        start_all(&mut lock(&self.running));
    }

    async fn flush_last_used(&self) {
        let batch = self.auth.take_last_used();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.record_last_used(&batch).await {
            tracing::warn!(error = %e, keys = batch.len(), "cannot record API keys' last use");
        }
    }

    /// Asked to stop (SIGTERM): leave the load balancer first. `/readyz` answers 503 at once;
    /// the drain begins after `limits.shutdown_notice_secs`, or at once when asked again.
    pub fn leave(&self) {
        let notice = Duration::from_secs(self.config().limits.shutdown_notice_secs);
        if self.leaving.is_cancelled() || notice.is_zero() {
            self.leaving.cancel();
            self.draining.cancel();
            return;
        }
        self.leaving.cancel();
        let draining = self.draining.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(notice) => {}
                _ = draining.cancelled() => {}
            }
            draining.cancel();
        });
    }

    /// Stops upstreams (killing their processes) and waits for their supervisors.
    pub async fn stop(&self) {
        self.draining.cancel();
        self.sessions.close_all();
        self.flush_last_used().await;
        self.stopping.cancel();
        let sups: Vec<JoinHandle<()>> = lock(&self.running)
            .values_mut()
            .chain(lock(&self.dedicated).values_mut())
            .filter_map(|r| r.supervisor.take())
            .collect();
        for s in sups {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        let pools: Vec<Arc<Upstream>> = lock(&self.dedicated)
            .values()
            .map(|r| r.upstream.clone())
            .collect();
        for p in pools {
            p.stopped_members(Duration::from_secs(5)).await;
        }
        crate::upstream::sandbox::cleanup();
        if let Some(audit) = &self.audit {
            audit.close().await;
        }
    }
}

/// Says, at start, what sandbox each sandboxed server's processes will get on this host: a
/// layer the host lacks is a warning, or an error when the profile requires it (those processes
/// will not start). Also sweeps the cgroups left by gateways that were killed.
fn report_sandboxes(config: &Config) {
    let dedicated: Vec<&crate::config::Server> = config
        .servers
        .iter()
        .filter(|s| s.placement == Placement::Dedicated && s.stdio.is_some())
        .collect();
    if !dedicated.is_empty() {
        crate::upstream::sandbox::sweep_stale();
    }
    for server in dedicated {
        let profile = crate::upstream::sandbox::profile_of(server);
        let level = crate::upstream::sandbox::host().level(&profile);
        tracing::info!(server = %server.name, level = %level.label(), "sandbox for the tenants' processes");
        let kept_apart = profile.isolates()
            && !level
                .skipped
                .iter()
                .any(|(l, _)| *l == palisade_sandbox::Layer::Namespaces);
        if !kept_apart {
            tracing::warn!(server = %server.name, "THE TENANTS' PROCESSES OF THIS SERVER ARE NOT KEPT APART: without their own pid and mount namespaces one tenant's code can signal the gateway and other tenants' processes, read their environment (their secrets) and the gateway's data directory; see `palisade doctor`");
        }
        for (layer, why) in &level.skipped {
            if profile.requires(*layer) {
                tracing::error!(server = %server.name, layer = layer.name(), %why, "a required sandbox layer is unavailable on this host: the tenants' processes of this server will not start (see `palisade doctor`)");
            } else {
                tracing::warn!(server = %server.name, layer = layer.name(), %why, "sandbox layer unavailable on this host: skipped");
            }
        }
    }
}

fn build_verifier(
    config: &Config,
    http: &reqwest::Client,
) -> Result<Option<Arc<Verifier>>, GatewayError> {
    match &config.oauth {
        None => Ok(None),
        Some(o) => Verifier::new(o.clone(), http.clone())
            .map(|v| Some(Arc::new(v)))
            .map_err(|e| GatewayError::OAuth(e.to_string())),
    }
}

/// The config's tenants, as the store reconciles them. Their ids were validated with the
/// config (`Config::validate`), so none is left out here.
pub fn declared(config: &Config) -> Vec<Declared> {
    config
        .tenants
        .iter()
        .filter_map(|t| Some((t, TenantId::parse(&t.id).ok()?)))
        .map(|(t, id)| Declared {
            tenant: NewTenant {
                id: id.clone(),
                display_name: t.display_name.clone().unwrap_or_else(|| t.id.clone()),
                servers: t.servers.clone(),
                namespacing: t.namespacing,
                limits: serde_json::json!({}),
                source: Source::Config,
            },
            keys: t
                .keys
                .iter()
                .filter_map(|k| parse_stored_hash(k))
                .map(|hash| NewKey {
                    id: config_key_id(&hash),
                    tenant_id: id.clone(),
                    name: "declared in the config".into(),
                    hash,
                    scopes: t.key_scopes.clone(),
                    source: Source::Config,
                    expires_at_ms: None,
                })
                .collect(),
            policy: t.policy.as_ref().and_then(|p| serde_json::to_value(p).ok()),
        })
        .collect()
}

/// Starts the supervisors that are not running yet.
fn start_all<K>(instances: &mut HashMap<K, Running>) {
    for r in instances.values_mut() {
        if r.supervisor.is_none() {
            r.supervisor = Some(r.upstream.start());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
