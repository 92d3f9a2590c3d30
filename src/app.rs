//! Wires the backends of the configured profile into one shared state and serves the router.
//!
//! `open_repository` is the only place that chooses implementations of the seams: the embedded
//! ones, or MongoDB / IPFS when their addresses are configured. A service that is down at
//! start-up is waited for, with a log line saying what is awaited, rather than failing.
//! `serve` is the one lifecycle, used by `main` and tests alike: it takes a bound listener
//! (tests bind port 0) and a shutdown signal, runs the background tasks (the blob sweeper, the
//! purge of expired records) and the side listeners (the admin socket, an optional metrics
//! listener), drains in-flight requests on shutdown, stops the rest, then returns.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin;
use crate::auth::accounts::Accounts;
use crate::auth::external::External;
use crate::auth::keys::Keyring;
use crate::auth::server::AuthServer;
use crate::auth::tokens::TokenService;
use crate::config::{Config, MasterKeySource, redact_userinfo};
use crate::consent::{Consent, ConsentSettings};
use crate::fhir::instant::{format_instant, now_millis};
use crate::http::{self, HttpSettings, HttpState};
use crate::index::IndexStore;
use crate::index::bounded::Bounded;
use crate::index::embedded::{AtRestKey, EmbeddedIndex};
use crate::index::mongo::MongoIndex;
use crate::ledger::Ledger;
use crate::ledger::embedded::EmbeddedLedger;
use crate::ledger::identity::IDENTITY_PURPOSE;
use crate::ledger::rpc::{RpcLedger, RpcSettings};
use crate::metrics;
use crate::repository::Repository;
use crate::vault::blob::BlobStore;
use crate::vault::bounded::Bounded as BoundedBlobs;
use crate::vault::cached::Cached as CachedBlobs;
use crate::vault::ipfs::IpfsBlobStore;
use crate::vault::local::LocalBlobStore;
use crate::vault::{MasterKey, Vault};
use alloy::signers::local::PrivateKeySigner;

/// Makes a panic log where it happened, never what it said: a panic's message can quote the
/// data being handled (a slice of a client's string, say), and logs carry no health data. The
/// HTTP face turns a panicking request into a 500 OperationOutcome; this keeps it out of stderr.
pub fn log_panics_without_their_messages() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "a task panicked (its message is withheld: it may quote data)");
    }));
}

/// Longest pause between two attempts to reach a service at start-up.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("index store: {0}")]
    Index(String),
    #[error("blob store: {0}")]
    Blobs(String),
    #[error("authorization server: {0}")]
    Auth(String),
    #[error("search parameters: {0}")]
    Search(String),
    #[error("ledger: {0}")]
    Ledger(String),
}

/// The master key's derivation purpose for the embedded index's at-rest key.
const EMBEDDED_INDEX_AT_REST: &str = "embedded-index-at-rest";
/// The master key's derivation purpose for the embedded ledger's account (the registrar).
const EMBEDDED_LEDGER_ACCOUNT: &str = "embedded-ledger-account";
/// How often the consent cache asks the chain for new events.
const CONSENT_POLL: Duration = Duration::from_millis(500);

