//! The server's metrics, rendered in the Prometheus text exposition format (0.0.4) for
//! `/metrics`. Every room reports here through three calls, `count`, `observe` and `set`; the
//! table below is the whole list of metric families, with their types and help texts, so a
//! metric cannot be reported under a name nobody documented.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `intellihealth_build_info` | gauge | `version` |
//! | `intellihealth_http_requests_total` | counter | `interaction`, `resource_type`, `status` |
//! | `intellihealth_http_request_duration_seconds` | histogram | `interaction` |
//! | `intellihealth_backend_call_duration_seconds` | histogram | `component`, `operation` |
//! | `intellihealth_backend_errors_total` | counter | `component`, `operation`, `kind` |
//! | `intellihealth_tokens_issued_total` | counter | `grant_type` |
//! | `intellihealth_token_requests_refused_total` | counter | `grant_type`, `error` |
//! | `intellihealth_password_checks_total` | counter | — |
//! | `intellihealth_blob_cache_requests_total` | counter | `result` (`hit`, `miss`) |
//! | `intellihealth_sweeps_total` | counter | `outcome` |
//! | `intellihealth_sweep_blobs_removed_total` | counter | — |
//! | `intellihealth_records_purged_total` | counter | — |
//! | `intellihealth_reindex_pending` | gauge | — |
//! | `intellihealth_process_resident_memory_bytes` | gauge | — |
//!
//! Labels carry only the server's own vocabulary (interaction names, resource type names,
//! status codes, component names), never ids, query values or anything a client wrote, so
//! neither health data nor unbounded cardinality can reach the metrics.
//!
//! One registry per process: metrics describe the process, whatever serves them. Must not
//! know HTTP (`http::metrics` serves the text) or any backend.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, RwLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric family: name, type, help.
const FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "intellihealth_build_info",
        Kind::Gauge,
        "The running build (always 1).",
    ),
    (
        "intellihealth_http_requests_total",
        Kind::Counter,
        "HTTP requests answered, by interaction, resource type and status.",
    ),
    (
        "intellihealth_http_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's arrival to its response, by interaction.",
    ),
    (
        "intellihealth_backend_call_duration_seconds",
        Kind::Histogram,
        "Time of calls to the index and blob stores, by component and operation.",
    ),
    (
        "intellihealth_backend_errors_total",
        Kind::Counter,
        "Failed calls to the index and blob stores, by component, operation and kind.",
    ),
    (
        "intellihealth_tokens_issued_total",
        Kind::Counter,
        "Access tokens issued, by grant type.",
    ),
    (
        "intellihealth_token_requests_refused_total",
        Kind::Counter,
        "Token requests refused, by grant type and OAuth error.",
    ),
    (
        "intellihealth_password_checks_total",
        Kind::Counter,
        "Password and client secret checks (argon2id), known accounts and unknown alike.",
    ),
    (
        "intellihealth_blob_cache_requests_total",
        Kind::Counter,
        "Reads of sealed blobs, by whether the in-memory cache held them.",
    ),
    (
        "intellihealth_sweeps_total",
        Kind::Counter,
        "Background sweeps of unreferenced blobs, by outcome.",
    ),
    (
        "intellihealth_sweep_blobs_removed_total",
        Kind::Counter,
        "Unreferenced blobs removed by sweeps.",
    ),
    (
        "intellihealth_records_purged_total",
        Kind::Counter,
        "Expired authorization records (codes, refresh tokens, replay caches) deleted.",
    ),
    (
        "intellihealth_reindex_pending",
        Kind::Gauge,
        "Resources indexed under other search parameters, left to reindex.",
    ),
    (
        "intellihealth_process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory of the server process.",
    ),
];

/// Histogram bucket upper bounds, in seconds: 100 µs to 10 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;

enum Series {
    /// Counters and gauges: an f64 held as its bits.
    Value(AtomicU64),
    Histogram {
        /// Per-bucket counts (not cumulative); the last slot is `+Inf`.
        buckets: [AtomicU64; BUCKETS.len() + 1],
        sum: AtomicU64,
        count: AtomicU64,
    },
}

#[derive(Default)]
struct Registry {
    series: RwLock<HashMap<(&'static str, Labels), Series>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

fn kind_of(name: &str) -> Option<Kind> {
    FAMILIES
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, k, _)| *k)
}

fn add_f64(cell: &AtomicU64, delta: f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        Some((f64::from_bits(bits) + delta).to_bits())
    });
}

/// Runs `update` on the series `name{labels}`, creating it on first use.
fn with_series(name: &'static str, labels: &[(&'static str, &str)], update: impl Fn(&Series)) {
    let Some(kind) = kind_of(name) else {
        debug_assert!(false, "metric {name} is not in metrics::FAMILIES");
        return;
    };
    let key: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    if let Ok(series) = REGISTRY.series.read()
        && let Some(found) = series.get(&(name, key.clone()))
    {
        update(found);
        return;
    }
    let Ok(mut series) = REGISTRY.series.write() else {
        return;
    };
    let entry = series.entry((name, key)).or_insert_with(|| match kind {
        Kind::Histogram => Series::Histogram {
            buckets: Default::default(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        },
        Kind::Counter | Kind::Gauge => Series::Value(AtomicU64::new(0f64.to_bits())),
    });
    update(entry);
}

/// Adds one to the counter `name{labels}`.
pub fn count(name: &'static str, labels: &[(&'static str, &str)]) {
    count_by(name, labels, 1.0);
}

