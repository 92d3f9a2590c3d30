//! One typed configuration, from flags, environment variables and an optional TOML file, in
//! that order of precedence, with defaults that need no setup at all. It also picks the
//! profile: embedded unless a service is configured.
//!
//! Secrets (the master key) are read from the environment or a file, never from a flag, so they
//! never appear in a process listing; `Debug` output never shows them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// Storage flags shared by every command that opens the server's data.
#[derive(Args, Debug, Clone, Default)]
pub struct StorageArgs {
    /// Where the embedded profile keeps its data (and where a generated master key lives).
    #[arg(long, env = "INTELLIHEALTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A file holding the master key (64 hex digits or base64). Default: DATA_DIR/master.key.
    #[arg(long, env = "INTELLIHEALTH_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// An optional TOML file with any of the settings below (flags and env win over it).
    #[arg(long, env = "INTELLIHEALTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// MongoDB connection string: selects the MongoDB index store (services profile).
    #[arg(long, env = "INTELLIHEALTH_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// Kubo RPC API address (e.g. http://127.0.0.1:5001): selects the IPFS blob store.
    #[arg(long, env = "INTELLIHEALTH_IPFS_API")]
    pub ipfs_api: Option<String>,
    /// Longest wait for one call to a backend, in milliseconds (then 503).
    #[arg(long, env = "INTELLIHEALTH_BACKEND_TIMEOUT_MS")]
    pub backend_timeout_ms: Option<u64>,
    /// Bytes of sealed blobs kept in memory (blobs are immutable, so the cache is never
    /// stale); 0 turns the cache off.
    #[arg(long, env = "INTELLIHEALTH_BLOB_CACHE_BYTES")]
    pub blob_cache_bytes: Option<usize>,
    /// External issuers whose access tokens are accepted (comma-separated issuer URLs),
    /// verified against the JWKS their OpenID discovery document names.
    #[arg(long, env = "INTELLIHEALTH_TRUSTED_ISSUERS", value_delimiter = ',')]
    pub trusted_issuers: Vec<String>,
}

