//! The soak: a mixed load (reads, creates, updates, history, token requests) held for a fixed
//! time against a running server, reported minute by minute with the server's resident memory,
//! so that a leak, a slow drift in latency or a rare error shows up where a 10-second benchmark
//! cannot see it.
//!
//! The verdict: no failed request at all, and resident memory at the end at most
//! `RSS_GROWTH_BOUND` times what it was once the warm-up (the first `WARMUP_MINUTES`) was over,
//! plus `RSS_PER_CREATE_KIB` for each resource created after it. The soak keeps creating, and
//! a server that holds part of its index in memory (the embedded profile) rightly grows with
//! its data; what it must not do is grow with the number of requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bench::{TokenBurst, summarize};
use crate::client::Client;

/// Minutes whose memory growth is not held against the server (caches filling, pools growing).
pub const WARMUP_MINUTES: usize = 2;
/// Largest accepted ratio of the final resident memory to that after the warm-up.
pub const RSS_GROWTH_BOUND: f64 = 1.25;
/// Memory a created resource may add: the embedded profile's in-memory search index holds
/// about a kilobyte for each (ARCHITECTURE.md); four leave room for the allocator's slack.
pub const RSS_PER_CREATE_KIB: u64 = 4;

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub base_url: String,
    pub bearer: Option<String>,
    /// The client token requests authenticate as.
    pub tokens: TokenBurst,
    pub minutes: usize,
    pub concurrency: usize,
    /// The server's process, whose resident memory is sampled (Linux `/proc`).
    pub server_pid: Option<u32>,
}

/// One request's record: when it started (since the soak began), what, how long, whether ok.
struct Sample {
    at: Duration,
    kind: usize,
    took: Duration,
    ok: bool,
}

const KINDS: [&str; 5] = ["read", "create", "update", "history", "token"];

/// The kind of request number `n`: 60 % reads, 15 % creates, 10 % updates, 10 % history, 5 %
/// token requests.
fn kind_of(n: usize) -> usize {
    match n % 20 {
        0..=11 => 0,
        12..=14 => 1,
        15..=16 => 2,
        17..=18 => 3,
        _ => 4,
    }
}

fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Runs the soak and returns its report (Markdown) and whether it passed.
pub async fn run(options: &SoakOptions, resources: Vec<Value>) -> Result<(String, bool), String> {
    let client = Client::new(&options.base_url, options.bearer.clone());
    // A pool of existing resources to read, update and list the history of.
    let mut pool: Vec<(String, Value)> = Vec::new();
    for resource in resources.iter().take(500) {
        let ty = resource["resourceType"].as_str().unwrap_or_default();
        let reply = client.post_json(ty, resource).send().await;
        if let Some(body) = reply.json().filter(|_| reply.status.is_success()) {
            let id = body["id"].as_str().unwrap_or_default().to_owned();
            pool.push((format!("{ty}/{id}"), body));
        }
    }
    if pool.is_empty() {
        return Err("the server accepted none of the resources".into());
    }
    let pool = Arc::new(pool);
    let creates: Arc<Vec<Value>> = Arc::new(resources.into_iter().take(2_000).collect());
    let started = Instant::now();
    let total = Duration::from_secs(options.minutes as u64 * 60);
    let counter = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rss: Arc<std::sync::Mutex<Vec<(Duration, u64)>>> = Arc::default();
    let sampler = options.server_pid.map(|pid| {
        let (rss, stop) = (rss.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let (Some(kib), Ok(mut samples)) = (resident_kib(pid), rss.lock()) {
                    samples.push((started.elapsed(), kib));
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    });
    let http = reqwest::Client::new();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let (client, http, pool, creates, counter) = (
            client.clone(),
            http.clone(),
            pool.clone(),
            creates.clone(),
            counter.clone(),
        );
        let tokens = options.tokens.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while started.elapsed() < total {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let kind = kind_of(n);
                let (path, body) = &pool[n.wrapping_mul(2_654_435_761) % pool.len()];
                let began = Instant::now();
                let ok = match kind {
                    0 => client.get(path).send().await.status.is_success(),
                    1 => {
                        let resource = &creates[n % creates.len()];
                        let ty = resource["resourceType"].as_str().unwrap_or_default();
                        client
                            .post_json(ty, resource)
                            .header("prefer", "return=minimal")
                            .send()
                            .await
                            .status
                            .is_success()
                    }
                    2 => client
                        .put_json(path, body)
                        .header("prefer", "return=minimal")
                        .send()
                        .await
                        .status
                        .is_success(),
                    3 => client
                        .get(&format!("{path}/_history?_count=10"))
                        .send()
                        .await
                        .status
                        .is_success(),
                    _ => http
                        .post(&tokens.token_url)
                        .basic_auth(&tokens.client_id, Some(&tokens.secret))
                        .form(&[
                            ("grant_type", "client_credentials"),
                            ("scope", tokens.scope.as_str()),
                        ])
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success()),
                };
                samples.push(Sample {
                    at: began - started,
                    kind,
                    took: began.elapsed(),
                    ok,
                });
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for worker in workers {
        if let Ok(mut s) = worker.await {
            samples.append(&mut s);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    let rss = rss.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(report(options, &samples, &rss))
}

fn report(options: &SoakOptions, samples: &[Sample], rss: &[(Duration, u64)]) -> (String, bool) {
    let mut out = String::from(
        "| minute | requests | errors | per second | p50 ms | p99 ms | RSS MiB (end of minute) |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let rss_at = |minute: usize| {
        rss.iter()
            .rev()
            .find(|(at, _)| at.as_secs() < (minute as u64 + 1) * 60)
            .map(|(_, kib)| *kib)
    };
    let mut p99s = Vec::new();
    for minute in 0..options.minutes {
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at.as_secs() / 60 == minute as u64)
            .collect();
        let errors = window.iter().filter(|s| !s.ok).count();
        let phase = summarize(
            "minute",
            options.concurrency,
            window.iter().map(|s| s.took).collect(),
            errors,
            60.0,
        );
        if minute >= WARMUP_MINUTES {
            p99s.push(phase.p99_ms);
        }
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |\n",
            minute + 1,
            phase.requests,
            errors,
            phase.per_second,
            phase.p50_ms,
            phase.p99_ms,
            rss_at(minute).map_or("—".into(), |kib| format!("{:.1}", kib as f64 / 1024.0)),
        ));
    }
    out.push_str("\n| request | count | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n");
    for (kind, name) in KINDS.iter().enumerate() {
        let of_kind: Vec<&Sample> = samples.iter().filter(|s| s.kind == kind).collect();
        let errors = of_kind.iter().filter(|s| !s.ok).count();
        let phase = summarize(
            name,
            options.concurrency,
            of_kind.iter().map(|s| s.took).collect(),
            errors,
            1.0,
        );
        out.push_str(&format!(
            "| {name} | {} | {errors} | {:.2} | {:.2} |\n",
            phase.requests, phase.p50_ms, phase.p99_ms
        ));
    }
    let errors = samples.iter().filter(|s| !s.ok).count();
    let after_warmup = rss_at(WARMUP_MINUTES.saturating_sub(1));
    let at_end = rss.last().map(|(_, kib)| *kib);
    let growth = match (after_warmup, at_end) {
        (Some(base), Some(end)) if base > 0 => Some(end as f64 / base as f64),
        _ => None,
    };
    let created_after_warmup = samples
        .iter()
        .filter(|s| s.kind == 1 && s.ok && s.at.as_secs() >= WARMUP_MINUTES as u64 * 60)
        .count() as u64;
    let bound_kib = after_warmup.map(|base| {
        (base as f64 * RSS_GROWTH_BOUND) as u64 + created_after_warmup * RSS_PER_CREATE_KIB
    });
    let memory_ok = match (bound_kib, at_end) {
        (Some(bound), Some(end)) => end <= bound,
        _ => true,
    };
    let (p99_min, p99_max) = p99s
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &p| (lo.min(p), hi.max(p)));
    out.push_str(&format!(
        "\n{} requests, {errors} failed; resident memory after the {WARMUP_MINUTES}-minute warm-up {} MiB, at the end {} MiB (×{}); bound {} MiB (×{RSS_GROWTH_BOUND} + {RSS_PER_CREATE_KIB} KiB × {created_after_warmup} resources created since); p99 after the warm-up between {:.2} and {:.2} ms.\n",
        samples.len(),
        after_warmup.map_or("—".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        at_end.map_or("—".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        growth.map_or("—".into(), |g| format!("{g:.2}")),
        bound_kib.map_or("—".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        if p99s.is_empty() { 0.0 } else { p99_min },
        p99_max,
    ));
    (out, errors == 0 && memory_ok)
}
