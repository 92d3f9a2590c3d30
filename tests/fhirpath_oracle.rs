//! The server's FHIRPath evaluation against an independent implementation: every official R4
//! search-parameter expression on every official example, evaluated by the server
//! (`search::fhirpath`, as each parameter is compiled for its type) and by npm fhirpath@5.2.2
//! (scripts/fhirpath-oracle.js, which says its two adaptations). The values must agree, as
//! sets of JSON values; every difference is either fixed or listed in `ALLOWED` with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use intellihealth::fhir::json;
use intellihealth::search::params::{ParamType, Registry};

/// Known differences: (type, parameter, why the server is right or the difference harmless).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "Observation",
        "combo-value-quantity",
        "fhirpath.js cannot convert a Quantity with a comparator (`<5`) and fails; the server \
         extracts it as the Quantity it is",
    ),
    (
        "Observation",
        "component-value-quantity",
        "fhirpath.js cannot convert a Quantity with a comparator (`<5`) and fails; the server \
         extracts it as the Quantity it is",
    ),
];

fn examples_dir() -> PathBuf {
    let dir = conformance_tests::default_examples_dir();
    assert!(
        dir.join("Patient-example.json").is_file(),
        "the official examples are missing at {}: run scripts/test",
        dir.display()
    );
    dir
}

/// The oracle's lines, from node.
fn oracle(examples: &Path) -> Vec<serde_json::Value> {
    let modules = std::env::var("FHIRPATH_NODE_PATH").unwrap_or_else(|_| {
        panic!("FHIRPATH_NODE_PATH is not set: run scripts/test, which installs npm fhirpath@5.2.2")
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("node")
        .arg(root.join("scripts/fhirpath-oracle.js"))
        .arg(examples)
        .arg(root.join("fhir-profiles/search-parameters.json"))
        .env("NODE_PATH", modules)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "the oracle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A value in a form both sides share: JSON with numbers as f64.
fn canonical(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) => format!("{}", n.as_f64().unwrap_or_default()),
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, String> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            format!("{sorted:?}")
        }
        serde_json::Value::Array(items) => {
            format!("{:?}", items.iter().map(canonical).collect::<Vec<_>>())
        }
        other => other.to_string(),
    }
}

#[test]
fn the_server_extracts_what_fhirpath_js_extracts() {
    let examples = examples_dir();
    let lines = oracle(&examples);
    assert!(lines.len() > 100_000, "only {} oracle lines", lines.len());
    let registry = Registry::r4();
    let mut parsed: BTreeMap<String, json::Json> = BTreeMap::new();
    let (mut compared, mut non_empty) = (0usize, 0usize);
    let mut differences: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in &lines {
        let (file, ty, param) = (
            line["file"].as_str().unwrap(),
            line["type"].as_str().unwrap(),
            line["param"].as_str().unwrap(),
        );
        let Some(definition) = registry.param(ty, param) else {
            continue;
        };
        if matches!(definition.kind, ParamType::Composite | ParamType::Special) {
            continue;
        }
        let resource = parsed.entry(file.to_owned()).or_insert_with(|| {
            let bytes = std::fs::read(examples.join(file)).unwrap();
            json::parse(&bytes).unwrap()
        });
        let ours: BTreeSet<String> = definition
            .expression
            .as_ref()
            .map(|e| e.evaluate(resource))
            .unwrap_or_default()
            .into_iter()
            .map(|node| {
                let value: serde_json::Value =
                    serde_json::from_slice(&node.value.to_bytes()).unwrap();
                canonical(&value)
            })
            .collect();
        let theirs: Option<BTreeSet<String>> = line["values"]
            .as_array()
            .map(|values| values.iter().map(canonical).collect());
        compared += 1;
        if !ours.is_empty() {
            non_empty += 1;
        }
        if theirs.as_ref() != Some(&ours) {
            let key = (ty.to_owned(), param.to_owned());
            let detail = format!(
                "{file}: server {ours:?}, fhirpath.js {}",
                theirs.map_or_else(|| format!("error {}", line["error"]), |t| format!("{t:?}"))
            );
            differences.entry(key).or_default().push(detail);
        }
    }
    assert!(compared > 100_000, "only {compared} values compared");
    assert!(
        non_empty > 10_000,
        "only {non_empty} non-empty: the comparison tests little"
    );
    let unexplained: Vec<String> = differences
        .iter()
        .filter(|((ty, param), _)| !ALLOWED.iter().any(|(t, p, _)| t == ty && p == param))
        .map(|((ty, param), cases)| {
            format!(
                "{ty}.{param} ({} examples), e.g. {}",
                cases.len(),
                cases[0].chars().take(600).collect::<String>()
            )
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "{} parameters differ from fhirpath.js:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    // Every allowed difference still occurs: an entry that no longer differs is removed.
    for (ty, param, _) in ALLOWED {
        assert!(
            differences.contains_key(&((*ty).to_owned(), (*param).to_owned())),
            "{ty}.{param} no longer differs: remove it from ALLOWED"
        );
    }
}
