//! The load driver: create and read throughput and latency (p50, p99) at given concurrencies
//! against a running server, on realistic resources (generated patient records, or the
//! official examples). Each phase runs for a fixed time after a warm-up; reads pick uniformly
//! among the resources the create phase made. Prints a Markdown table.
//!
//! With a token burst, each read phase runs a second time while other tasks request access
//! tokens (`client_credentials`, each an argon2id check of the client's secret) as fast as they
//! are answered: the two read rows side by side show what a burst of logins costs every other
//! request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::Client;

/// How many distinct resources the create phases cycle through.
const SAMPLE: usize = 2_000;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub base_url: String,
    pub bearer: Option<String>,
    /// NDJSON or JSON files of resources (Bundles are unpacked); the examples if `None`.
    pub data: Option<PathBuf>,
    pub concurrency: Vec<usize>,
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// Token requests to run beside a second pass of each read phase.
    pub token_burst: Option<TokenBurst>,
}

/// Concurrent `client_credentials` requests of one confidential client.
#[derive(Clone, Debug)]
pub struct TokenBurst {
    pub token_url: String,
    pub client_id: String,
    pub secret: String,
    pub scope: String,
    pub concurrency: usize,
}

/// One measured phase.
#[derive(Clone, Debug)]
pub struct Phase {
    pub interaction: &'static str,
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Loads resources to create: every resource in the files under `dir`, ids removed.
pub fn load_resources(dir: &Path) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json" || x == "ndjson")
                && !p.ends_with("package.json")
        })
        .collect();
    files.sort();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let values: Vec<Value> = if file.extension().is_some_and(|x| x == "ndjson") {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        } else {
            serde_json::from_str(&text).into_iter().collect()
        };
        for value in values {
            collect_resources(value, &mut out);
        }
    }
    Ok(out)
}

fn collect_resources(value: Value, out: &mut Vec<Value>) {
    if value["resourceType"] == "Bundle" && value["type"] != "document" {
        for entry in value["entry"].as_array().cloned().unwrap_or_default() {
            collect_resources(entry["resource"].clone(), out);
        }
        return;
    }
    let Some(mut object) = value.as_object().cloned() else {
        return;
    };
    if !object.contains_key("resourceType") {
        return;
    }
    object.remove("id");
    object.remove("meta");
    out.push(Value::Object(object));
}

pub async fn run(options: &BenchOptions, resources: Vec<Value>) -> Result<Vec<Phase>, String> {
    let client = Client::new(&options.base_url, options.bearer.clone());
    // A sample spread over every file (so every resource type), and of it only what the
    // server accepts, so the figures measure work, not refusals.
    let stride = (resources.len() / SAMPLE).max(1);
    let mut accepted = Vec::new();
    let mut refused = 0usize;
    for resource in resources.into_iter().step_by(stride).take(SAMPLE) {
        let ty = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let reply = client
            .post_json(&ty, &resource)
            .header("prefer", "return=minimal")
            .send()
            .await;
        if reply.status.is_success() {
            accepted.push((
                ty,
                Arc::new(serde_json::to_vec(&resource).unwrap_or_default()),
            ));
        } else {
            refused += 1;
        }
    }
    if refused > 0 {
        eprintln!("bench: the server refused {refused} of the sampled resources; left out");
    }
    if accepted.is_empty() {
        return Err("the server accepted none of the resources".into());
    }
    let accepted = Arc::new(accepted);
    let created_paths = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut phases = Vec::new();
    for &concurrency in &options.concurrency {
        let creates = accepted.clone();
        let paths = created_paths.clone();
        let phase = measure("create", concurrency, options, &client, move |client, n| {
            let (ty, body) = creates[n % creates.len()].clone();
            let paths = paths.clone();
            async move {
                let reply = client
                    .request(reqwest::Method::POST, &ty)
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(body.to_vec())
                    .send()
                    .await;
                if let Some(location) = reply.header("location") {
                    let path = location.split("/_history").next().unwrap_or_default();
                    let relative = path.rsplitn(3, '/').take(2).collect::<Vec<_>>();
                    if let [id, ty] = relative.as_slice()
                        && let Ok(mut paths) = paths.lock()
                    {
                        paths.push(format!("{ty}/{id}"));
                    }
                }
                reply.status.is_success()
            }
        })
        .await;
        phases.push(phase);
    }
    let paths = Arc::new(created_paths.lock().map(|p| p.clone()).unwrap_or_default());
    if paths.is_empty() {
        return Err("the create phase produced no readable resources".into());
    }
    for &concurrency in &options.concurrency {
        phases.push(read_phase("read", concurrency, options, &client, &paths).await);
    }
    if let Some(burst) = &options.token_burst {
        for &concurrency in &options.concurrency {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let tokens = tokio::spawn(token_burst(burst.clone(), stop.clone(), options.clone()));
            let name = "read, beside a token burst";
            phases.push(read_phase(name, concurrency, options, &client, &paths).await);
            stop.store(true, Ordering::Relaxed);
            if let Ok(phase) = tokens.await {
                phases.push(phase);
            }
        }
    }
    Ok(phases)
}

