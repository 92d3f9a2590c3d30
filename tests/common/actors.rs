//! The people of the black-box scenarios and their HTTP client: a custodian (the EHR of
//! record, a backend client of the server), an outsider (another backend client), a patient and
//! a practitioner (signed in at a trusted test issuer, so their tokens carry `fhirUser`), and
//! the server they share, with the patient's record seeded by the custodian.

use std::path::Path;
use std::time::{Duration, Instant};

use conformance_tests::keys::TestIssuer;
use serde_json::{Value, json};

use super::{Profile, Server, Spawned, fixed_address, provision};

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub extra: Vec<(&'static str, String)>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Api {
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Reply {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}/{path}", self.base))
            .bearer_auth(&self.token)
            .header("accept", "application/fhir+json");
        for (name, value) in &self.extra {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
        }
        let reply = request.send().await.expect("the server answers");
        let status = reply.status().as_u16();
        let body = reply.json().await.unwrap_or(Value::Null);
        Reply { status, body }
    }
    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
    pub fn with(&self, name: &'static str, value: &str) -> Api {
        let mut api = self.clone();
        api.extra.push((name, value.to_owned()));
        api
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits (at most 10 s) until `path` answers `status` for `api`.
pub async fn eventually(api: &Api, path: &str, status: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if api.get(path).await.status == status {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Actors {
    pub custodian: Api,
    pub outsider: Api,
    pub patient: Api,
    pub doctor: Api,
}

pub async fn actors(server: &Server, issuer: &TestIssuer, outsider_secret: &str) -> Actors {
    let base = server.base_url.clone();
    let api = |token: String| Api {
        base: base.clone(),
        token,
        extra: Vec::new(),
    };
    let token_url = format!("{}/auth/token", base.trim_end_matches("/fhir"));
    let outsider: Value = reqwest::Client::new()
        .post(&token_url)
        .basic_auth("outsider", Some(outsider_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = now() as i64;
    let user = |sub: &str, fhir_user: &str, scope: &str, client: &str| {
        let mut claims = json!({"sub": sub, "aud": base, "exp": now + 3600, "iat": now,
            "nbf": now - 5, "scope": scope, "client_id": client, "fhirUser": fhir_user});
        if let Some(patient) = fhir_user.strip_prefix("Patient/") {
            claims["patient"] = json!(patient);
        }
        issuer.mint(&claims)
    };
    Actors {
        custodian: api(server.token().await),
        outsider: api(outsider["access_token"].as_str().unwrap().to_owned()),
        patient: api(user("p1", "Patient/p1", "patient/*.cruds", "portal")),
        doctor: api(user("doc1", "Practitioner/doc1", "user/*.rs", "doctor-app")),
    }
}

/// The patient's data, written by the custodian: Patient p1 and p2, an Observation and a
/// Condition of p1, a CodeSystem (in no one's record). Returns (observation, condition).
pub async fn seed(custodian: &Api) -> (String, String) {
    for id in ["p1", "p2"] {
        let created = custodian
            .put(
                &format!("Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id}),
            )
            .await;
        assert!(created.status == 201, "{}", created.body);
    }
    let observation = custodian
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                "subject": {"reference": "Patient/p1"}}),
        )
        .await;
    let condition = custodian
        .post(
            "Condition",
            &json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                "code": {"text": "asthma"}}),
        )
        .await;
    let code_system = custodian
        .put(
            "CodeSystem/cs1",
            &json!({"resourceType": "CodeSystem", "id": "cs1", "status": "active",
                "content": "not-present", "url": "https://example.org/cs1"}),
        )
        .await;
    assert_eq!(code_system.status, 201, "{}", code_system.body);
    (
        format!("Observation/{}", observation.body["id"].as_str().unwrap()),
        format!("Condition/{}", condition.body["id"].as_str().unwrap()),
    )
}

pub struct Started {
    pub server: Server,
    pub issuer: std::sync::Arc<TestIssuer>,
    pub outsider_secret: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub profile: Profile,
}

/// A server killed with SIGKILL, with what it takes to start it again on the same data.
pub struct Killed {
    profile: Profile,
    issuer: std::sync::Arc<TestIssuer>,
    outsider_secret: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    credentials: super::Credentials,
}

impl Started {
    /// `kill -9` of the server.
    pub fn kill(self) -> Killed {
        let credentials = self.server.credentials().clone();
        self.server.kill();
        Killed {
            profile: self.profile,
            issuer: self.issuer,
            outsider_secret: self.outsider_secret,
            args: self.args,
            env: self.env,
            credentials,
        }
    }
}

impl Killed {
    /// Starts the server again on `dir`, as it was started.
    pub fn restart(self, dir: &Path) -> Started {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let server = Spawned::with_env(dir, &args, &self.profile, None, &self.env)
            .with_credentials(self.credentials)
            .ready(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server restarts"));
        Started {
            server,
            issuer: self.issuer,
            outsider_secret: self.outsider_secret,
            args: self.args,
            env: self.env,
            profile: self.profile,
        }
    }
}

pub async fn start(dir: &Path, profile: &Profile, ledger_env: &[(String, String)]) -> Started {
    let credentials = provision(dir, profile);
    let outsider_secret = format!("outsider-{:016x}", rand::random::<u64>());
    let secret_file = dir.join("outsider.secret");
    std::fs::write(&secret_file, &outsider_secret).unwrap();
    super::succeeded(
        super::command(&profile.env())
            .args([
                "clients",
                "add",
                "--id",
                "outsider",
                "--scope",
                "system/*.rs",
            ])
            .arg("--secret-file")
            .arg(&secret_file)
            .arg("--data-dir")
            .arg(dir),
    );
    let issuer = std::sync::Arc::new(TestIssuer::start().await);
    let (listen, base_url) = fixed_address();
    let args: Vec<String> = [
        "--listen",
        &listen,
        "--base-url",
        &base_url,
        "--consent-stale-after-secs",
        "3",
        "--block-interval-ms",
        "200",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut env = vec![(
        "INTELLIHEALTH_TRUSTED_ISSUERS".to_owned(),
        issuer.url.clone(),
    )];
    env.extend_from_slice(ledger_env);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Spawned::with_env(dir, &arg_refs, profile, None, &env)
        .with_credentials(credentials)
        .ready(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the server starts"));
    Started {
        server,
        issuer,
        outsider_secret,
        args,
        env,
        profile: profile.clone(),
    }
}
