//! The audit trail's own capacity: AuditEvents made durable per second, with no HTTP and no
//! read in the way, at several numbers of concurrent recorders. Each event is a read of one of
//! 1,000 patients' Observations by a practitioner (so every event links into a patient's
//! chain), recorded through the same `AuditLog` and repository sink the server uses.
//!
//!   cargo bench --bench audit                     # the embedded profile
//!   INTELLIHEALTH_MONGODB_URI=… INTELLIHEALTH_IPFS_API=… cargo bench --bench audit
//!
//! Prints one Markdown row per concurrency: events, events/s, p50 and p99 of one `record`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use intellihealth::audit::{Agent, AuditLog, AuditSink, Interaction, Request, Source, Touched};
use intellihealth::config::{Config, StorageArgs};

const PATIENTS: usize = 1000;
const WARM_UP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(8);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let storage = StorageArgs {
        data_dir: Some(dir.path().to_owned()),
        mongodb_uri: std::env::var("INTELLIHEALTH_MONGODB_URI").ok(),
        ipfs_api: std::env::var("INTELLIHEALTH_IPFS_API").ok(),
        ..StorageArgs::default()
    };
    let profile = if storage.mongodb_uri.is_some() {
        "services"
    } else {
        "embedded"
    };
    let config = Config::for_storage(&storage).expect("a config");
    let stores = intellihealth::app::open_stores(&config)
        .await
        .expect("the stores");
    let sink: Arc<dyn AuditSink> = stores.repo.clone();
    let log = AuditLog::start(
        sink,
        Source {
            replica: format!("bench-{}", std::process::id()),
        },
    );
    println!("| profile | recorders | events | events/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for recorders in [1, 32, 128, 512] {
        let (events, seconds, mut latencies) = phase(&log, recorders).await;
        latencies.sort_by(f64::total_cmp);
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "| {profile} | {recorders} | {events} | {:.0} | {:.2} | {:.2} |",
            events as f64 / seconds,
            at(0.50),
            at(0.99)
        );
    }
}

/// `recorders` tasks record reads until the time is up; what was measured after the warm-up.
async fn phase(log: &AuditLog, recorders: usize) -> (usize, f64, Vec<f64>) {
    let start = Instant::now();
    let measured_from = start + WARM_UP;
    let end = measured_from + MEASURE;
    let mut tasks = Vec::new();
    for recorder in 0..recorders {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = recorder;
            while Instant::now() < end {
                let began = Instant::now();
                log.record(read_of(n))
                    .await
                    .expect("an AuditEvent made durable");
                if began >= measured_from {
                    latencies.push(began.elapsed().as_secs_f64() * 1000.0);
                }
                n += recorders;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a recorder"));
    }
    (latencies.len(), MEASURE.as_secs_f64(), latencies)
}

/// The `n`th read: a practitioner reads one of a patient's Observations.
fn read_of(n: usize) -> Interaction {
    let patient = format!("bench-patient-{}", n % PATIENTS);
    let touched = Touched::default();
    touched.set_agent(Agent {
        client_id: "bench-ehr".into(),
        fhir_user: Some("Practitioner/bench".into()),
        subject: "bench".into(),
        break_glass: None,
    });
    let observation = format!("Observation/bench-{n}");
    touched.judged(observation.clone(), &[patient], true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Interaction::new(
        Request {
            method: "GET".into(),
            path: format!("/fhir/{observation}"),
            query: None,
            address: Some("127.0.0.1".into()),
            status: 200,
            started: now,
        },
        &touched,
    )
}
