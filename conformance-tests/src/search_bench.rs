//! The search benchmark: a data set loaded with its own ids (PUT, so its references hold), then
//! each of a list of searches measured on its own at concurrency 1, its values rotated over
//! the data (another patient, another code each time), so no answer is served twice in a row.
//!
//! The loading rate is reported too: every write is indexed, so it shows what indexing costs
//! creates (compare a build that indexes nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bench::{Phase, summarize};
use crate::client::Client;

#[derive(Clone, Debug)]
pub struct SearchBenchOptions {
    pub base_url: String,
    pub bearer: Option<String>,
    pub seconds: f64,
    /// Concurrent writers while loading.
    pub load_concurrency: usize,
    /// Only load (and report the rate): for a build that cannot search.
    pub load_only: bool,
}

/// One search to measure: a name, and the query for the n-th request.
struct Query {
    name: &'static str,
    make: Box<dyn Fn(usize) -> String + Send + Sync>,
}

/// Every resource of the NDJSON files in `dir`, as written (ids kept).
pub fn read_ndjson(dir: &std::path::Path) -> Result<Vec<Value>, String> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    // Referenced types first, so references point at resources that exist.
    let rank = |p: &std::path::PathBuf| {
        let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        match name {
            "Patient" | "Practitioner" | "Organization" => 0,
            "Encounter" => 1,
            _ => 2,
        }
    };
    files.sort_by_key(|p| (rank(p), p.clone()));
    let mut out = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        out.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["id"].is_string()),
        );
    }
    Ok(out)
}

/// Loads `resources` (PUT with their ids), returning the writes per second.
async fn load(client: &Client, resources: &[Value], concurrency: usize) -> Result<f64, String> {
    let resources = Arc::new(resources.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, resources, next, failed) = (
            client.clone(),
            resources.clone(),
            next.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(resource) = resources.get(n) else {
                    break;
                };
                let path = format!(
                    "{}/{}",
                    resource["resourceType"].as_str().unwrap_or_default(),
                    resource["id"].as_str().unwrap_or_default()
                );
                let reply = client
                    .put_json(&path, resource)
                    .header("prefer", "return=minimal")
                    .send()
                    .await;
                if !reply.status.is_success() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > resources.len() / 100 {
        return Err(format!("{failed} of {} writes failed", resources.len()));
    }
    Ok(resources.len() as f64 / started.elapsed().as_secs_f64())
}

fn strings_of(
    resources: &[Value],
    ty: &str,
    pick: impl Fn(&Value) -> Option<String>,
) -> Vec<String> {
    resources
        .iter()
        .filter(|r| r["resourceType"] == ty)
        .filter_map(pick)
        .collect()
}

/// Runs the search benchmark on `resources` (already in FHIR JSON with ids).
pub async fn run(
    options: &SearchBenchOptions,
    resources: Vec<Value>,
) -> Result<(f64, Vec<(Phase, f64)>), String> {
    let client = Client::new(&options.base_url, options.bearer.clone());
    let load_rate = load(&client, &resources, options.load_concurrency).await?;
    if options.load_only {
        return Ok((load_rate, Vec::new()));
    }
    let patients = strings_of(&resources, "Patient", |r| {
        r["id"].as_str().map(str::to_owned)
    });
    let families = strings_of(&resources, "Patient", |r| {
        r["name"][0]["family"]
            .as_str()
            .map(|f| f.chars().take(4).collect())
    });
    let identifiers = strings_of(&resources, "Patient", |r| {
        let i = &r["identifier"][0];
        Some(format!(
            "{}|{}",
            i["system"].as_str()?,
            i["value"].as_str()?
        ))
    });
    let codes = strings_of(&resources, "Observation", |r| {
        let c = &r["code"]["coding"][0];
        Some(format!("{}|{}", c["system"].as_str()?, c["code"].as_str()?))
    });
    if patients.is_empty() || codes.is_empty() {
        return Err("the data has no patients or observations".into());
    }
    let at =
        |list: &Vec<String>, n: usize| list[n.wrapping_mul(2_654_435_761) % list.len()].clone();
    let (p, f, i, c) = (patients.clone(), families, identifiers, codes);
    let queries: Vec<Query> = vec![
        Query {
            name: "Patient?name=",
            make: Box::new(move |n| format!("Patient?name={}", at(&f, n))),
        },
        Query {
            name: "Patient?identifier=system|value",
            make: Box::new(move |n| format!("Patient?identifier={}", at(&i, n))),
        },
        Query {
            name: "Observation?patient=X&code=system|code&_sort=-date&_count=20",
            make: {
                let (p, c) = (p.clone(), c.clone());
                Box::new(move |n| {
                    format!(
                        "Observation?patient={}&code={}&_sort=-date&_count=20",
                        at(&p, n),
                        at(&c, n / 7)
                    )
                })
            },
        },
        Query {
            name: "Observation?value-quantity=gt100 (_count=20)",
            make: Box::new(|_| "Observation?value-quantity=gt100&_count=20".to_owned()),
        },
        Query {
            name: "Encounter?patient=X&_revinclude=Observation:encounter",
            make: {
                let p = p.clone();
                Box::new(move |n| {
                    format!(
                        "Encounter?patient={}&_revinclude=Observation:encounter",
                        at(&p, n)
                    )
                })
            },
        },
        Query {
            name: "Observation?subject:Patient.birthdate=lt1950 (_count=20)",
            make: Box::new(|_| "Observation?subject:Patient.birthdate=lt1950&_count=20".to_owned()),
        },
        // carebundle's patients were born 1960-1989: this chain finds a few dozen of them.
        Query {
            name: "Observation?subject:Patient.birthdate=lt1962 (_count=20)",
            make: Box::new(|_| "Observation?subject:Patient.birthdate=lt1962&_count=20".to_owned()),
        },
        Query {
            name: "Patient/X/$everything",
            make: {
                let p = p.clone();
                Box::new(move |n| format!("Patient/{}/$everything", at(&p, n)))
            },
        },
    ];
    let mut phases = Vec::new();
    for query in queries {
        let deadline = Instant::now() + Duration::from_secs_f64(options.seconds);
        let (mut latencies, mut errors, mut entries, mut n) = (Vec::new(), 0usize, 0usize, 0usize);
        // One warm-up request, then measured ones until the deadline.
        let _ = client.get(&(query.make)(usize::MAX / 3)).send().await;
        while Instant::now() < deadline {
            let path = (query.make)(n);
            let began = Instant::now();
            let reply = client.get(&path).send().await;
            latencies.push(began.elapsed());
            if reply.status.is_success() {
                entries += reply
                    .json()
                    .and_then(|b| b["entry"].as_array().map(Vec::len))
                    .unwrap_or(0);
            } else {
                errors += 1;
            }
            n += 1;
        }
        let phase = summarize(query.name, 1, latencies, errors, options.seconds);
        let mean_entries = entries as f64 / phase.requests.max(1) as f64;
        phases.push((phase, mean_entries));
    }
    Ok((load_rate, phases))
}

/// The phases as a Markdown table.
pub fn table(load_rate: f64, phases: &[(Phase, f64)]) -> String {
    let mut out = format!(
        "loaded at {load_rate:.0} resources/s\n\n| search | requests | errors | per second | p50 ms | p99 ms | entries per answer |\n|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (p, entries) in phases {
        out.push_str(&format!(
            "| `{}` | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} |\n",
            p.interaction, p.requests, p.errors, p.per_second, p.p50_ms, p.p99_ms, entries
        ));
    }
    out
}
