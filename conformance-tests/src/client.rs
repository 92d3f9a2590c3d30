//! A thin HTTP client for a FHIR server under test: base URL, optional bearer token, and
//! replies reduced to what the cases look at. Uses only public HTTP; knows nothing of the
//! server's internals.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};

pub const FHIR_JSON: &str = "application/fhir+json";

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    bearer: Option<String>,
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Whether the body is an OperationOutcome with at least one issue.
    pub fn is_outcome(&self) -> bool {
        self.json().is_some_and(|v| {
            v["resourceType"] == "OperationOutcome"
                && v["issue"].as_array().is_some_and(|i| !i.is_empty())
        })
    }

    /// A one-line summary for a failed case: status and the start of the body.
    pub fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(300)
            .collect();
        format!("{} {}", self.status.as_u16(), body)
    }
}

/// A request being built.
pub struct Request<'a> {
    client: &'a Client,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Client {
    pub fn new(base: &str, bearer: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .expect("a reqwest client with a timeout");
        Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            bearer,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> Request<'_> {
        Request {
            client: self,
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn get(&self, path: &str) -> Request<'_> {
        self.request(Method::GET, path)
    }

    pub fn delete(&self, path: &str) -> Request<'_> {
        self.request(Method::DELETE, path)
    }

    /// POST of JSON with the FHIR content type.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Request<'_> {
        self.request(Method::POST, path)
            .header("content-type", FHIR_JSON)
            .body(serde_json::to_vec(body).unwrap_or_default())
    }

    /// PUT of JSON with the FHIR content type.
    pub fn put_json(&self, path: &str, body: &serde_json::Value) -> Request<'_> {
        self.request(Method::PUT, path)
            .header("content-type", FHIR_JSON)
            .body(serde_json::to_vec(body).unwrap_or_default())
    }

    /// The full URL of a path relative to the base (absolute URLs pass through).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }
}

impl Request<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    pub async fn send(self) -> Reply {
        let mut request = self
            .client
            .http
            .request(self.method.clone(), self.client.url(&self.path));
        if let Some(token) = &self.client.bearer {
            request = request.bearer_auth(token);
        }
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                request = request.header(name, value);
            }
        }
        if let Some(body) = self.body {
            request = request.body(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                let body = response
                    .bytes()
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                Reply {
                    status,
                    headers,
                    body,
                }
            }
            Err(e) => Reply {
                // A transport failure is reported as a status no server sends.
                status: StatusCode::from_u16(599).unwrap_or(StatusCode::BAD_GATEWAY),
                headers: HeaderMap::new(),
                body: format!("transport error: {e}").into_bytes(),
            },
        }
    }
}
