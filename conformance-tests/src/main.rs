//! `conformance-tests`: run the conformance suites against a FHIR R4 server, or `bench` it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use conformance_tests::bench::{self, BenchOptions};
use conformance_tests::soak;
use conformance_tests::{Options, default_examples_dir, run};

#[derive(Parser)]
#[command(name = "conformance-tests", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Measure create and read throughput and latency.
    Bench(BenchArgs),
    /// Hold a mixed load for minutes, reporting latency and the server's memory each minute.
    Soak(SoakArgs),
    /// Load a data set with its ids, then measure a list of searches.
    BenchSearch(SearchBenchArgs),
    /// Measure grant- and revocation-to-enforced latency and reads by a granted client.
    BenchConsent(ConsentBenchArgs),
    /// Measure transaction Bundles per second, then one whole Bulk Data export.
    BenchBulk(BulkBenchArgs),
}

#[derive(Args)]
struct BulkBenchArgs {
    #[arg(long, env = "FHIR_BASE_URL")]
    base_url: String,
    /// A custodian's token with system/*.cruds, from `FHIR_BEARER` (never a flag).
    #[arg(skip = std::env::var("FHIR_BEARER").ok())]
    bearer: Option<String>,
    #[arg(long, default_value_t = 50)]
    bundles: usize,
    #[arg(long, default_value_t = 100)]
    entries: usize,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

#[derive(Args)]
struct ConsentBenchArgs {
    #[arg(long, env = "FHIR_BASE_URL")]
    base_url: String,
    /// A custodian's token, from `FHIR_BEARER` (never a flag).
    #[arg(skip = std::env::var("FHIR_BEARER").ok())]
    bearer: Option<String>,
    /// The reader's token, from `FHIR_READER_BEARER` (never a flag).
    #[arg(skip = std::env::var("FHIR_READER_BEARER").ok())]
    reader_bearer: Option<String>,
    /// The reader's client id (the grantee).
    #[arg(long)]
    reader_client: String,
    /// A Python interpreter with eth-account (scripts/python-clients).
    #[arg(long, env = "INTELLIHEALTH_PYTHON")]
    python: String,
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Reads whose AuditEvent is followed until anchored (the server's audit trail must be on).
    #[arg(long, default_value_t = 0)]
    anchor_probes: usize,
}

#[derive(Args)]
struct SearchBenchArgs {
    #[arg(long, env = "FHIR_BASE_URL")]
    base_url: String,
    /// From `FHIR_BEARER` (never a flag: secrets stay off command lines).
    #[arg(skip = std::env::var("FHIR_BEARER").ok())]
    bearer: Option<String>,
    /// A directory of .ndjson files of resources with ids (e.g. carebundle's).
    #[arg(long)]
    data: PathBuf,
    /// Measured seconds per search.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent writers while loading.
    #[arg(long, default_value_t = 16)]
    load_concurrency: usize,
    /// Only load, and report the rate.
    #[arg(long)]
    load_only: bool,
}

#[derive(Args)]
struct SoakArgs {
    #[arg(long, env = "FHIR_BASE_URL")]
    base_url: String,
    /// From `FHIR_BEARER` (never a flag: secrets stay off command lines).
    #[arg(skip = std::env::var("FHIR_BEARER").ok())]
    bearer: Option<String>,
    /// Resources to create and update: a directory of .ndjson/.json files.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    minutes: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The server's PID, whose resident memory is sampled.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The confidential client token requests authenticate as.
    #[arg(long, default_value = "bench")]
    token_client: String,
    /// A file holding that client's secret (its first line).
    #[arg(long)]
    token_secret_file: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// The FHIR base URL, e.g. http://127.0.0.1:8080/fhir
    #[arg(long, env = "FHIR_BASE_URL")]
    base_url: Option<String>,
    /// A bearer token sent with every request: from `FHIR_BEARER` only, never a flag, so it
    /// stays off command lines.
    #[arg(skip = std::env::var("FHIR_BEARER").ok())]
    bearer: Option<String>,
    /// The unpacked hl7.fhir.r4.examples@4.0.1 package (default: the scripts' cache).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Skip the official examples.
    #[arg(long)]
    no_examples: bool,
    /// Load every resource of the package, conformance resources included.
    #[arg(long)]
    all_examples: bool,
    /// The server's request body limit in bytes (for the 413 case).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    max_body_bytes: usize,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, env = "FHIR_BASE_URL")]
    base_url: String,
    /// From `FHIR_BEARER` (never a flag: secrets stay off command lines).
    #[arg(skip = std::env::var("FHIR_BEARER").ok())]
    bearer: Option<String>,
    /// Resources to create: a directory of .ndjson/.json files (default: the official examples).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Concurrencies to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    concurrency: Vec<usize>,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up seconds before each phase.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Also run each read phase beside this many concurrent token requests (0: not).
    #[arg(long, default_value_t = 0)]
    token_burst: usize,
    /// The confidential client the token burst authenticates as.
    #[arg(long, default_value = "bench")]
    token_client: String,
    /// A file holding that client's secret (its first line).
    #[arg(long)]
    token_secret_file: Option<PathBuf>,
}

async fn consent_bench_command(args: ConsentBenchArgs) -> ExitCode {
    let (Some(bearer), Some(reader_bearer)) = (args.bearer, args.reader_bearer) else {
        eprintln!("bench-consent: set FHIR_BEARER (a custodian) and FHIR_READER_BEARER");
        return ExitCode::FAILURE;
    };
    let options = conformance_tests::consent_bench::ConsentBenchOptions {
        base_url: args.base_url,
        bearer,
        reader_bearer,
        reader_client_id: args.reader_client,
        python: args.python,
        rounds: args.rounds,
        concurrency: args.concurrency,
        seconds: args.seconds,
        anchor_probes: args.anchor_probes,
    };
    match conformance_tests::consent_bench::run(&options).await {
        Ok(report) => {
            println!("{}", conformance_tests::consent_bench::table(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-consent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bulk_bench_command(args: BulkBenchArgs) -> ExitCode {
    use conformance_tests::bulk_bench;
    let options = bulk_bench::BulkBenchOptions {
        base_url: args.base_url,
        bearer: args.bearer,
        bundles: args.bundles,
        entries: args.entries,
        concurrency: args.concurrency,
    };
    match bulk_bench::run(&options).await {
        Ok(report) => {
            print!("{}", bulk_bench::table(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("conformance-tests bench-bulk: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => bench_command(args).await,
        Some(Command::Soak(args)) => soak_command(args).await,
        Some(Command::BenchSearch(args)) => search_bench_command(args).await,
        Some(Command::BenchConsent(args)) => consent_bench_command(args).await,
        Some(Command::BenchBulk(args)) => bulk_bench_command(args).await,
        None => run_command(cli.run).await,
    }
}

async fn run_command(args: RunArgs) -> ExitCode {
    let Some(base_url) = args.base_url else {
        eprintln!("conformance-tests: --base-url is required");
        return ExitCode::from(2);
    };
    let options = Options {
        base_url,
        bearer: args.bearer,
        examples_dir: (!args.no_examples)
            .then(|| args.examples.unwrap_or_else(default_examples_dir)),
        all_examples: args.all_examples,
        max_body_bytes: args.max_body_bytes,
        smart: None,
    };
    let report = run(&options).await;
    print!("{}", report.table());
    if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn bench_command(args: BenchArgs) -> ExitCode {
    let data = args.data.clone().unwrap_or_else(default_examples_dir);
    let resources = match bench::load_resources(&data) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance-tests bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let token_burst = match (args.token_burst, &args.token_secret_file) {
        (0, _) => None,
        (_, None) => {
            eprintln!("conformance-tests bench: --token-burst needs --token-secret-file");
            return ExitCode::from(2);
        }
        (concurrency, Some(file)) => {
            let secret = match std::fs::read_to_string(file) {
                Ok(text) => text.lines().next().unwrap_or_default().to_owned(),
                Err(e) => {
                    eprintln!("conformance-tests bench: {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            Some(bench::TokenBurst {
                token_url: format!("{}/auth/token", args.base_url.trim_end_matches("/fhir")),
                client_id: args.token_client.clone(),
                secret,
                scope: "system/*.rs".into(),
                concurrency,
            })
        }
    };
    let options = BenchOptions {
        base_url: args.base_url,
        bearer: args.bearer,
        data: Some(data),
        concurrency: args.concurrency,
        seconds: args.seconds,
        warmup_seconds: args.warmup,
        token_burst,
    };
    match bench::run(&options, resources).await {
        Ok(phases) => {
            print!("{}", bench::table(&phases));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("conformance-tests bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn soak_command(args: SoakArgs) -> ExitCode {
    let data = args.data.clone().unwrap_or_else(default_examples_dir);
    let resources = match bench::load_resources(&data) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance-tests soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secret = match std::fs::read_to_string(&args.token_secret_file) {
        Ok(text) => text.lines().next().unwrap_or_default().to_owned(),
        Err(e) => {
            eprintln!(
                "conformance-tests soak: {}: {e}",
                args.token_secret_file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let options = soak::SoakOptions {
        tokens: bench::TokenBurst {
            token_url: format!("{}/auth/token", args.base_url.trim_end_matches("/fhir")),
            client_id: args.token_client,
            secret,
            scope: "system/*.rs".into(),
            concurrency: 0,
        },
        base_url: args.base_url,
        bearer: args.bearer,
        minutes: args.minutes,
        concurrency: args.concurrency,
        server_pid: args.server_pid,
    };
    match soak::run(&options, resources).await {
        Ok((report, passed)) => {
            print!("{report}");
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("conformance-tests soak: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn search_bench_command(args: SearchBenchArgs) -> ExitCode {
    use conformance_tests::search_bench;
    let resources = match search_bench::read_ndjson(&args.data) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance-tests bench-search: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = search_bench::SearchBenchOptions {
        base_url: args.base_url,
        bearer: args.bearer,
        seconds: args.seconds,
        load_concurrency: args.load_concurrency,
        load_only: args.load_only,
    };
    match search_bench::run(&options, resources).await {
        Ok((rate, phases)) => {
            print!("{}", search_bench::table(rate, &phases));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("conformance-tests bench-search: {e}");
            ExitCode::FAILURE
        }
    }
}
