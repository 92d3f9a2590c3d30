//! `openapi/openapi.json` is exactly what the handlers' annotations generate; the running
//! server serves the same document. Refresh with `UPDATE_OPENAPI=1 cargo test --test openapi`.

use std::path::Path;

#[test]
fn the_committed_openapi_document_is_current() {
    let generated = intellihealth::http::openapi::document();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        committed.trim_end(),
        generated,
        "openapi/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test --test openapi"
    );
    let document: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/fhir/{type}",
        "/fhir/{type}/{id}",
        "/fhir/{type}/{id}/_history/{vid}",
        "/fhir/_history",
        "/fhir/metadata",
        "/fhir",
    ] {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }
    // Conditional update and delete, PATCH, batch and transaction.
    assert!(document["paths"]["/fhir/{type}"]["put"].is_object());
    assert!(document["paths"]["/fhir/{type}"]["delete"].is_object());
    assert!(document["paths"]["/fhir/{type}/{id}"]["patch"].is_object());
    assert!(document["paths"]["/fhir"]["post"].is_object());
}
