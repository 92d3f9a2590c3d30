//! The deployment files users run without us: docker-compose.yml sets only variables the
//! server reads and wires all three services, and the Dockerfile builds the binary the README
//! runs. (No Docker engine runs here; these are checks of the files against the server.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

/// `INTELLIHEALTH_…` names in `text`.
fn variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("INTELLIHEALTH_") {
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// What `intellihealth serve --help` says the server reads.
fn server_reads() -> BTreeSet<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_intellihealth"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    variables(&String::from_utf8_lossy(&help.stdout))
}

#[test]
fn compose_sets_only_variables_the_server_reads() {
    let compose = read("docker-compose.yml");
    let known = server_reads();
    assert!(
        known.contains("INTELLIHEALTH_MONGODB_URI") && known.contains("INTELLIHEALTH_MASTER_KEY")
    );
    let used = variables(&compose);
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "docker-compose.yml sets variables the server ignores: {unknown:?}"
    );
    for needed in [
        "INTELLIHEALTH_MONGODB_URI",
        "INTELLIHEALTH_IPFS_API",
        "INTELLIHEALTH_LISTEN",
    ] {
        assert!(
            used.contains(needed),
            "docker-compose.yml selects the services profile ({needed})"
        );
    }
    let dockerfile = read("Dockerfile");
    let unknown: Vec<String> = variables(&dockerfile).difference(&known).cloned().collect();
    assert!(
        unknown.is_empty(),
        "the Dockerfile sets variables the server ignores: {unknown:?}"
    );
}

#[test]
fn compose_wires_mongo_as_a_replica_set_kubo_anvil_and_the_server() {
    let compose = read("docker-compose.yml");
    for service in ["  mongo:", "  ipfs:", "  anvil:", "  intellihealth:"] {
        assert!(compose.lines().any(|l| l == service), "service {service}");
    }
    assert!(
        compose.contains("--replSet"),
        "transactions need a replica set"
    );
    assert!(
        compose.contains("replicaSet=rs0"),
        "the server connects to the replica set"
    );
    assert!(
        compose.contains("image: ipfs/kubo:"),
        "the reference IPFS node"
    );
    assert_eq!(
        compose.matches("healthcheck:").count(),
        4,
        "every service has a healthcheck"
    );
    assert_eq!(compose.matches("condition: service_healthy").count(), 3);
    assert!(
        compose.contains("INTELLIHEALTH_ETH_KEY_FILE: /run/secrets/"),
        "the ledger's key is a secret, never in the environment"
    );
    for volume in ["mongo-data:", "ipfs-data:", "anvil-data:", "server-data:"] {
        assert!(
            compose.contains(&format!("  {volume}\n")),
            "volume {volume}"
        );
    }
}

#[test]
fn the_dockerfile_builds_the_binary_the_readme_runs() {
    let dockerfile = read("Dockerfile");
    let readme = read("README.md");
    let first_commands: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert_eq!(
        first_commands,
        ["cargo run --release -- serve", "scripts/test"]
    );
    assert!(dockerfile.contains("cargo build --release --locked --bin intellihealth"));
    assert!(dockerfile.contains("target/release/intellihealth"));
    assert!(dockerfile.contains("CMD [\"intellihealth\", \"serve\"]"));
    let toolchain = dockerfile
        .lines()
        .find(|l| l.starts_with("FROM rust:"))
        .unwrap();
    let cargo = read("Cargo.toml");
    let rust_version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .map(|v| v.trim_end_matches('"'))
        .unwrap();
    assert!(
        toolchain.contains(rust_version),
        "the image's Rust ({toolchain}) is the project's ({rust_version})"
    );
}