/// Flags of `intellihealth serve`.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port, printed at start).
    #[arg(long, env = "INTELLIHEALTH_LISTEN")]
    pub listen: Option<String>,
    /// The public FHIR base URL, when the server sits behind a proxy. Default: from the Host
    /// header of each request, `http://HOST/fhir`.
    #[arg(long, env = "INTELLIHEALTH_BASE_URL")]
    pub base_url: Option<String>,
    /// Largest request body accepted, in bytes (larger gets 413).
    #[arg(long, env = "INTELLIHEALTH_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most entries in one batch or transaction Bundle (more gets 413).
    #[arg(long, env = "INTELLIHEALTH_MAX_BUNDLE_ENTRIES")]
    pub max_bundle_entries: Option<usize>,
    /// Most resources one conditional delete removes (more matches get 412, deleting none).
    #[arg(long, env = "INTELLIHEALTH_CONDITIONAL_DELETE_LIMIT")]
    pub conditional_delete_limit: Option<usize>,
    /// Seconds a finished Bulk Data export's files are kept for their client (default 3600).
    #[arg(long, env = "INTELLIHEALTH_EXPORT_RETENTION_SECS")]
    pub export_retention_secs: Option<u64>,
    /// Seconds between background sweeps of unreferenced blobs (0 turns the sweeper off).
    #[arg(long, env = "INTELLIHEALTH_SWEEP_INTERVAL_SECS")]
    pub sweep_interval_secs: Option<u64>,
    /// How long a blob must stay unreferenced before a sweep removes it, in seconds.
    #[arg(long, env = "INTELLIHEALTH_SWEEP_GRACE_SECS")]
    pub sweep_grace_secs: Option<u64>,
    /// An address for a separate listener serving `/metrics` without a token (keep it on a
    /// private interface). Without it, `/metrics` on the FHIR listener needs the admin token.
    #[arg(long, env = "INTELLIHEALTH_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// How a search treats a parameter it does not know when the client does not say
    /// (`Prefer: handling=…`): `lenient` ignores and reports it (FHIR R4's recommendation),
    /// `strict` refuses the search with 400.
    #[arg(long, env = "INTELLIHEALTH_SEARCH_HANDLING", value_parser = ["lenient", "strict"])]
    pub search_handling: Option<String>,
    /// `on` (the default) records every interaction as an AuditEvent before answering it;
    /// `off` keeps no audit trail (for comparison benchmarks only).
    #[arg(long, env = "INTELLIHEALTH_AUDIT", value_parser = ["on", "off"])]
    pub audit: Option<String>,
    /// Milliseconds between two anchors of the audit trail's Merkle root on chain.
    #[arg(long, env = "INTELLIHEALTH_ANCHOR_INTERVAL_MS")]
    pub anchor_interval_ms: Option<u64>,
    /// This server's name among replicas sharing one store: its audit trail is numbered and
    /// anchored under it, so it must stay the same across restarts (default: the host name).
    #[arg(long, env = "INTELLIHEALTH_REPLICA")]
    pub replica: Option<String>,
    /// A directory of custom SearchParameter files (.json: a SearchParameter or a Bundle of
    /// them), searchable beside the official ones.
    #[arg(long, env = "INTELLIHEALTH_SEARCH_PARAMETERS")]
    pub search_parameters: Option<PathBuf>,
    /// An Ethereum node's JSON-RPC URL: selects the rpc ledger (otherwise the embedded one).
    /// Its account's key comes from INTELLIHEALTH_ETH_KEY_FILE or INTELLIHEALTH_ETH_KEY, never
    /// a flag.
    #[arg(long, env = "INTELLIHEALTH_ETH_RPC")]
    pub eth_rpc: Option<String>,
    /// Blocks on top of a transaction's before the rpc ledger counts it done (1: mined).
    #[arg(long, env = "INTELLIHEALTH_ETH_CONFIRMATIONS")]
    pub eth_confirmations: Option<u64>,
    /// The embedded ledger's chain id (the rpc ledger uses its node's).
    #[arg(long, env = "INTELLIHEALTH_CHAIN_ID")]
    pub chain_id: Option<u64>,
    /// Milliseconds between the embedded ledger's empty blocks (transactions make blocks at
    /// once).
    #[arg(long, env = "INTELLIHEALTH_BLOCK_INTERVAL_MS")]
    pub block_interval_ms: Option<u64>,
    /// The address of a ConsentRegistry already deployed (otherwise one is deployed on first
    /// start and its address kept in the index store).
    #[arg(long, env = "INTELLIHEALTH_CONSENT_REGISTRY")]
    pub consent_registry: Option<String>,
    /// `on` (the default) enforces patients' grants on every read and write of their data;
    /// `off` serves by scopes alone (for comparison only: patients' decisions are ignored).
    #[arg(long, env = "INTELLIHEALTH_CONSENT", value_parser = ["on", "off"])]
    pub consent: Option<String>,
    /// Seconds without news from the chain after which patient data that needs a grant is
    /// refused with 503 (fail closed).
    #[arg(long, env = "INTELLIHEALTH_CONSENT_STALE_AFTER_SECS")]
    pub consent_stale_after_secs: Option<u64>,
    /// Minutes a break-glass access lasts.
    #[arg(long, env = "INTELLIHEALTH_BREAK_GLASS_MINUTES")]
    pub break_glass_minutes: Option<u64>,
    /// Seed a demo patient with a realistic record, her doctor and their logins (once: a
    /// later start with --demo adds nothing), and print the logins and the portal's address
    /// (kept in DATA_DIR/demo-logins.txt).
    #[arg(long)]
    pub demo: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// The optional TOML file: the same settings, named as the flags are.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<String>,
    base_url: Option<String>,
    max_body_bytes: Option<usize>,
    max_bundle_entries: Option<usize>,
    conditional_delete_limit: Option<usize>,
    export_retention_secs: Option<u64>,
    backend_timeout_ms: Option<u64>,
    blob_cache_bytes: Option<usize>,
    data_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    mongodb_uri: Option<String>,
    ipfs_api: Option<String>,
    trusted_issuers: Option<Vec<String>>,
    sweep_interval_secs: Option<u64>,
    sweep_grace_secs: Option<u64>,
    metrics_listen: Option<String>,
    search_handling: Option<String>,
    audit: Option<String>,
    anchor_interval_ms: Option<u64>,
    replica: Option<String>,
    search_parameters: Option<PathBuf>,
    eth_rpc: Option<String>,
    eth_key_file: Option<PathBuf>,
    eth_confirmations: Option<u64>,
    chain_id: Option<u64>,
    block_interval_ms: Option<u64>,
    consent_registry: Option<String>,
    consent: Option<String>,
    consent_stale_after_secs: Option<u64>,
    break_glass_minutes: Option<u64>,
}

