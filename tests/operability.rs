//! Running the server as an operator does, against the real binary on the embedded profile:
//! adding a client and a user while it runs, what `/health` shows with and without the admin
//! token, `/metrics` read by the reference Prometheus parser, JSON logs carrying the W3C trace
//! id, a 12 MB body refused in a way Python's `urllib` can read, and a secret refused as a flag.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{Profile, Server, Spawned, command};

/// The Python of `scripts/python-clients` (fhirpy, fhirclient, prometheus-client).
fn python() -> String {
    std::env::var("INTELLIHEALTH_PYTHON").unwrap_or_else(|_| {
        panic!(
            "INTELLIHEALTH_PYTHON is not set: run scripts/test, which installs the Python clients"
        )
    })
}

/// Runs a Python script with arguments, returning its output.
fn run_python(interpreter: &str, script: &str, args: &[&str]) -> Output {
    std::process::Command::new(interpreter)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs")
}

fn cli(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(&[])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(env.iter().copied())
        .output()
        .expect("the CLI runs")
}

fn admin_env(token: &str) -> Vec<(String, String)> {
    vec![("INTELLIHEALTH_ADMIN_TOKEN".into(), token.into())]
}

fn start_with_env(dir: &Path, args: &[&str], env: &[(String, String)]) -> Server {
    let credentials = common::provision(dir, &Profile::Embedded);
    Spawned::with_env(dir, args, &Profile::Embedded, None, env)
        .with_credentials(credentials)
        .ready(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the server starts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_users_are_added_while_the_server_runs() {
    use conformance_tests::keys::AsymmetricClient;
    use conformance_tests::suites::smart::{SmartFixtures, UserLogin};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    // A backend client, its secret from the environment (never a flag).
    let added = cli(
        dir.path(),
        &["clients", "add", "--id", "late", "--scope", "system/*.rs"],
        &[("INTELLIHEALTH_CLIENT_SECRET", "late-secret-1")],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(String::from_utf8_lossy(&added.stdout).contains("client late saved"));
    let token_url = format!("{}/auth/token", server.base_url.trim_end_matches("/fhir"));
    let reply = reqwest::Client::new()
        .post(&token_url)
        .basic_auth("late", Some("late-secret-1"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply.status(),
        200,
        "the running server knows the new client"
    );

    // A patient user and a public app, then a real sign-in through the login page.
    let password = dir.path().join("pw");
    std::fs::write(&password, "late-password-1\n").unwrap();
    let user = cli(
        dir.path(),
        &[
            "users",
            "add",
            "--username",
            "late-user",
            "--password-file",
            &password.to_string_lossy(),
            "--fhir-user",
            "Patient/late-patient",
        ],
        &[],
    );
    assert!(
        user.status.success(),
        "{}",
        String::from_utf8_lossy(&user.stderr)
    );
    let app = cli(
        dir.path(),
        &[
            "clients",
            "add",
            "--id",
            "late-app",
            "--public",
            "--redirect-uri",
            "https://app.example/cb",
            "--scope",
            "openid fhirUser launch/patient patient/*.rs",
        ],
        &[],
    );
    assert!(app.status.success());
    let fixtures = SmartFixtures {
        app_client_id: "late-app".into(),
        app_redirect_uri: "https://app.example/cb".into(),
        secret_client_id: "late".into(),
        secret: "late-secret-1".into(),
        es384: AsymmetricClient::es384("unused-es"),
        rs384: AsymmetricClient::rs384("unused-rs"),
        patient_user: UserLogin {
            username: "late-user".into(),
            password: "late-password-1".into(),
            patient_id: "late-patient".into(),
        },
        practitioner: UserLogin {
            username: "nobody".into(),
            password: "x".into(),
            patient_id: "x".into(),
        },
        other_patient_id: "other".into(),
        admin_token: None,
        issuer: None,
    };
    let discovered = conformance_tests::suites::smart::discover(&server.base_url)
        .await
        .unwrap();
    let signed_in = conformance_tests::suites::smart::patient_tokens(
        &discovered,
        &fixtures,
        "openid fhirUser launch/patient patient/*.rs",
    )
    .await;
    assert!(signed_in.is_ok(), "the new user signs in: {signed_in:?}");

    // Keys rotate through the running server too.
    let rotated = cli(dir.path(), &["keys", "rotate"], &[]);
    assert!(rotated.status.success());
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("new signing key"));
    assert!(server.terminate().success());
}

#[test]
fn a_client_secret_is_never_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let refused = cli(
        dir.path(),
        &[
            "clients",
            "add",
            "--id",
            "x",
            "--secret",
            "s3cret",
            "--scope",
            "system/*.rs",
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_details_only_to_the_admin() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "admin-health-token";
    let server = start_with_env(dir.path(), &[], &admin_env(admin));
    let url = format!("{}/health", server.base_url.trim_end_matches("/fhir"));
    let http = reqwest::Client::new();
    let public = http.get(&url).send().await.unwrap().text().await.unwrap();
    let public: serde_json::Value = serde_json::from_str(&public).unwrap();
    assert_eq!(public["status"], "up");
    assert_eq!(
        public["components"]["index"],
        serde_json::json!({"status": "up"})
    );
    assert!(
        !public.to_string().contains(&*dir.path().to_string_lossy())
            && !public.to_string().contains("redb"),
        "no detail without the token: {public}"
    );
    let detailed: serde_json::Value = http
        .get(&url)
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        detailed["components"]["index"]["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{detailed}"
    );
    let wrong: serde_json::Value = http
        .get(&url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(wrong["components"]["index"].get("detail").is_none());
}

const PARSE_METRICS: &str = r#"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
url, token = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url)
if token:
    request.add_header("Authorization", "Bearer " + token)
text = urllib.request.urlopen(request).read().decode()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        print(f"{family.type} {sample.name} {labels} {sample.value}")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_the_prometheus_text_format() {
    let interpreter = python();
    let dir = tempfile::tempdir().unwrap();
    let admin = "admin-metrics-token";
    let (metrics_listen, _) = common::fixed_address();
    let server = start_with_env(
        dir.path(),
        &["--metrics-listen", &metrics_listen],
        &admin_env(admin),
    );
    let client = common::client(&server).await;
    let created = client
        .post_json("Patient", &conformance_tests::suites::patient("Metrics"))
        .send()
        .await;
    let location = created.header("location").unwrap();
    let path = location
        .split("/fhir/")
        .nth(1)
        .unwrap()
        .split("/_history")
        .next()
        .unwrap();
    assert_eq!(client.get(path).send().await.status, 200);

    let root = server.base_url.trim_end_matches("/fhir").to_owned();
    // Without the token, the FHIR listener refuses.
    let refused = reqwest::get(format!("{root}/metrics")).await.unwrap();
    assert_eq!(refused.status(), 401);
    for (url, token) in [
        (format!("{root}/metrics"), admin),
        (format!("http://{metrics_listen}/metrics"), ""),
    ] {
        let parsed = run_python(&interpreter, PARSE_METRICS, &[&url, token]);
        assert!(
            parsed.status.success(),
            "the reference parser refused {url}: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        let samples = String::from_utf8_lossy(&parsed.stdout);
        let has = |needle: &str| samples.lines().any(|l| l.contains(needle));
        assert!(
            has(
                "counter intellihealth_http_requests_total interaction=read,resource_type=Patient,status=200 "
            ),
            "{samples}"
        );
        assert!(has(
            "histogram intellihealth_http_request_duration_seconds_bucket interaction=create,le=+Inf"
        ));
        assert!(has(
            "intellihealth_backend_call_duration_seconds_count component=index,operation=commit"
        ));
        assert!(has(
            "intellihealth_tokens_issued_total grant_type=client_credentials"
        ));
        assert!(has("gauge intellihealth_process_resident_memory_bytes"));
        assert!(
            !samples.contains(path.split('/').nth(1).unwrap()),
            "no ids in metrics"
        );
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_trace_id_and_no_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let credentials = common::provision(dir.path(), &Profile::Embedded);
    let env = [
        ("INTELLIHEALTH_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("RUST_LOG".to_owned(), "intellihealth=debug".to_owned()),
    ];
    let server = Spawned::with_env(dir.path(), &[], &Profile::Embedded, Some(&log), &env)
        .with_credentials(credentials)
        .ready(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the server starts"));
    let client = common::client(&server).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let read = client
        .get("Patient/traced-patient-id")
        .header("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await;
    assert_eq!(read.status, 404);
    assert!(server.terminate().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let traced = lines
        .iter()
        .find(|l| l["span"]["trace_id"] == trace_id)
        .unwrap_or_else(|| panic!("no line carries the trace id:\n{text}"));
    assert_eq!(traced["fields"]["status"], 404);
    assert_eq!(traced["fields"]["route"], "/fhir/{type}/{id}");
    assert!(
        !text.contains("traced-patient-id"),
        "ids from URLs never reach the log"
    );
}

const PUT_12_MB: &str = r#"
import json, sys, urllib.request, urllib.error
url, token = sys.argv[1], sys.argv[2]
body = b'{"resourceType":"Patient","id":"big","text":{"status":"generated","div":"' + b"x" * (12 * 1024 * 1024) + b'"}}'
request = urllib.request.Request(url, data=body, method="PUT")
request.add_header("Content-Type", "application/fhir+json")
request.add_header("Authorization", "Bearer " + token)
try:
    urllib.request.urlopen(request)
    print("accepted")
except urllib.error.HTTPError as e:
    outcome = json.loads(e.read())
    print(e.code, outcome["resourceType"], outcome["issue"][0]["code"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_urllib_reads_the_413_of_a_12_mb_put() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = server.token().await;
    let url = format!("{}/Patient/big", server.base_url);
    let interpreter = python();
    let sent = run_python(&interpreter, PUT_12_MB, &[&url, &token]);
    assert!(
        sent.status.success(),
        "urllib saw no answer: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&sent.stdout).trim(),
        "413 OperationOutcome too-costly"
    );
    // Nothing was stored, and the server still answers.
    let client = common::client(&server).await;
    assert_eq!(client.get("Patient/big").send().await.status, 404);
    assert!(server.terminate().success());
}
