//! Wires the backends of the configured profile into one shared state and serves the router.
//!
//! `build` is the only place that chooses implementations of the seams; `serve` is the one
//! lifecycle, used by `main` and by tests alike: it takes a bound listener (tests bind port 0)
//! and a shutdown signal, drains in-flight requests on shutdown, then returns.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Config, MasterKeySource};
use crate::fhir::instant::{format_instant, now_millis};
use crate::http::{self, HttpSettings, HttpState};
use crate::index::IndexStore;
use crate::index::embedded::EmbeddedIndex;
use crate::repository::Repository;
use crate::vault::blob::BlobStore;
use crate::vault::local::LocalBlobStore;
use crate::vault::{MasterKey, Vault};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("index store: {0}")]
    Index(String),
    #[error("blob store: {0}")]
    Blobs(String),
}

/// Opens the stores of the configured profile and builds the state the router serves.
pub async fn build(config: &Config) -> Result<HttpState, StartupError> {
    let master = match &config.master_key {
        MasterKeySource::Environment(value) => MasterKey::parse(value)
            .map_err(|e| StartupError::MasterKey(format!("INTELLIHEALTH_MASTER_KEY: {e}")))?,
        MasterKeySource::File(path) => {
            MasterKey::load_or_create(path).map_err(StartupError::MasterKey)?
        }
    };
    let index: Arc<dyn IndexStore> = Arc::new(
        EmbeddedIndex::open(&config.data_dir).map_err(|e| StartupError::Index(e.to_string()))?,
    );
    let blobs: Arc<dyn BlobStore> = Arc::new(
        LocalBlobStore::open(&config.data_dir).map_err(|e| StartupError::Blobs(e.to_string()))?,
    );
    let vault = Arc::new(Vault::new(master, index.clone()));
    let repo = Arc::new(Repository::new(index, blobs, vault, config.backend_timeout));
    Ok(HttpState {
        repo,
        settings: Arc::new(HttpSettings {
            base_url: config.base_url.clone(),
            max_body_bytes: config.max_body_bytes,
            started_at: format_instant(now_millis()),
        }),
    })
}

/// Serves until `shutdown` resolves, then stops accepting and waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