/// Where the master key comes from.
#[derive(Clone)]
pub enum MasterKeySource {
    /// `INTELLIHEALTH_MASTER_KEY` (the value itself; never printed).
    Environment(String),
    File(PathBuf),
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterKeySource::Environment(_) => f.write_str("Environment(..)"),
            MasterKeySource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

/// Which implementation each seam uses: the embedded one unless a service is configured.
#[derive(Clone)]
pub struct Backends {
    /// `Some` selects the MongoDB index store.
    pub mongodb_uri: Option<String>,
    /// `Some` selects the IPFS blob store.
    pub ipfs_api: Option<String>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field(
                "mongodb_uri",
                &self.mongodb_uri.as_deref().map(redact_userinfo),
            )
            .field("ipfs_api", &self.ipfs_api)
            .finish()
    }
}

impl Backends {
    /// `embedded`, `services`, or which seams use which, for the start-up log line.
    pub fn profile(&self) -> &'static str {
        match (&self.mongodb_uri, &self.ipfs_api) {
            (None, None) => "embedded",
            (Some(_), Some(_)) => "services",
            (Some(_), None) => "mixed (MongoDB index, local blobs)",
            (None, Some(_)) => "mixed (embedded index, IPFS blobs)",
        }
    }
}

/// A connection string without its `user:password@` part, safe for logs.
pub fn redact_userinfo(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &uri[..scheme], &uri[at + 1..])
        }
        _ => uri.to_owned(),
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: String,
    pub base_url: Option<String>,
    pub max_body_bytes: usize,
    pub max_bundle_entries: usize,
    pub conditional_delete_limit: usize,
    /// How long a finished Bulk Data export's files are kept.
    pub export_retention: Duration,
    pub backend_timeout: Duration,
    /// Capacity of the in-memory cache of sealed blobs, in bytes (0: no cache).
    pub blob_cache_bytes: usize,
    pub data_dir: PathBuf,
    pub master_key: MasterKeySource,
    pub backends: Backends,
    /// `None` turns the background sweeper off.
    pub sweep_interval: Option<Duration>,
    pub sweep_grace: Duration,
    pub trusted_issuers: Vec<String>,
    /// A separate, unauthenticated `/metrics` listener; `None`: only the admin-token one.
    pub metrics_listen: Option<String>,
    /// The default handling of unknown search parameters.
    pub search_handling: crate::search::query::Strictness,
    /// Whether every interaction is recorded as an AuditEvent.
    pub audit: bool,
    /// How often the audit trail's new events are anchored on chain.
    pub anchor_interval: Duration,
    /// This replica's name (`None`: from the host name).
    pub replica: Option<String>,
    /// A directory of custom SearchParameter files.
    pub search_parameters: Option<PathBuf>,
    /// The bearer secret of dynamic client registration (`INTELLIHEALTH_ADMIN_TOKEN`, from the
    /// environment only); `None` turns registration off.
    pub admin_token: Option<AdminToken>,
    pub ledger: LedgerConfig,
}

/// Which chain consent lives on, and how it is enforced.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// `Some` selects the rpc ledger.
    pub eth_rpc: Option<String>,
    /// The rpc ledger's account key.
    pub eth_key: Option<EthKeySource>,
    pub confirmations: u64,
    pub chain_id: u64,
    pub block_interval: Duration,
    /// A registry deployed before (otherwise deployed on first start).
    pub consent_registry: Option<String>,
    pub enforce: bool,
    pub stale_after: Duration,
    pub break_glass_for: Duration,
}