async fn read_phase(
    name: &'static str,
    concurrency: usize,
    options: &BenchOptions,
    client: &Client,
    paths: &Arc<Vec<String>>,
) -> Phase {
    let paths = paths.clone();
    measure(name, concurrency, options, client, move |client, n| {
        // A multiplicative hash spreads reads over all resources without a shared RNG.
        let path = paths[(n.wrapping_mul(2_654_435_761)) % paths.len()].clone();
        async move { client.get(&path).send().await.status.is_success() }
    })
    .await
}

/// Requests tokens with `burst.concurrency` tasks until `stop`; the phase row of those
/// requests, measured over the same window as the reads beside them.
async fn token_burst(
    burst: TokenBurst,
    stop: Arc<std::sync::atomic::AtomicBool>,
    options: BenchOptions,
) -> Phase {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(options.warmup_seconds);
    let mut workers = Vec::new();
    for _ in 0..burst.concurrency {
        let (http, burst, stop) = (http.clone(), burst.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let reply = http
                    .post(&burst.token_url)
                    .basic_auth(&burst.client_id, Some(&burst.secret))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("scope", &burst.scope),
                    ])
                    .send()
                    .await;
                let ok = reply.is_ok_and(|r| r.status().is_success());
                if began >= measure_from && !stop.load(Ordering::Relaxed) {
                    latencies.push(began.elapsed());
                    errors += usize::from(!ok);
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((mut l, e)) = worker.await {
            latencies.append(&mut l);
            errors += e;
        }
    }
    summarize(
        "token requests (the burst)",
        burst.concurrency,
        latencies,
        errors,
        options.seconds,
    )
}

async fn measure<F, Fut>(
    interaction: &'static str,
    concurrency: usize,
    options: &BenchOptions,
    client: &Client,
    request: F,
) -> Phase
where
    F: Fn(Client, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let warmup = Duration::from_secs_f64(options.warmup_seconds);
    let measured = Duration::from_secs_f64(options.seconds);
    measure_for(interaction, concurrency, warmup, measured, client, request).await
}

/// One phase: `concurrency` tasks each sending `request(client, n)` (n counts up across
/// them; `true` when it succeeded) for `warmup`, then for `measured`, which is what counts.
pub async fn measure_for<F, Fut>(
    interaction: &'static str,
    concurrency: usize,
    warmup: Duration,
    measured: Duration,
    client: &Client,
    request: F,
) -> Phase
where
    F: Fn(Client, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let measure_from = started + warmup;
    let deadline = measure_from + measured;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, counter, request) = (client.clone(), counter.clone(), request.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let ok = request(client.clone(), n).await;
                let done = Instant::now();
                if now >= measure_from && done <= deadline {
                    latencies.push(done - now);
                    errors += usize::from(!ok);
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((mut l, e)) = worker.await {
            latencies.append(&mut l);
            errors += e;
        }
    }
    summarize(
        interaction,
        concurrency,
        latencies,
        errors,
        measured.as_secs_f64(),
    )
}

/// A phase's row from its latencies over `seconds` of measurement.
pub fn summarize(
    interaction: &'static str,
    concurrency: usize,
    mut latencies: Vec<Duration>,
    errors: usize,
    seconds: f64,
) -> Phase {
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    Phase {
        interaction,
        concurrency,
        requests: latencies.len(),
        errors,
        per_second: latencies.len() as f64 / seconds,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    }
}

/// The phases as a Markdown table.
pub fn table(phases: &[Phase]) -> String {
    let mut out = String::from(
        "| interaction | concurrency | requests | errors | per second | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in phases {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} |\n",
            p.interaction, p.concurrency, p.requests, p.errors, p.per_second, p.p50_ms, p.p99_ms
        ));
    }
    out
}
