//! The `intellihealth` command line. Parses arguments and hands over to `app`; nothing else.

mod audit_cli;
mod consent_cli;
mod import_cli;
mod progress;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use intellihealth::admin::{self, AdminRequest};
use intellihealth::app;
use intellihealth::auth::accounts::{Client, ClientAuth, User, hash_secret};
use intellihealth::config::{Config, ServeArgs, StorageArgs};

use progress::ProgressBar;

#[derive(Parser)]
#[command(
    name = "intellihealth",
    version,
    about = "A FHIR R4 server patients can audit"
)]
struct Cli {
    /// How log lines are written to standard error: `text` for people, `json` (one object per
    /// line) for log collectors.
    #[arg(
        long,
        global = true,
        env = "INTELLIHEALTH_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server (embedded profile unless services are configured).
    #[command(
        after_help = "Also read from the environment:\n  INTELLIHEALTH_MASTER_KEY       the master key itself (64 hex digits or base64 of 32 bytes); never a flag\n  INTELLIHEALTH_ETH_KEY_FILE     a file holding the rpc ledger's account key (hex)\n  INTELLIHEALTH_ETH_KEY          that key itself, instead of the file; never a flag"
    )]
    Serve(Box<ServeArgs>),
    /// Remove (unpin) blobs no index row references, once unreferenced for the grace period.
    Sweep(SweepArgs),
    /// Manage users (patients and practitioners who sign in).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage the OAuth clients (SMART apps and backend services).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Manage the token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Rebuild the search entries made under another set of search parameters (after custom
    /// parameters changed, or an upgrade), with progress; stopped, it resumes where it was.
    Reindex(ReindexArgs),
    /// Load resources from NDJSON files and Bundles (gzipped or not), or folders of them,
    /// into the stores directly, as the server itself; importing the same files again writes
    /// nothing.
    Import(import_cli::ImportArgs),
    /// A patient's consent through a running server's API: bind a wallet, grant, revoke, list
    /// (signed with the patient's key file; no browser needed).
    #[command(subcommand)]
    Consent(consent_cli::ConsentCommand),
    /// The audit trail: check an AuditEvent's anchor on chain.
    #[command(subcommand)]
    Audit(audit_cli::AuditCommand),
}

