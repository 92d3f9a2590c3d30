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

    /// Sends only the head of a request whose declared body is `declared_length` bytes, plus
    /// `prefix` of that body, then reads the answer: how to see a server refuse a body by its
    /// length without first pushing the whole body at it (a client writing a body the server
    /// will not read gets a broken pipe instead of the answer). Plain `http://` bases only.
    pub async fn declared_body(
        &self,
        path: &str,
        content_type: &str,
        declared_length: usize,
        prefix: &[u8],
    ) -> Reply {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let failed = |message: String| Reply {
            status: StatusCode::from_u16(599).unwrap_or(StatusCode::BAD_GATEWAY),
            headers: HeaderMap::new(),
            body: message.into_bytes(),
        };
        let url = self.url(path);
        let Some(rest) = url.strip_prefix("http://") else {
            return failed(format!("{url}: only http:// is supported here"));
        };
        let (authority, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream = match tokio::net::TcpStream::connect(authority).await {
            Ok(stream) => stream,
            Err(e) => return failed(format!("connect {authority}: {e}")),
        };
        let mut head = format!(
            "POST {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\nContent-Length: {declared_length}\r\nConnection: close\r\n"
        );
        if let Some(token) = &self.bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(prefix).await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return failed(format!("no HTTP answer: {text}"));
        };
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok());
        let mut headers = HeaderMap::new();
        for line in lines {
            if let Some((name, value)) = line.split_once(':')
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.trim().as_bytes()),
                    HeaderValue::from_str(value.trim()),
                )
            {
                headers.insert(name, value);
            }
        }
        match status {
            Some(status) => Reply {
                status,
                headers,
                body: body.as_bytes().to_vec(),
            },
            None => failed(format!("no status line: {head}")),
        }
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
