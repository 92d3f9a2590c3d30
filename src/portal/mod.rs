//! The patient portal as the server serves it: its built assets, embedded in the binary, the
//! OAuth client it signs in as, and the demo record (`demo`) behind `serve --demo`.
//!
//! The portal is a SMART on FHIR app of this very server: a public client (`CLIENT_ID`,
//! authorization code with PKCE, no secret) whose redirect URIs are this server's own
//! `/portal/`, registered again at every start (`client`), so the addresses it may return to
//! follow the configured base URL and the port actually listened on. Its pages talk only to
//! this origin: the Content-Security-Policy every asset is served with allows no other host
//! (the chain is reached through the server's read-only proxy, `POST /ledger/rpc`).
//!
//! Owns: the assets (built by the front-end's pinned esbuild script into `portal/dist/`,
//! committed, so `cargo build` needs no Node), the portal client's registration, the demo
//! seed. Must not know HTTP (the routes are `http::portal`'s); tokens live only in the page's
//! memory, never in anything served or stored here.

pub mod demo;

use std::net::SocketAddr;

use crate::auth::accounts::{Client, ClientAuth};

/// The portal's OAuth client id.
pub const CLIENT_ID: &str = "intellihealth-portal";
/// The name the approval page shows.
pub const CLIENT_NAME: &str = "IntelliHealth patient portal";
/// What the portal may ask for: a patient's own record (read and write, to sign grants into
/// it), a practitioner's reads (within the grants they hold), and who the user is.
pub const CLIENT_SCOPE: &str = "launch/patient openid fhirUser patient/*.cruds user/*.rs";

/// The policy every portal response carries: scripts, styles, images and fetches from this
/// origin only (images may be inline `data:` URLs, for charts), no forms to elsewhere, no
/// framing (no clickjacking of the grant and revoke buttons), no `<base>` rewriting.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// What the portal room can fail with. `http::outcome` maps it to a status.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// No asset by that name (404).
    #[error("the portal has no file {0}")]
    NotFound(String),
    /// Seeding the demo record failed at start-up.
    #[error("the demo could not be seeded: {0}")]
    Demo(String),
}

/// One embedded file.
pub struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

/// The file `$name` of the front-end's build output, committed in `portal/dist/` (named once
/// here): rebuilding the server after `scripts/build-portal` embeds the new files (rustc
/// tracks them).
macro_rules! built {
    ($name:literal, $content_type:literal) => {
        Asset {
            bytes: include_bytes!(concat!("../../portal/dist/", $name)),
            content_type: $content_type,
        }
    };
}

const INDEX: Asset = built!("index.html", "text/html; charset=utf-8");
const SCRIPT: Asset = built!("app.js", "text/javascript; charset=utf-8");
const STYLE: Asset = built!("app.css", "text/css; charset=utf-8");
const FAVICON: Asset = built!("favicon.ico", "image/x-icon");

/// The page itself (`/portal/`).
pub fn index() -> &'static Asset {
    &INDEX
}

/// A file of the portal by its name under `/portal/` (`app.js`, `app.css`, `favicon.ico`).
/// Only these exist: nothing is read from disk at run time.
pub fn asset(name: &str) -> Result<&'static Asset, PortalError> {
    match name {
        "index.html" | "" => Ok(&INDEX),
        "app.js" => Ok(&SCRIPT),
        "app.css" => Ok(&STYLE),
        "favicon.ico" => Ok(&FAVICON),
        other => Err(PortalError::NotFound(
            other.chars().take(64).collect::<String>(),
        )),
    }
}

/// The portal's client registration for a server with `base_url` (its configured public FHIR
/// base, if any) listening on `listening`: redirect URIs `{origin}/portal/` for the base URL's
/// origin and for the listening address as a browser on this host names it.
pub fn client(base_url: Option<&str>, listening: SocketAddr) -> Client {
    let mut origins = Vec::new();
    if let Some(origin) = base_url.and_then(origin_of) {
        origins.push(origin);
    }
    let port = listening.port();
    origins.push(format!("http://127.0.0.1:{port}"));
    origins.push(format!("http://localhost:{port}"));
    let ip = listening.ip();
    // Bound to one particular address (not every interface, not loopback): the browser on
    // another machine names it so.
    if !ip.is_unspecified() && !ip.is_loopback() {
        origins.push(format!("http://{listening}"));
    }
    let mut redirect_uris: Vec<String> = Vec::new();
    for origin in origins {
        let uri = format!("{origin}/portal/");
        if !redirect_uris.contains(&uri) {
            redirect_uris.push(uri);
        }
    }
    Client {
        client_id: CLIENT_ID.to_owned(),
        // A page's code is public: PKCE is its only proof, as for any browser app.
        auth: ClientAuth::None,
        scope: CLIENT_SCOPE.to_owned(),
        redirect_uris,
        name: Some(CLIENT_NAME.to_owned()),
        // Never: a portal user reads what their own grants and record allow, nothing more.
        custodian: false,
    }
}

/// Where the portal is for a server listening on `listening` with `base_url`: the base URL's
/// origin, or the listening address (loopback when it listens on every interface).
pub fn url(base_url: Option<&str>, listening: SocketAddr) -> String {
    let origin = base_url.and_then(origin_of).unwrap_or_else(|| {
        if listening.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", listening.port())
        } else {
            format!("http://{listening}")
        }
    });
    format!("{origin}/portal/")
}

/// `https://host:port` of `https://host:port/fhir`.
fn origin_of(url: &str) -> Option<String> {
    let scheme_end = url.find("://")? + 3;
    let host_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    (host_end > scheme_end).then(|| url[..host_end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_returns_only_to_this_servers_portal() {
        let listening: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let client = client(Some("https://ehr.example.org/fhir"), listening);
        assert_eq!(client.client_id, CLIENT_ID);
        assert!(client.is_public() && !client.custodian);
        assert_eq!(
            client.redirect_uris,
            [
                "https://ehr.example.org/portal/",
                "http://127.0.0.1:8080/portal/",
                "http://localhost:8080/portal/",
            ]
        );
        let specific: SocketAddr = "10.1.2.3:9000".parse().unwrap();
        assert!(
            super::client(None, specific)
                .redirect_uris
                .contains(&"http://10.1.2.3:9000/portal/".to_owned())
        );
        assert_eq!(url(None, listening), "http://127.0.0.1:8080/portal/");
        assert_eq!(
            url(Some("https://ehr.example.org/fhir"), listening),
            "https://ehr.example.org/portal/"
        );
    }

    #[test]
    fn only_the_built_files_are_served() {
        assert_eq!(asset("app.js").unwrap().content_type, SCRIPT.content_type);
        assert!(asset("../Cargo.toml").is_err());
        assert!(asset("app.js.map").is_err());
    }
}