#[derive(clap::Args)]
struct ReindexArgs {
    /// A directory of custom SearchParameter files, as `serve --search-parameters` takes.
    #[arg(long, env = "INTELLIHEALTH_SEARCH_PARAMETERS")]
    search_parameters: Option<std::path::PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add (or replace) a user linked to a FHIR Patient or Practitioner.
    Add {
        #[arg(long)]
        username: String,
        /// A file holding the password (its first line), so it never appears in `ps`.
        #[arg(long)]
        password_file: std::path::PathBuf,
        /// The user as a FHIR resource: `Patient/123` or `Practitioner/abc`.
        #[arg(long)]
        fhir_user: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Register (or replace) a client.
    #[command(
        after_help = "Also read from the environment:\n  INTELLIHEALTH_CLIENT_SECRET  the client's shared secret, instead of --secret-file (never a flag, so never in `ps`)"
    )]
    Add {
        #[arg(long)]
        id: String,
        /// A file holding the shared secret (client_secret_basic / client_secret_post), its
        /// first line; or set INTELLIHEALTH_CLIENT_SECRET.
        #[arg(long, conflicts_with_all = ["jwks_file", "jwks_url", "public"])]
        secret_file: Option<std::path::PathBuf>,
        /// A JWKS file with the client's public keys (private_key_jwt, RS384/ES384).
        #[arg(long, conflicts_with_all = ["jwks_url", "public"])]
        jwks_file: Option<std::path::PathBuf>,
        /// A URL where the client publishes its JWKS (private_key_jwt).
        #[arg(long, conflicts_with = "public")]
        jwks_url: Option<String>,
        /// A public client: no secret, PKCE only.
        #[arg(long)]
        public: bool,
        /// The scopes it may be granted, space-separated.
        #[arg(long)]
        scope: String,
        /// An allowed redirect URI (exact match); repeat for several.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// A name shown on the approval page.
        #[arg(long)]
        name: Option<String>,
        /// The EHR system of record that holds patients' data on their behalf: it reads and
        /// writes every patient's record without a grant (audited like any other client).
        #[arg(long)]
        custodian: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Retire the signing key in use and make a new one; old tokens stay valid until expiry.
    Rotate {
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(clap::Args)]
struct SweepArgs {
    /// Seconds a blob must have been seen unreferenced before it is removed. 0 removes every
    /// unreferenced blob now: only safe while no server is writing.
    #[arg(long, default_value_t = intellihealth::config::DEFAULT_SWEEP_GRACE_SECS)]
    grace_secs: u64,
    #[command(flatten)]
    storage: StorageArgs,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("intellihealth=info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    app::log_panics_without_their_messages();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("intellihealth: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Sweep(args) => sweep(args).await,
            Command::Users(command) => users(command).await,
            Command::Clients(command) => clients(command).await,
            Command::Keys(command) => keys(command).await,
            Command::Reindex(args) => reindex(args).await,
            Command::Import(args) => import_cli::run(args).await,
            Command::Consent(command) => consent_cli::run(command).await,
            Command::Audit(command) => audit_cli::run(command).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("intellihealth: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = Config::resolve(&args)?;
    // Waiting for a service that is down must not make the process deaf to Ctrl-C / SIGTERM.
    let state = tokio::select! {
        state = app::build(&config) => state.map_err(|e| e.to_string())?,
        () = shutdown_signal() => return Ok(()),
    };
    let demo = match args.demo {
        true => Some(
            intellihealth::portal::demo::seed(&state.repo, &state.auth.accounts, &config.data_dir)
                .await
                .map_err(|e| e.to_string())?,
        ),
        false => None,
    };
    if let Some(demo) = &demo {
        tracing::info!(
            resources_written = demo.written,
            logins = %demo.logins_file.display(),
            "demo record and logins in place"
        );
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // The first line on standard output: scripts and tests read the chosen port from it.
    println!("intellihealth listening on http://{address}/fhir");
    print_portal(&config, address, demo.as_ref());
    tracing::info!(
        %address,
        profile = config.backends.profile(),
        data_dir = %config.data_dir.display(),
        "serving FHIR R4"
    );
    app::serve(
        listener,
        state,
        app::Background::from_config(&config),
        shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())?;
    tracing::info!("stopped: in-flight requests drained, stores flushed");
    Ok(())
}

/// After the first line: where the portal is, and with `--demo` its logins. Written without
/// panicking: a reader that took only the first line (and closed the pipe) must not stop the
/// server. The passwords go to standard output only, never to the log.
fn print_portal(
    config: &Config,
    address: std::net::SocketAddr,
    demo: Option<&intellihealth::portal::demo::Demo>,
) {
    use std::io::Write;
    let mut text = format!(
        "intellihealth portal at {}\n",
        intellihealth::portal::url(config.base_url.as_deref(), address)
    );
    if let Some(demo) = demo {
        text.push_str(&format!(
            "demo logins (kept in {}):\n",
            demo.logins_file.display()
        ));
        for login in &demo.logins {
            text.push_str(&format!(
                "  {}  {}  ({})\n",
                login.username, login.password, login.fhir_user
            ));
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

async fn reindex(args: ReindexArgs) -> Result<(), String> {
    let mut bar = ProgressBar::new("reindexing");
    let config = Config::for_storage(&args.storage)?;
    if let Some(reply) = admin::send(&config.data_dir, &AdminRequest::Reindex, |p| {
        bar.show(p.done, p.total)
    })
    .await
    {
        let reply = reply.map_err(|e| format!("the running server did not answer: {e}"))?;
        bar.finish();
        return if reply.ok {
            println!("{}", reply.message);
            Ok(())
        } else {
            Err(reply.message)
        };
    }
    let repo = app::open_repository(&config)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(dir) = &args.search_parameters {
        repo.set_parameter_files(intellihealth::repository::reindex::read_parameter_files(
            dir,
        )?);
    }
    repo.refresh_registry().await.map_err(|e| e.to_string())?;
    let done = repo
        .reindex_stale(|p| bar.show(p.done, p.total))
        .await
        .map_err(|e| e.to_string())?;
    bar.finish();
    println!("reindexed {} resources", done.done);
    Ok(())
}

async fn sweep(args: SweepArgs) -> Result<(), String> {
    let request = AdminRequest::Sweep {
        grace_secs: args.grace_secs,
    };
    if let Some(message) = ask_running_server(&args.storage, &request).await? {
        println!("{message}");
        return Ok(());
    }
    let config = Config::for_storage(&args.storage)?;
    let repo = app::open_repository(&config)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", admin::sweep(&repo, args.grace_secs).await?);
    Ok(())
}

/// Asks the server running on the storage's data directory to carry out `request`: its
/// answer, or `None` when no server answers there (the command then opens the stores itself).
async fn ask_running_server(
    storage: &StorageArgs,
    request: &AdminRequest,
) -> Result<Option<String>, String> {
    let config = Config::for_storage(storage)?;
    match admin::send(&config.data_dir, request, |_| {}).await {
        None => Ok(None),
        Some(Ok(reply)) if reply.ok => Ok(Some(reply.message)),
        Some(Ok(reply)) => Err(reply.message),
        Some(Err(e)) => Err(format!("the running server did not answer: {e}")),
    }
}

/// The first line of a secret file, without its line ending.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().to_owned();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret)
}

async fn auth_for(
    storage: &StorageArgs,
) -> Result<intellihealth::auth::server::AuthServer, String> {
    let config = Config::for_storage(storage)?;
    let stores = app::open_stores(&config).await.map_err(|e| e.to_string())?;
    app::auth_server(&config, &stores)
        .await
        .map_err(|e| e.to_string())
}

async fn users(command: UsersCommand) -> Result<(), String> {
    let UsersCommand::Add {
        username,
        password_file,
        fhir_user,
        storage,
    } = command;
    let password = read_secret(&password_file)?;
    let user = User::new(&username, hash_secret(&password), &fhir_user);
    user.check().map_err(|e| e.to_string())?;
    let request = AdminRequest::AddUser { user };
    if let Some(message) = ask_running_server(&storage, &request).await? {
        println!("{message}");
        return Ok(());
    }
    let AdminRequest::AddUser { user } = request else {
        unreachable!("built above")
    };
    let auth = auth_for(&storage).await?;
    auth.accounts
        .save_user(&user)
        .await
        .map_err(|e| e.to_string())?;
    println!("user {username} ({fhir_user}) saved");
    Ok(())
}

async fn clients(command: ClientsCommand) -> Result<(), String> {
    let ClientsCommand::Add {
        id,
        secret_file,
        jwks_file,
        jwks_url,
        public,
        scope,
        redirect_uris,
        name,
        custodian,
        storage,
    } = command;
    let from_environment = std::env::var("INTELLIHEALTH_CLIENT_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    let secret = match (secret_file, from_environment) {
        (Some(file), _) => Some(read_secret(&file)?),
        (None, Some(secret)) => Some(secret),
        (None, None) => None,
    };
    let auth = match (secret, jwks_file, jwks_url, public) {
        (Some(secret), _, _, _) => ClientAuth::Secret {
            hash: hash_secret(&secret),
        },
        (None, Some(file), _, _) => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let jwks: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            if !jwks["keys"].is_array() {
                return Err(format!(
                    "{} is not a JWKS (no \"keys\" array)",
                    file.display()
                ));
            }
            ClientAuth::Jwks { jwks }
        }
        (None, None, Some(url), _) => ClientAuth::JwksUrl { url },
        (None, None, None, true) => ClientAuth::None,
        (None, None, None, false) => {
            return Err("say how the client authenticates: --secret-file (or INTELLIHEALTH_CLIENT_SECRET), --jwks-file, --jwks-url or --public".into());
        }
    };
    let client = Client {
        client_id: id.clone(),
        auth,
        scope,
        redirect_uris,
        name,
        custodian,
    };
    let request = AdminRequest::AddClient { client };
    if let Some(message) = ask_running_server(&storage, &request).await? {
        println!("{message}");
        return Ok(());
    }
    let AdminRequest::AddClient { client } = request else {
        unreachable!("built above")
    };
    auth_for(&storage)
        .await?
        .accounts
        .add_client(&client)
        .await
        .map_err(|e| e.to_string())?;
    println!("client {id} saved");
    Ok(())
}

async fn keys(command: KeysCommand) -> Result<(), String> {
    let KeysCommand::Rotate { storage } = command;
    if let Some(message) = ask_running_server(&storage, &AdminRequest::RotateKeys).await? {
        println!("{message}");
        return Ok(());
    }
    let kid = auth_for(&storage)
        .await?
        .tokens
        .keyring()
        .rotate()
        .await
        .map_err(|e| e.to_string())?;
    println!("new signing key {kid}; the previous one verifies until its tokens expire");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminate = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