/// Where the rpc ledger's account key comes from.
#[derive(Clone)]
pub enum EthKeySource {
    /// `INTELLIHEALTH_ETH_KEY` (the value itself; never printed).
    Environment(String),
    File(PathBuf),
}

impl std::fmt::Debug for EthKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EthKeySource::Environment(_) => f.write_str("Environment(..)"),
            EthKeySource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

impl EthKeySource {
    /// The key's hex text.
    pub fn read(&self) -> Result<zeroize::Zeroizing<String>, String> {
        match self {
            EthKeySource::Environment(value) => {
                Ok(zeroize::Zeroizing::new(value.trim().to_owned()))
            }
            EthKeySource::File(path) => std::fs::read_to_string(path)
                .map(|text| zeroize::Zeroizing::new(text.trim().to_owned()))
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }
}

/// The audit trail is anchored every 5 s by default.
pub const DEFAULT_ANCHOR_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_CHAIN_ID: u64 = 31337;
pub const DEFAULT_BLOCK_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_CONSENT_STALE_AFTER_SECS: u64 = 30;
pub const DEFAULT_BREAK_GLASS_MINUTES: u64 = 60;

/// A secret that `Debug` never prints.
#[derive(Clone)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Most entries in one batch or transaction Bundle unless configured.
pub const DEFAULT_MAX_BUNDLE_ENTRIES: usize = 10_000;
pub const DEFAULT_BACKEND_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_BLOB_CACHE_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_SWEEP_INTERVAL_SECS: u64 = 3_600;
/// Far longer than any write can take between its blob put and its index commit.
pub const DEFAULT_SWEEP_GRACE_SECS: u64 = 900;

impl Config {
    /// Resolves flags/env (`args`), the optional file and the defaults into the config of a
    /// server that will listen and answer requests.
    pub fn resolve(args: &ServeArgs) -> Result<Config, String> {
        let config = Config::resolve_settings(args, DEFAULT_BACKEND_TIMEOUT_MS)?;
        if !config.trusted_issuers.is_empty() && config.base_url.is_none() {
            return Err(
                "with trusted issuers, set --base-url (INTELLIHEALTH_BASE_URL): the audience \
                        their tokens must carry cannot be taken from each request's Host header"
                    .into(),
            );
        }
        Ok(config)
    }

    /// The config of commands that only open storage (no listener): the same storage flags
    /// and environment as `serve`, without what only a listening server must have (a fixed
    /// base URL), so `users add` works beside a `serve` that trusts external issuers.
    pub fn for_storage(storage: &StorageArgs) -> Result<Config, String> {
        Config::for_storage_bounded(storage, DEFAULT_BACKEND_TIMEOUT_MS)
    }

    /// `for_storage` with another default for the backend bound (flags, env and the file
    /// still win): a bulk command keeps a store busy far longer than one request would.
    pub fn for_storage_bounded(
        storage: &StorageArgs,
        default_timeout_ms: u64,
    ) -> Result<Config, String> {
        Config::resolve_settings(
            &ServeArgs {
                storage: storage.clone(),
                ..ServeArgs::default()
            },
            default_timeout_ms,
        )
    }