/// The ledger of the configured profile: an Ethereum node when `INTELLIHEALTH_ETH_RPC` is set
/// (waited for like the other services), the embedded one in the data directory otherwise.
pub async fn open_ledger(config: &Config, vault: &Vault) -> Result<Arc<dyn Ledger>, StartupError> {
    let settings = &config.ledger;
    match &settings.eth_rpc {
        Some(url) => {
            let key = settings
                .eth_key
                .as_ref()
                .ok_or_else(|| {
                    StartupError::Ledger(
                        "INTELLIHEALTH_ETH_RPC is set, so the server needs its account's key: \
                         set INTELLIHEALTH_ETH_KEY_FILE (or INTELLIHEALTH_ETH_KEY)"
                            .into(),
                    )
                })?
                .read()
                .map_err(StartupError::Ledger)?;
            let signer: PrivateKeySigner = key.parse().map_err(|_| {
                StartupError::Ledger("the Ethereum key is not a 32-byte hex private key".into())
            })?;
            let rpc = RpcSettings {
                url: url.clone(),
                confirmations: settings.confirmations,
                timeout: config.backend_timeout,
            };
            let ledger = wait_for("the Ethereum node", url, config.backend_timeout, || {
                RpcLedger::connect(rpc.clone(), signer.clone())
            })
            .await;
            Ok(Arc::new(ledger))
        }
        None => {
            let secret = vault.derive(EMBEDDED_LEDGER_ACCOUNT);
            let account = PrivateKeySigner::from_slice(secret.as_slice())
                .map_err(|e| StartupError::Ledger(e.to_string()))?
                .address();
            let ledger = EmbeddedLedger::open(
                &config.data_dir,
                settings.chain_id,
                account,
                settings.block_interval,
            )
            .map_err(|e| StartupError::Ledger(e.to_string()))?;
            Ok(Arc::new(ledger))
        }
    }
}

/// The patients' consent over the ledger: the registry found or deployed, its events read.
pub async fn open_consent(
    config: &Config,
    stores: &Stores,
    ledger: Arc<dyn Ledger>,
) -> Result<Arc<Consent>, StartupError> {
    let configured =
        match &config.ledger.consent_registry {
            Some(text) => Some(crate::consent::typed::parse_address(text).map_err(|e| {
                StartupError::Ledger(format!("INTELLIHEALTH_CONSENT_REGISTRY: {e}"))
            })?),
            None => None,
        };
    let settings = ConsentSettings {
        enforce: config.ledger.enforce,
        stale_after: config.ledger.stale_after,
        break_glass_for: config.ledger.break_glass_for,
        poll: CONSENT_POLL,
    };
    let consent = Consent::open(
        ledger,
        stores.index.clone(),
        stores.vault.derive(IDENTITY_PURPOSE),
        config.base_url.as_deref(),
        configured,
        settings,
    )
    .await
    .map_err(|e| StartupError::Ledger(e.to_string()))?;
    if !config.ledger.enforce {
        tracing::warn!("consent is off: patients' grants are not checked (--consent off)");
    }
    Ok(Arc::new(consent))
}

/// The stores of the configured profile, and the vault over them.
pub struct Stores {
    pub repo: Arc<Repository>,
    pub index: Arc<dyn IndexStore>,
    pub vault: Arc<Vault>,
}

/// Opens the stores of the configured profile (waiting for services that are not up yet).
pub async fn open_repository(config: &Config) -> Result<Arc<Repository>, StartupError> {
    Ok(open_stores(config).await?.repo)
}

