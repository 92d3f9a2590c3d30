//! The router in process for `oneshot` tests (no sockets, no spawned binary), on the embedded
//! profile. Included by path (`#[path = "common/oneshot.rs"] mod oneshot;`) rather than
//! through `common`, so the tests that use it build none of the process and services helpers.

use intellihealth::app;
use intellihealth::auth::Scopes;
use intellihealth::auth::tokens::Grant;
use intellihealth::config::{Config, ServeArgs, StorageArgs};

/// The router over a fresh data directory `dir`, and a `system/*.cruds` bearer header valid
/// for it (requests carry no Host, so the base URL is `http://localhost/fhir`).
pub async fn router(dir: &std::path::Path) -> (axum::Router, String) {
    let config = Config::resolve(&ServeArgs {
        storage: StorageArgs {
            data_dir: Some(dir.to_owned()),
            ..StorageArgs::default()
        },
        ..ServeArgs::default()
    })
    .unwrap();
    let state = app::build(&config).await.unwrap();
    let grant = Grant {
        subject: "test".into(),
        client_id: "test".into(),
        scopes: Scopes::parse("system/*.cruds"),
        patient: None,
        fhir_user: None,
        family: None,
    };
    let (token, _) = state
        .auth
        .tokens
        .issue_access("http://localhost/fhir", &grant)
        .await
        .unwrap();
    (
        intellihealth::http::router(state),
        format!("Bearer {token}"),
    )
}
