//! `conformance-tests`: run the conformance suites against a FHIR R4 server, or `bench` it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use conformance_tests::bench::{self, BenchOptions};
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
}

#[derive(Args)]
struct RunArgs {
    /// The FHIR base URL, e.g. http://127.0.0.1:8080/fhir
    #[arg(long, env = "FHIR_BASE_URL")]
    base_url: Option<String>,
    /// A bearer token sent with every request.
    #[arg(long, env = "FHIR_BEARER")]
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
    #[arg(long, env = "FHIR_BEARER")]
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => bench_command(args).await,
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
    let options = BenchOptions {
        base_url: args.base_url,
        bearer: args.bearer,
        data: Some(data),
        concurrency: args.concurrency,
        seconds: args.seconds,
        warmup_seconds: args.warmup,
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