/// Opens the stores and the vault; `build` and the CLI's account commands share it.
pub async fn open_stores(config: &Config) -> Result<Stores, StartupError> {
    let master = match &config.master_key {
        MasterKeySource::Environment(value) => MasterKey::parse(value)
            .map_err(|e| StartupError::MasterKey(format!("INTELLIHEALTH_MASTER_KEY: {e}")))?,
        MasterKeySource::File(path) => {
            MasterKey::load_or_create(path).map_err(StartupError::MasterKey)?
        }
    };
    let timeout = config.backend_timeout;
    let index: Arc<dyn IndexStore> = match &config.backends.mongodb_uri {
        Some(uri) => {
            let what = redact_userinfo(uri);
            // Connecting is several calls (hello, ping, creating indexes), each bounded by
            // `timeout`; the attempt as a whole gets room for all of them.
            let connected = wait_for("MongoDB", &what, timeout * 6, || {
                MongoIndex::connect(uri, timeout)
            });
            Arc::new(connected.await)
        }
        None => Arc::new(
            EmbeddedIndex::open(
                &config.data_dir,
                AtRestKey::new(master.derive(EMBEDDED_INDEX_AT_REST)),
            )
            .map_err(|e| StartupError::Index(e.to_string()))?,
        ),
    };
    // Every consumer of a seam (repository, vault, authorization server) is bounded here.
    let index: Arc<dyn IndexStore> = Arc::new(Bounded::new(index, timeout));
    let blobs: Arc<dyn BlobStore> = match &config.backends.ipfs_api {
        Some(api) => {
            let store = IpfsBlobStore::new(api).map_err(|e| StartupError::Blobs(e.to_string()))?;
            wait_for("IPFS", api, timeout, || store.health()).await;
            Arc::new(store)
        }
        None => Arc::new(
            LocalBlobStore::open(&config.data_dir)
                .map_err(|e| StartupError::Blobs(e.to_string()))?,
        ),
    };
    let blobs: Arc<dyn BlobStore> = Arc::new(BoundedBlobs::new(blobs, timeout));
    // Outside the timeout: a hit needs no backend at all.
    let blobs: Arc<dyn BlobStore> = match config.blob_cache_bytes {
        0 => blobs,
        capacity => Arc::new(CachedBlobs::new(blobs, capacity)),
    };
    let vault = Arc::new(Vault::new(master, index.clone()));
    vault
        .verify_master_key()
        .await
        .map_err(|e| StartupError::MasterKey(e.to_string()))?;
    let repo = Arc::new(Repository::new(index.clone(), blobs, vault.clone()));
    Ok(Stores { repo, index, vault })
}

/// The authorization server over the stores: accounts, signing keys, trusted issuers.
pub async fn auth_server(config: &Config, stores: &Stores) -> Result<AuthServer, StartupError> {
    let keyring = Keyring::open(stores.index.clone(), stores.vault.clone())
        .await
        .map_err(|e| StartupError::Auth(e.to_string()))?;
    let tokens = TokenService::new(
        Arc::new(keyring),
        stores.index.clone(),
        External::new(config.trusted_issuers.clone()),
    );
    Ok(AuthServer::new(
        Accounts::new(stores.index.clone()),
        tokens,
        stores.index.clone(),
        config.admin_token.as_ref().map(|t| t.0.clone()),
    ))
}

/// Retries `attempt` until it succeeds, saying at each failure what is awaited and why.
async fn wait_for<T, E, F, Fut>(
    component: &str,
    address: &str,
    timeout: Duration,
    mut attempt: F,
) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(250);
    loop {
        // Bounded, so a service that accepts connections but never answers is reported and
        // retried like one that refuses them, instead of stalling start-up silently.
        let failure = match tokio::time::timeout(timeout, attempt()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        tracing::warn!(
            "waiting for {component} at {address}: {failure}; retrying in {:.1} s",
            pause.as_secs_f64()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY_PAUSE);
    }
}

