//! The services profile's addresses, as `scripts/services env DIR` exports them. Tests of the
//! services profile fail (never skip) when they are missing: `scripts/test` starts the
//! services before running them.

#![allow(dead_code)]

pub fn mongodb_uri() -> String {
    required("INTELLIHEALTH_MONGODB_URI")
}

pub fn ipfs_api() -> String {
    required("INTELLIHEALTH_IPFS_API")
}

/// The Ethereum node's JSON-RPC URL (anvil).
pub fn eth_rpc() -> String {
    required("INTELLIHEALTH_ETH_RPC")
}

/// A file holding the hex private key of a funded account on that node.
pub fn eth_key_file() -> String {
    required("INTELLIHEALTH_ETH_KEY_FILE")
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test runs against the real service. Run scripts/test, or \
             `eval \"$(scripts/services up /tmp/ih-services)\"` before cargo test"
        )
    })
}

/// The MongoDB URI with its database replaced by a fresh one, so each test is alone.
pub fn fresh_database_uri(tag: &str) -> String {
    let uri = mongodb_uri();
    let database = format!("ih_{tag}_{:08x}", rand::random::<u32>());
    let (base, query) = match uri.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (uri.as_str(), String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let hosts_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{database}{query}", &base[..hosts_end])
}

/// An IPFS node of the test's own, for tests that sweep: a sweep removes every pin no index row
/// of *its* database references, so it must not run over a node other tests share.
pub struct OwnIpfs {
    dir: tempfile::TempDir,
    pub api: String,
}

impl OwnIpfs {
    pub fn start() -> OwnIpfs {
        let dir = tempfile::tempdir().unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services");
        let output = super::succeeded(
            std::process::Command::new(script)
                .arg("up")
                .arg(dir.path())
                .arg("ipfs"),
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let api = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export INTELLIHEALTH_IPFS_API="))
            .map(|v| v.trim_matches('\'').to_owned())
            .expect("an IPFS API address");
        OwnIpfs { dir, api }
    }
}

impl Drop for OwnIpfs {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services");
        let _ = std::process::Command::new(script)
            .arg("down")
            .arg(self.dir.path())
            .arg("ipfs")
            .output();
    }
}
