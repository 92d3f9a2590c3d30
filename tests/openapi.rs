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
        "/fhir/$export",
        "/fhir/Patient/$export",
        "/fhir/Group/{id}/$export",
        "/fhir/$export-status/{job}",
        "/fhir/$export-file/{job}/{file}",
    ] {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }
    // Conditional update, patch and delete, PATCH, batch and transaction.
    assert!(document["paths"]["/fhir/{type}"]["put"].is_object());
    assert!(document["paths"]["/fhir/{type}"]["delete"].is_object());
    assert!(document["paths"]["/fhir/{type}/{id}"]["patch"].is_object());
    // Both kinds of patch, by id and by criteria.
    for path in ["/fhir/{type}/{id}", "/fhir/{type}"] {
        let content = &document["paths"][path]["patch"]["requestBody"]["content"];
        assert!(content["application/json-patch+json"].is_object(), "{path}");
        assert!(content["application/fhir+json"].is_object(), "{path}");
    }
    assert!(document["paths"]["/fhir"]["post"].is_object());
    assert!(document["paths"]["/fhir/$export-status/{job}"]["delete"].is_object());
}