/// Builds the state the router serves.
pub async fn build(config: &Config) -> Result<HttpState, StartupError> {
    let stores = open_stores(config).await?;
    let replica = config.replica.clone().unwrap_or_else(replica_name);
    // Before this replica writes anything: what its previous process left open would hold the
    // replica's own records (its audit trail above all) until the store gave up on it.
    let aborted = stores
        .index
        .recover_abandoned(&replica)
        .await
        .map_err(|e| StartupError::Index(e.to_string()))?;
    if aborted > 0 {
        tracing::warn!(
            sessions = aborted,
            "aborted what the previous process of this replica left open"
        );
    }
    if let Some(dir) = &config.search_parameters {
        let files =
            crate::repository::reindex::read_parameter_files(dir).map_err(StartupError::Search)?;
        tracing::info!(count = files.len(), "custom search parameters from files");
        stores.repo.set_parameter_files(files);
    }
    stores
        .repo
        .refresh_registry()
        .await
        .map_err(|e| StartupError::Search(e.to_string()))?;
    for unsupported in stores.repo.registry().unsupported() {
        tracing::info!("search parameter not offered: {unsupported}");
    }
    let auth = Arc::new(auth_server(config, &stores).await?);
    let ledger = open_ledger(config, &stores.vault).await?;
    let consent = open_consent(config, &stores, ledger.clone()).await?;
    stores.repo.enforce_consent(consent);
    if config.audit {
        let source = crate::audit::Source { replica };
        let anchoring = crate::ledger::anchor::Anchoring::open(
            ledger,
            stores.index.clone(),
            &source.replica,
            config.anchor_interval,
        )
        .await
        .map_err(|e| StartupError::Ledger(e.to_string()))?;
        stores.repo.enable_anchoring(Arc::new(anchoring));
        let sink: Arc<dyn crate::audit::AuditSink> = stores.repo.clone();
        stores
            .repo
            .enable_audit(crate::audit::AuditLog::start(sink, source));
    }
    let exports = crate::bulk::Exports::new(
        stores.repo.clone(),
        config.data_dir.join("exports"),
        config.export_retention,
    );
    Ok(HttpState {
        exports,
        repo: stores.repo,
        auth,
        settings: Arc::new(HttpSettings {
            base_url: config.base_url.clone(),
            max_body_bytes: config.max_body_bytes,
            max_bundle_entries: config.max_bundle_entries,
            conditional_delete_limit: config.conditional_delete_limit,
            search_handling: config.search_handling,
            started_at: format_instant(now_millis()),
        }),
        dispatcher: Default::default(),
    })
}

/// This server among its replicas, for the AuditEvents' `source.site`: the host it runs on.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        "intellihealth".to_owned()
    } else {
        format!("intellihealth@{host}")
    }
}

/// How the background tasks and side listeners run.
#[derive(Clone, Debug)]
pub struct Background {
    /// `None`: no background sweeper.
    pub sweep_interval: Option<Duration>,
    pub sweep_grace: Duration,
    /// Where the admin socket goes (`DATA_DIR/admin/admin.sock`); `None`: none.
    pub admin_dir: Option<PathBuf>,
    /// An address for an unauthenticated `/metrics` listener; `None`: none.
    pub metrics_listen: Option<String>,
}

impl Background {
    pub fn from_config(config: &Config) -> Background {
        Background {
            sweep_interval: config.sweep_interval,
            sweep_grace: config.sweep_grace,
            admin_dir: Some(config.data_dir.clone()),
            metrics_listen: config.metrics_listen.clone(),
        }
    }

    /// No background work at all (tests that drive everything themselves).
    pub fn none() -> Background {
        Background {
            sweep_interval: None,
            sweep_grace: Duration::ZERO,
            admin_dir: None,
            metrics_listen: None,
        }
    }
}