    fn resolve_settings(args: &ServeArgs, default_timeout_ms: u64) -> Result<Config, String> {
        let file = match &args.storage.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .storage
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let master_key = match std::env::var("INTELLIHEALTH_MASTER_KEY") {
            Ok(value) if !value.is_empty() => MasterKeySource::Environment(value),
            _ => MasterKeySource::File(
                args.storage
                    .master_key_file
                    .clone()
                    .or(file.master_key_file)
                    .unwrap_or_else(|| data_dir.join("master.key")),
            ),
        };
        let base_url = args
            .base_url
            .clone()
            .or(file.base_url)
            .map(|u| u.trim_end_matches('/').to_owned());
        Ok(Config {
            listen: args
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            base_url,
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            max_bundle_entries: args
                .max_bundle_entries
                .or(file.max_bundle_entries)
                .unwrap_or(DEFAULT_MAX_BUNDLE_ENTRIES),
            conditional_delete_limit: args
                .conditional_delete_limit
                .or(file.conditional_delete_limit)
                .unwrap_or(crate::repository::conditional::DEFAULT_CONDITIONAL_DELETE_LIMIT),
            export_retention: args
                .export_retention_secs
                .or(file.export_retention_secs)
                .map(Duration::from_secs)
                .unwrap_or(crate::bulk::DEFAULT_RETENTION),
            backend_timeout: Duration::from_millis(
                args.storage
                    .backend_timeout_ms
                    .or(file.backend_timeout_ms)
                    .unwrap_or(default_timeout_ms),
            ),
            blob_cache_bytes: args
                .storage
                .blob_cache_bytes
                .or(file.blob_cache_bytes)
                .unwrap_or(DEFAULT_BLOB_CACHE_BYTES),
            data_dir,
            master_key,
            backends: Backends {
                mongodb_uri: args
                    .storage
                    .mongodb_uri
                    .clone()
                    .or(file.mongodb_uri)
                    .filter(|u| !u.is_empty()),
                ipfs_api: args
                    .storage
                    .ipfs_api
                    .clone()
                    .or(file.ipfs_api)
                    .filter(|u| !u.is_empty())
                    .map(|u| u.trim_end_matches('/').to_owned()),
            },
            sweep_interval: Some(
                args.sweep_interval_secs
                    .or(file.sweep_interval_secs)
                    .unwrap_or(DEFAULT_SWEEP_INTERVAL_SECS),
            )
            .filter(|&s| s > 0)
            .map(Duration::from_secs),
            sweep_grace: Duration::from_secs(
                args.sweep_grace_secs
                    .or(file.sweep_grace_secs)
                    .unwrap_or(DEFAULT_SWEEP_GRACE_SECS),
            ),
            trusted_issuers: if args.storage.trusted_issuers.is_empty() {
                file.trusted_issuers.unwrap_or_default()
            } else {
                args.storage.trusted_issuers.clone()
            }
            .into_iter()
            .map(|i| i.trim().trim_end_matches('/').to_owned())
            .filter(|i| !i.is_empty())
            .collect(),
            metrics_listen: args
                .metrics_listen
                .clone()
                .or(file.metrics_listen)
                .filter(|a| !a.is_empty()),
            search_handling: match args
                .search_handling
                .clone()
                .or(file.search_handling)
                .as_deref()
            {
                None | Some("lenient") => crate::search::query::Strictness::Lenient,
                Some("strict") => crate::search::query::Strictness::Strict,
                Some(other) => {
                    return Err(format!(
                        "search-handling must be lenient or strict, not {other}"
                    ));
                }
            },
            audit: match args.audit.clone().or(file.audit).as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => return Err(format!("audit must be on or off, not {other}")),
            },
            replica: match args.replica.clone().or(file.replica) {
                Some(name) if name.is_empty() || name.contains('|') => {
                    return Err(format!(
                        "replica must be a non-empty name without '|', not {name:?}"
                    ));
                }
                other => other,
            },
            anchor_interval: Duration::from_millis(
                args.anchor_interval_ms
                    .or(file.anchor_interval_ms)
                    .unwrap_or(DEFAULT_ANCHOR_INTERVAL_MS)
                    .max(100),
            ),
            search_parameters: args.search_parameters.clone().or(file.search_parameters),
            admin_token: std::env::var("INTELLIHEALTH_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(AdminToken),
            ledger: LedgerConfig {
                eth_rpc: args
                    .eth_rpc
                    .clone()
                    .or(file.eth_rpc)
                    .filter(|u| !u.is_empty()),
                eth_key: match (
                    std::env::var("INTELLIHEALTH_ETH_KEY_FILE")
                        .ok()
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .or(file.eth_key_file),
                    std::env::var("INTELLIHEALTH_ETH_KEY")
                        .ok()
                        .filter(|k| !k.is_empty()),
                ) {
                    (Some(path), _) => Some(EthKeySource::File(path)),
                    (None, Some(value)) => Some(EthKeySource::Environment(value)),
                    (None, None) => None,
                },
                confirmations: args
                    .eth_confirmations
                    .or(file.eth_confirmations)
                    .unwrap_or(1)
                    .max(1),
                chain_id: args.chain_id.or(file.chain_id).unwrap_or(DEFAULT_CHAIN_ID),
                block_interval: Duration::from_millis(
                    args.block_interval_ms
                        .or(file.block_interval_ms)
                        .unwrap_or(DEFAULT_BLOCK_INTERVAL_MS)
                        .max(10),
                ),
                consent_registry: args
                    .consent_registry
                    .clone()
                    .or(file.consent_registry)
                    .filter(|a| !a.is_empty()),
                enforce: match args.consent.clone().or(file.consent).as_deref() {
                    None | Some("on") => true,
                    Some("off") => false,
                    Some(other) => return Err(format!("consent must be on or off, not {other}")),
                },
                stale_after: Duration::from_secs(
                    args.consent_stale_after_secs
                        .or(file.consent_stale_after_secs)
                        .unwrap_or(DEFAULT_CONSENT_STALE_AFTER_SECS)
                        .max(1),
                ),
                break_glass_for: Duration::from_secs(
                    60 * args
                        .break_glass_minutes
                        .or(file.break_glass_minutes)
                        .unwrap_or(DEFAULT_BREAK_GLASS_MINUTES)
                        .max(1),
                ),
            },
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9\"\nmax-body-bytes = 5\ndata-dir = \"/x\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            listen: Some("127.0.0.1:1".into()),
            storage: StorageArgs {
                config: Some(file),
                ..StorageArgs::default()
            },
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).unwrap();
        assert_eq!(config.listen, "127.0.0.1:1");
        assert_eq!(config.max_body_bytes, 5);
        assert_eq!(config.data_dir, PathBuf::from("/x"));
        assert_eq!(
            config.backend_timeout,
            Duration::from_millis(DEFAULT_BACKEND_TIMEOUT_MS)
        );
    }

    #[test]
    fn a_bulk_command_has_its_own_default_bound_but_a_set_one_wins() {
        let mut storage = StorageArgs::default();
        let bulk = Config::for_storage_bounded(&storage, 120_000).unwrap();
        assert_eq!(bulk.backend_timeout, Duration::from_secs(120));
        storage.backend_timeout_ms = Some(700);
        let bulk = Config::for_storage_bounded(&storage, 120_000).unwrap();
        assert_eq!(bulk.backend_timeout, Duration::from_millis(700));
    }

    #[test]
    fn never_shows_database_credentials() {
        assert_eq!(
            redact_userinfo("mongodb://user:secret@db:27017/x"),
            "mongodb://…@db:27017/x"
        );
        let backends = Backends {
            mongodb_uri: Some("mongodb://user:secret@db/x".into()),
            ipfs_api: None,
        };
        assert!(!format!("{backends:?}").contains("secret"));
        assert_eq!(backends.profile(), "mixed (MongoDB index, local blobs)");
    }

    #[test]
    fn trusting_an_issuer_needs_a_fixed_base_url() {
        let mut args = ServeArgs::default();
        args.storage.trusted_issuers = vec!["https://idp.example".into()];
        assert!(Config::resolve(&args).unwrap_err().contains("--base-url"));
        // Commands that only open storage share serve's environment but never listen.
        assert!(Config::for_storage(&args.storage).is_ok());
        args.base_url = Some("https://fhir.example/fhir/".into());
        let config = Config::resolve(&args).unwrap();
        assert_eq!(
            config.base_url.as_deref(),
            Some("https://fhir.example/fhir")
        );
        assert_eq!(config.trusted_issuers, ["https://idp.example"]);
    }

    #[test]
    fn refuses_unknown_settings_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lisen = \"typo\"\n").unwrap();
        assert!(read_file(&file).unwrap_err().contains("unknown field"));
    }
}
