//! The router in process (`oneshot`, no sockets) on the embedded profile, for what is awkward
//! to reach over TCP: the default body limit with and without a Content-Length, `/health`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[path = "common/oneshot.rs"]
mod oneshot;

use oneshot::router;

async fn body_of(response: axum::response::Response) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn the_default_body_limit_is_ten_megabytes() {
    let dir = tempfile::tempdir().unwrap();
    let (router, bearer) = router(dir.path()).await;
    let too_big = vec![b' '; 10 * 1024 * 1024 + 1];
    let declared = Request::post("/fhir/Patient")
        .header("authorization", &bearer)
        .header("content-type", "application/fhir+json")
        .header("content-length", too_big.len())
        .body(Body::from(too_big.clone()))
        .unwrap();
    let response = router.clone().oneshot(declared).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body_of(response).await["resourceType"], "OperationOutcome");

    // No Content-Length: the limit holds while reading.
    let stream = futures::stream::iter(
        too_big
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let chunked = Request::post("/fhir/Patient")
        .header("authorization", &bearer)
        .header("content-type", "application/fhir+json")
        .body(Body::from_stream(stream))
        .unwrap();
    let response = router.clone().oneshot(chunked).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // An Organization: in no patient's record, so this client (no custodian, no grant) may
    // write it.
    let fits = format!(
        r#"{{"resourceType":"Organization","name":"{}"}}"#,
        "x".repeat(1_000_000)
    );
    let ok = Request::post("/fhir/Organization")
        .header("authorization", &bearer)
        .header("content-type", "application/fhir+json")
        .body(Body::from(fits))
        .unwrap();
    assert_eq!(
        router.oneshot(ok).await.unwrap().status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn health_reports_each_component() {
    let dir = tempfile::tempdir().unwrap();
    let response = router(dir.path())
        .await
        .0
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_of(response).await;
    assert_eq!(body["status"], "up");
    assert_eq!(body["components"]["index"]["status"], "up");
    assert_eq!(body["components"]["blob store"]["status"], "up");
}

#[tokio::test]
async fn unknown_routes_get_an_operation_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let response = router(dir.path())
        .await
        .0
        .oneshot(Request::get("/nowhere").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_of(response).await["resourceType"], "OperationOutcome");
}
