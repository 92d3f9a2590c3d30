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
