//! The suites, each a list of cases against a live server, and the helpers they share.

pub mod attacks;
pub mod bad_input;
pub mod crud;
pub mod errors;
pub mod examples;
pub mod history;
pub mod metadata;
pub mod negotiation;
pub mod search;
pub mod smart;
pub mod transactions;

use serde_json::{Value, json};

use crate::client::Client;

/// What every suite gets.
pub struct SuiteContext {
    pub client: Client,
    /// The server's body limit, for the 413 case (a body one byte larger is sent).
    pub max_body_bytes: usize,
}

/// A valid Patient, distinguishable by `family`.
pub fn patient(family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "active": true,
        "name": [{"family": family, "given": ["Conformance"]}],
        "gender": "female",
        "birthDate": "1970-01-01"
    })
}

/// The URL of a Bundle's link with this `relation` (`self`, `first`, `next`, …).
pub fn bundle_link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)?["url"]
        .as_str()
        .map(str::to_owned)
}

/// A fresh id no other run will use.
pub fn random_id() -> String {
    format!("ct-{:016x}", rand::random::<u64>())
}

/// Whether two resources are the same apart from the server-owned `meta.versionId` and
/// `meta.lastUpdated` (and an id the client did not send).
pub fn same_resource(sent: &Value, stored: &Value) -> bool {
    let mut stored = stored.clone();
    let mut sent = sent.clone();
    for value in [&mut sent, &mut stored] {
        strip_server_meta(value);
    }
    if sent.get("id").is_none()
        && let Some(object) = stored.as_object_mut()
    {
        object.remove("id");
    }
    sent == stored
}

pub fn strip_server_meta(resource: &mut Value) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let empty = match object.get_mut("meta").and_then(Value::as_object_mut) {
        Some(meta) => {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            meta.is_empty()
        }
        None => false,
    };
    if empty {
        object.remove("meta");
    }
}