/// Adds `amount` to the counter `name{labels}`.
pub fn count_by(name: &'static str, labels: &[(&'static str, &str)], amount: f64) {
    with_series(name, labels, |series| {
        if let Series::Value(value) = series {
            add_f64(value, amount);
        }
    });
}

/// Sets the gauge `name{labels}`.
pub fn set(name: &'static str, labels: &[(&'static str, &str)], value: f64) {
    with_series(name, labels, |series| {
        if let Series::Value(cell) = series {
            cell.store(value.to_bits(), Ordering::Relaxed);
        }
    });
}

/// Records one observation (seconds) in the histogram `name{labels}`.
pub fn observe(name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
    with_series(name, labels, |series| {
        if let Series::Histogram {
            buckets,
            sum,
            count,
        } = series
        {
            let slot = BUCKETS
                .iter()
                .position(|&bound| seconds <= bound)
                .unwrap_or(BUCKETS.len());
            buckets[slot].fetch_add(1, Ordering::Relaxed);
            add_f64(sum, seconds);
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// The current value of a counter or gauge (0 if never reported): for tests and `status`.
pub fn value(name: &'static str, labels: &[(&'static str, &str)]) -> f64 {
    let key: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    REGISTRY
        .series
        .read()
        .ok()
        .and_then(|series| match series.get(&(name, key)) {
            Some(Series::Value(value)) => Some(f64::from_bits(value.load(Ordering::Relaxed))),
            _ => None,
        })
        .unwrap_or(0.0)
}

/// The resident memory of this process, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0)
}

/// Every metric in the Prometheus text format.
pub fn render() -> String {
    set(
        "intellihealth_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    if let Some(bytes) = resident_bytes() {
        set("intellihealth_process_resident_memory_bytes", &[], bytes);
    }
    let Ok(series) = REGISTRY.series.read() else {
        return String::new();
    };
    let mut out = String::new();
    for (name, kind, help) in FAMILIES {
        let mut members: Vec<(&Labels, &Series)> = series
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), s)| (labels, s))
            .collect();
        if members.is_empty() {
            continue;
        }
        members.sort_by(|a, b| a.0.cmp(b.0));
        let type_name = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {type_name}");
        for (labels, series) in members {
            match series {
                Series::Value(value) => {
                    let value = f64::from_bits(value.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}{} {}", label_text(labels, None), number(value));
                }
                Series::Histogram {
                    buckets,
                    sum,
                    count,
                } => {
                    let mut cumulative = 0u64;
                    for (i, bucket) in buckets.iter().enumerate() {
                        cumulative += bucket.load(Ordering::Relaxed);
                        let bound = BUCKETS.get(i).map_or("+Inf".to_owned(), |b| number(*b));
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {cumulative}",
                            label_text(labels, Some(&bound))
                        );
                    }
                    let sum = f64::from_bits(sum.load(Ordering::Relaxed));
                    let _ = writeln!(
                        out,
                        "{name}_sum{} {}",
                        label_text(labels, None),
                        number(sum)
                    );
                    let _ = writeln!(
                        out,
                        "{name}_count{} {}",
                        label_text(labels, None),
                        count.load(Ordering::Relaxed)
                    );
                }
            }
        }
    }
    out
}

fn number(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// `{a="x",b="y"}` with `le` appended for a histogram bucket; nothing for no labels.
fn label_text(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        // The registry is the process's: other tests may count too, so compare with before.
        let before = value("intellihealth_sweep_blobs_removed_total", &[]);
        count("intellihealth_sweep_blobs_removed_total", &[]);
        count_by("intellihealth_sweep_blobs_removed_total", &[], 2.0);
        assert!(value("intellihealth_sweep_blobs_removed_total", &[]) >= before + 3.0);
        observe(
            "intellihealth_http_request_duration_seconds",
            &[("interaction", "test-\"quoted\"")],
            0.003,
        );
        let text = render();
        assert!(text.contains("# TYPE intellihealth_sweep_blobs_removed_total counter"));
        assert!(text.contains("\nintellihealth_sweep_blobs_removed_total "));
        assert!(text.contains(
            "intellihealth_http_request_duration_seconds_bucket{interaction=\"test-\\\"quoted\\\"\",le=\"0.0025\"} 0"
        ));
        assert!(text.contains(
            "intellihealth_http_request_duration_seconds_bucket{interaction=\"test-\\\"quoted\\\"\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "intellihealth_http_request_duration_seconds_bucket{interaction=\"test-\\\"quoted\\\"\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains("intellihealth_build_info{version="));
    }

    #[test]
    fn every_family_is_documented_in_the_table_above() {
        let doc = include_str!("metrics.rs");
        for (name, ..) in FAMILIES {
            assert!(doc.contains(&format!("| `{name}` |")), "{name}");
        }
    }
}