/// How often expired authorization records are deleted.
const RECORD_PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// Serves until `shutdown` resolves, then stops accepting, waits for in-flight requests and
/// stops the background tasks.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    background: Background,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The portal's client, for the addresses this server is reached at now (the port may be
    // another one than at the last start); before the listener serves, so the portal can sign
    // in from the first request.
    let portal = crate::portal::client(state.settings.base_url.as_deref(), listener.local_addr()?);
    if let Err(e) = state.auth.accounts.add_client(&portal).await {
        tracing::error!(error = %e, "the patient portal's client could not be registered: the portal cannot sign in");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(interval) = background.sweep_interval {
        let (repo, grace) = (state.repo.clone(), background.sweep_grace);
        tasks.push(tokio::spawn(periodic(
            interval,
            stopped.clone(),
            move || {
                let repo = repo.clone();
                async move { sweep_once(&repo, grace).await }
            },
        )));
    }
    tasks.push(tokio::spawn(keep_indexed(
        state.repo.clone(),
        stopped.clone(),
    )));
    if let Some(consent) = state.repo.consent().cloned() {
        let repo = state.repo.clone();
        tasks.push(tokio::spawn(consent.follow(
            stopped.clone(),
            move |changes| {
                let repo = repo.clone();
                async move { repo.follow_chain(changes).await }
            },
        )));
    }
    if let Some(anchoring) = state.repo.anchoring().cloned() {
        tasks.push(tokio::spawn(anchoring.run(stopped.clone())));
    }
    let repo = state.repo.clone();
    tasks.push(tokio::spawn(periodic(
        RECORD_PURGE_INTERVAL,
        stopped.clone(),
        move || {
            let repo = repo.clone();
            async move {
                if let Err(e) = repo.purge_expired_records().await {
                    tracing::warn!("purging expired records failed: {e}");
                }
            }
        },
    )));
    if let Some(address) = &background.metrics_listen {
        let metrics = TcpListener::bind(address).await?;
        tracing::info!(address = %metrics.local_addr()?, "serving /metrics");
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(metrics, http::telemetry::metrics_router())
                .with_graceful_shutdown(async move {
                    let _ = stopped.changed().await;
                })
                .await;
        }));
    }
    let mut admin_bound = false;
    if let Some(dir) = &background.admin_dir {
        match admin::bind(dir).await {
            Ok(Some(socket)) => {
                admin_bound = true;
                let admin_state = admin::AdminState {
                    auth: state.auth.clone(),
                    repo: state.repo.clone(),
                };
                tasks.push(tokio::spawn(admin::serve(
                    socket,
                    admin_state,
                    stopped.clone(),
                )));
            }
            Ok(None) => tracing::warn!(
                "another server answers on this data directory's admin socket; this one has none"
            ),
            Err(e) => tracing::warn!(
                "no admin socket ({e}); the CLI must run while the server is stopped"
            ),
        }
    }
    let served = axum::serve(
        listener,
        http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    // Only this server's own socket: one left to another server is not ours to remove.
    if let (true, Some(dir)) = (admin_bound, &background.admin_dir) {
        admin::unbind(dir);
    }
    served
}

/// Keeps every resource indexed under the registry in force: reindexes what is stale at start
/// (an upgrade, custom parameters changed while stopped), and again whenever another replica
/// changed the registry. Progress is logged; a failed round is retried at the next poll.
async fn keep_indexed(repo: Arc<Repository>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    // Whether to look for stale resources this round: at start, after the registry changed,
    // and after a round that did not finish.
    let mut look = true;
    loop {
        match repo.refresh_registry().await {
            Ok(changed) => look |= changed,
            Err(e) => tracing::warn!("the search parameter registry could not be refreshed: {e}"),
        }
        if look {
            let stale = repo.stale_count().await.unwrap_or(0);
            if stale > 0 {
                tracing::info!(
                    stale,
                    "reindexing resources indexed under other search parameters"
                );
            }
            let mut logged = 0usize;
            let reindex = repo.reindex_stale(|p| {
                if p.total > 0 && (p.done >= logged + 10_000 || p.done == p.total) {
                    tracing::info!(done = p.done, total = p.total, "reindexing");
                    logged = p.done;
                }
            });
            tokio::select! {
                result = reindex => match result {
                    Ok(_) => look = false,
                    Err(e) => tracing::warn!("reindexing stopped: {e}; it resumes at the next poll"),
                },
                _ = stopped.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::repository::reindex::REGISTRY_POLL) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Runs `work` every `interval` (the first time after one interval) until `stopped`.
async fn periodic<F, Fut>(
    interval: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    work: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is immediate; the work waits one interval.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => work().await,
            _ = stopped.changed() => return,
        }
    }
}

async fn sweep_once(repo: &Repository, grace: Duration) {
    match repo.sweep(grace).await {
        Ok(report) => {
            metrics::count("intellihealth_sweeps_total", &[("outcome", "done")]);
            if report.removed > 0 {
                tracing::info!(
                    removed = report.removed,
                    examined = report.examined,
                    "swept unreferenced blobs"
                );
            }
        }
        Err(e) => {
            metrics::count("intellihealth_sweeps_total", &[("outcome", "failed")]);
            tracing::warn!("sweep failed: {e}");
        }
    }
}
