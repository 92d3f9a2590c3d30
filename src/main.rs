//! The `intellihealth` command line. Parses arguments and hands over to `app`; nothing else.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use intellihealth::app;
use intellihealth::config::{Config, ServeArgs, StorageArgs};

#[derive(Parser)]
#[command(
    name = "intellihealth",
    version,
    about = "A FHIR R4 server patients can audit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server (embedded profile unless services are configured).
    #[command(
        after_help = "Also read from the environment:\n  INTELLIHEALTH_MASTER_KEY  the master key itself (64 hex digits or base64 of 32 bytes); never a flag"
    )]
    Serve(ServeArgs),
    /// Remove (unpin) blobs no index row references, once unreferenced for the grace period.
    Sweep(SweepArgs),
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("intellihealth=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("intellihealth: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Sweep(args) => sweep(args).await,
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
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // The one line on standard output: scripts and tests read the chosen port from it.
    println!("intellihealth listening on http://{address}/fhir");
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

async fn sweep(args: SweepArgs) -> Result<(), String> {
    let config = Config::for_storage(&args.storage)?;
    let repo = app::open_repository(&config)
        .await
        .map_err(|e| e.to_string())?;
    let report = repo
        .sweep(std::time::Duration::from_secs(args.grace_secs))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "examined {} blobs: {} referenced, {} unreferenced and waiting out the grace period, {} removed",
        report.examined, report.referenced, report.waiting, report.removed
    );
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
