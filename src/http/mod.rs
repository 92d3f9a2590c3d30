//! The FHIR REST face: routes, content negotiation, request bodies, Bundles, and the one
//! renderer of errors (`outcome`). One file per interaction family.
//!
//! Only `http` knows axum. It knows no backend: it holds the `Repository` and asks it.

mod audit;
mod body;
mod bundle;
mod conditions;
mod consent;
mod crud;
mod export;
mod history;
mod metadata;
pub mod negotiate;
mod oauth;
pub mod openapi;
pub mod outcome;
mod portal;
mod principal;
mod reindex;
mod search;
pub mod telemetry;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::HeaderName;
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{Any, CorsLayer};

pub use outcome::ApiError;

use crate::auth::server::AuthServer;
use crate::repository::Repository;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub repo: Arc<Repository>,
    pub auth: Arc<AuthServer>,
    pub settings: Arc<HttpSettings>,
    /// Bulk Data export jobs of this process.
    pub exports: Arc<crate::bulk::Exports>,
    /// The router itself (set once it is built), through which a batch runs its entries.
    pub dispatcher: Arc<std::sync::OnceLock<Router>>,
}

/// Settings of the HTTP face, fixed at start.
#[derive(Debug)]
pub struct HttpSettings {
    /// Configured public base URL; `None` derives it from each request's Host.
    pub base_url: Option<String>,
    pub max_body_bytes: usize,
    /// Most entries in one batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// Most resources one conditional delete removes.
    pub conditional_delete_limit: usize,
    /// How a search treats parameters it does not know when the client does not say
    /// (`Prefer: handling=…`): lenient by default, as FHIR R4 recommends.
    pub search_handling: crate::search::query::Strictness,
    /// When the server started, for the CapabilityStatement's date.
    pub started_at: String,
}

/// The whole router: FHIR under `/fhir`, `/health` beside it, the patient portal at `/portal/`.
pub fn router(state: HttpState) -> Router {
    let dispatcher = state.dispatcher.clone();
    let audited = state.clone();
    let fhir = Router::new()
        .route("/metadata", only(get(metadata::capability), "GET"))
        .route(
            "/",
            only(
                get(search::system_search).post(bundle::process),
                "GET, POST",
            ),
        )
        .route("/_search", only(post(search::system_search_post), "POST"))
        .route("/_history", only(get(history::system), "GET"))
        .route(
            "/$reindex",
            only(get(reindex::status).post(reindex::start), "GET, POST"),
        )
        .route(
            "/{type}",
            only(
                get(search::type_search)
                    .post(crud::create)
                    .put(crud::update_conditional)
                    .patch(crud::patch_conditional)
                    .delete(crud::delete_conditional),
                "GET, POST, PUT, PATCH, DELETE",
            ),
        )
        .route(
            "/{type}/_search",
            only(post(search::type_search_post), "POST"),
        )
        .route("/{type}/$prepare", only(post(consent::prepare), "POST"))
        .route(
            "/{type}/$request-access",
            only(post(consent::request_access), "POST"),
        )
        .route(
            "/{type}/$granted-to-me",
            only(get(consent::granted_to_me), "GET"),
        )
        .route("/{type}/$grantees", only(get(consent::grantees), "GET"))
        .route(
            "/{type}/{id}/$answer",
            only(post(consent::answer_request), "POST"),
        )
        .route("/$export", only(get(export::system), "GET"))
        .route(
            "/$export-status/{job}",
            only(get(export::status).delete(export::cancel), "GET, DELETE"),
        )
        .route("/$export-file/{job}/{file}", only(get(export::file), "GET"))
        .route("/$import", any(bulk_import_not_served))
        .route("/{type}/$import", any(bulk_import_not_served))
        .route("/{type}/$export", only(get(export::patients), "GET"))
        .route("/{type}/{id}/$export", only(get(export::group), "GET"))
        .route(
            "/{type}/{id}/$wallet-binding",
            only(
                get(consent::prepare_binding).post(consent::bind_wallet),
                "GET, POST",
            ),
        )
        .route(
            "/{type}/{id}/$purge",
            only(
                get(consent::prepare_purge).post(consent::purge),
                "GET, POST",
            ),
        )
        .route("/{type}/_history", only(get(history::type_level), "GET"))
        .route(
            "/{type}/{id}",
            only(
                get(crud::read)
                    .put(crud::update)
                    .patch(crud::patch)
                    .delete(crud::delete),
                "GET, HEAD, PUT, PATCH, DELETE",
            ),
        )
        .route("/{type}/{id}/_history", only(get(history::instance), "GET"))
        .route("/{type}/{id}/$verify", only(get(audit::verify), "GET"))
        .route(
            "/{type}/{id}/$everything",
            only(get(search::everything), "GET"),
        )
        .route(
            "/{type}/{id}/{target}",
            only(get(search::compartment_search), "GET"),
        )
        .route("/{type}/{id}/_history/{vid}", only(get(crud::vread), "GET"))
        .route(
            "/.well-known/smart-configuration",
            only(get(oauth::smart_config), "GET"),
        )
        .route(
            "/.well-known/openid-configuration",
            only(get(oauth::openid_config), "GET"),
        )
        .fallback(unknown_route);
    let auth = Router::new()
        .route(
            "/authorize",
            only(
                get(oauth::authorize_get).post(oauth::authorize_post),
                "GET, POST",
            ),
        )
        .route("/login", only(post(oauth::login), "POST"))
        .route("/approve", only(post(oauth::approve), "POST"))
        .route("/token", only(post(oauth::token), "POST"))
        .route("/introspect", only(post(oauth::introspect), "POST"))
        .route("/revoke", only(post(oauth::revoke), "POST"))
        .route("/register", only(post(oauth::register), "POST"))
        .route("/launch", only(post(oauth::launch), "POST"))
        .route("/jwks", only(get(oauth::jwks), "GET"));
    let built = Router::new()
        .nest("/fhir", fhir)
        .nest("/auth", auth)
        .route(
            "/.well-known/smart-configuration",
            only(get(oauth::smart_config), "GET"),
        )
        // The FHIR base with a trailing slash, as some clients write it.
        .route(
            "/fhir/",
            only(
                get(search::system_search).post(bundle::process),
                "GET, POST",
            ),
        )
        .route("/health", only(get(metadata::health), "GET"))
        .route("/metrics", only(get(telemetry::metrics_for_admin), "GET"))
        .route("/openapi.json", only(get(openapi::serve), "GET"))
        // The patient portal (assets embedded in the binary) and its read-only chain proxy.
        .route("/portal", only(get(portal::redirect), "GET"))
        .route("/portal/", only(get(portal::index), "GET"))
        .route("/portal/{file}", only(get(portal::file), "GET"))
        .route("/favicon.ico", only(get(portal::favicon), "GET"))
        .route("/ledger/rpc", only(post(portal::ledger_rpc), "POST"))
        .fallback(unknown_route)
        // Inside the logger, so a caught panic is logged as the 500 it becomes.
        .layer(CatchPanicLayer::custom(panic_response))
        // Outside the panic catcher, so a request that panicked is audited as the 500 it is.
        .layer(middleware::from_fn_with_state(audited, audit::record))
        .layer(middleware::from_fn(telemetry::log_request))
        .layer(cors());
    let built = built.with_state(state);
    let _ = dispatcher.set(built.clone());
    built
}

/// CORS for browser apps (SMART apps are often single-page apps on another origin). Any
/// origin may call, because access is decided by the bearer token, never by cookies: without
/// `allow_credentials` a browser sends no cookies cross-origin, so the sign-in pages' session
/// cookie cannot be ridden from another site.
fn cors() -> CorsLayer {
    use axum::http::header;
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::ACCEPT,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            HeaderName::from_static("prefer"),
            HeaderName::from_static("if-none-exist"),
            HeaderName::from_static(principal::PURPOSE_OF_USE),
            HeaderName::from_static(principal::BREAK_GLASS_REASON),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::CONTENT_LOCATION,
            header::LAST_MODIFIED,
            header::WWW_AUTHENTICATE,
            header::RETRY_AFTER,
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

/// A handler that panicked answers 500 with an OperationOutcome instead of dropping the
/// connection. The panic's message is not repeated: it may quote the request.
fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal.into_response()
}

/// A route's methods, with a FHIR 405 (and `Allow`) for any other method.
fn only(methods: MethodRouter<HttpState>, allow: &'static str) -> MethodRouter<HttpState> {
    methods.fallback(move |method: Method| async move {
        ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow: allow.to_owned(),
        }
    })
}

/// Bulk Data import over HTTP is not served (`intellihealth import` loads files): refused
/// plainly, not mistaken for a search of a type named `$import`.
async fn bulk_import_not_served() -> ApiError {
    ApiError::NotSupported(
        "Bulk Data $import is not supported by this server; load files with `intellihealth \
         import`; nothing was started"
            .into(),
    )
}

async fn unknown_route(method: Method) -> ApiError {
    ApiError::NotFound(format!(
        "no FHIR interaction at this path for {method}: see GET /fhir/metadata"
    ))
}

/// `Path` whose rejection is a FHIR OperationOutcome rather than plain text.
pub struct FhirPath<T>(pub T);

impl<S, T> FromRequestParts<S> for FhirPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| FhirPath(value))
            .map_err(|rejection| {
                ApiError::BadRequest(format!(
                    "the URL path is not valid: {}",
                    rejection.body_text()
                ))
            })
    }
}
