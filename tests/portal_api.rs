//! The patient portal's server side, black box, on both profiles (embedded; MongoDB, IPFS and
//! anvil): the embedded assets and their headers, the portal's OAuth client, the consent
//! workflow around grants (a practitioner's access request, the patient's grant signed by
//! eth-account and approval, the grants a practitioner holds, the grantee directory) and the
//! read-only ledger proxy a page checks anchors with. `serve --demo` (embedded): the demo
//! record and logins, sign-in through the portal's client with PKCE, and a second start that
//! adds nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use alloy::primitives::keccak256;
use common::actors::{Api, Started, actors, now, seed, start};
use common::wallet::{bind, draft, grant, wallet};
use common::{Profile, signal};
use serde_json::{Value, json};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn root_of(base: &str) -> String {
    base.trim_end_matches("/fhir").to_owned()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The assets: where they are, their types, the portal's security headers.
async fn assets_are_served_with_the_policy(root: &str) {
    let http = no_redirects();
    let redirect = http.get(format!("{root}/portal")).send().await.unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "/portal/");
    for (path, content_type) in [
        ("/portal/", "text/html; charset=utf-8"),
        ("/portal/app.js", "text/javascript; charset=utf-8"),
        ("/portal/app.css", "text/css; charset=utf-8"),
        ("/portal/favicon.ico", "image/x-icon"),
        ("/favicon.ico", "image/x-icon"),
    ] {
        let reply = http.get(format!("{root}{path}")).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        let headers = reply.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        let body = reply.bytes().await.unwrap();
        let built = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("portal/dist")
                .join(
                    path.rsplit('/')
                        .next()
                        .filter(|f| !f.is_empty())
                        .unwrap_or("index.html"),
                ),
        )
        .unwrap();
        assert_eq!(body.as_ref(), built.as_slice(), "{path} is the built file");
    }
    let missing = http
        .get(format!("{root}/portal/secrets.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// The authorization endpoint accepts the portal's client at this redirect URI: the login page,
/// not an error page.
async fn authorize_status(root: &str, redirect_uri: &str) -> (u16, String) {
    let reply = no_redirects()
        .get(format!("{root}/auth/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", "intellihealth-portal"),
            ("redirect_uri", redirect_uri),
            ("scope", "launch/patient openid fhirUser patient/*.cruds"),
            ("state", "s1"),
            ("aud", &format!("{root}/fhir")),
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (status, reply.text().await.unwrap_or_default())
}

async fn the_portal_client_is_registered(root: &str) {
    let port = root.rsplit(':').next().unwrap();
    for uri in [
        format!("http://127.0.0.1:{port}/portal/"),
        format!("http://localhost:{port}/portal/"),
    ] {
        let (status, page) = authorize_status(root, &uri).await;
        assert_eq!(status, 200, "{uri}: {page}");
        assert!(page.contains("name=\"session\""), "a login page for {uri}");
    }
    let (status, _) = authorize_status(root, "https://elsewhere.example/portal/").await;
    assert_eq!(status, 400, "no redirect to another site");
}

fn parameter(name: &str, value: Value) -> Value {
    let mut p = json!({"name": name});
    let key = match name {
        "patient" => "valueReference",
        "type" | "answer" => "valueCode",
        "days" => "valueInteger",
        _ => "valueString",
    };
    p[key] = value;
    p
}

fn parameters(values: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": values})
}

fn entries(bundle: &Value) -> Vec<Value> {
    assert_eq!(bundle["resourceType"], "Bundle", "{bundle}");
    assert_eq!(bundle["type"], "collection", "{bundle}");
    bundle["entry"]
        .as_array()
        .map(|e| e.iter().map(|x| x["resource"].clone()).collect())
        .unwrap_or_default()
}

fn has(resources: &[Value], resource_type: &str, id: &str) -> bool {
    resources
        .iter()
        .any(|r| r["resourceType"] == resource_type && r["id"] == id)
}

/// A practitioner's token from the trusted test issuer.
fn practitioner(started: &Started, id: &str) -> Api {
    let base = started.server.base_url.clone();
    let now = now() as i64;
    let token = started
        .issuer
        .mint(&json!({"sub": id, "aud": base, "exp": now + 3600,
        "iat": now, "nbf": now - 5, "scope": "user/*.rs", "client_id": "doctor-app",
        "fhirUser": format!("Practitioner/{id}")}));
    Api {
        base,
        token,
        extra: Vec::new(),
    }
}

/// A named confidential client, registered through the CLI (the running server's admin
/// socket), which the grantee directory lists.
fn register_named_client(started: &Started) {
    let mut env = started.profile.env();
    env.push((
        "INTELLIHEALTH_CLIENT_SECRET".into(),
        format!("lab-{:016x}", rand::random::<u64>()),
    ));
    common::succeeded(
        common::command(&env)
            .args([
                "clients",
                "add",
                "--id",
                "city-lab",
                "--name",
                "City Lab",
                "--scope",
                "system/*.rs",
            ])
            .arg("--data-dir")
            .arg(&started.server.data_dir),
    );
}

async fn the_consent_workflow_holds(started: &Started) {
    let a = actors(&started.server, &started.issuer, &started.outsider_secret).await;
    let (observation, _) = seed(&a.custodian).await;
    let other = practitioner(started, "doc2");
    for (path, body) in [
        (
            "Practitioner/doc1",
            json!({"resourceType": "Practitioner", "id": "doc1",
                "name": [{"family": "House", "given": ["Gregory"]}], "gender": "male"}),
        ),
        (
            "Practitioner/doc2",
            json!({"resourceType": "Practitioner", "id": "doc2",
                "name": [{"family": "Quinn", "given": ["Michaela"]}]}),
        ),
        (
            "Organization/org1",
            json!({"resourceType": "Organization", "id": "org1", "name": "Princeton Plainsboro"}),
        ),
    ] {
        let put = a.custodian.put(path, &body).await;
        assert_eq!(put.status, 201, "{}", put.body);
    }
    register_named_client(started);

    // The grantee directory: stored practitioners and organizations (id and name only), named
    // confidential clients, never the portal; filtered by part of the name, any case.
    let all = a.patient.get("Consent/$grantees").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let listed = entries(&all.body);
    assert!(has(&listed, "Practitioner", "doc1") && has(&listed, "Organization", "org1"));
    let house = listed.iter().find(|r| r["id"] == "doc1").unwrap();
    assert_eq!(house["name"][0]["family"], "House");
    assert!(house.get("gender").is_none(), "a name only: {house}");
    let client_ids: Vec<&str> = listed
        .iter()
        .filter(|r| r["resourceType"] == "Basic")
        .filter_map(|r| r["identifier"][0]["value"].as_str())
        .collect();
    assert!(client_ids.contains(&"city-lab"), "{client_ids:?}");
    assert!(!client_ids.contains(&"intellihealth-portal"));
    let named = entries(&a.patient.get("Consent/$grantees?name=HOU").await.body);
    assert!(has(&named, "Practitioner", "doc1"));
    assert!(!has(&named, "Practitioner", "doc2") && !has(&named, "Organization", "org1"));
    let lab = entries(&a.doctor.get("Consent/$grantees?name=city").await.body);
    assert_eq!(lab.len(), 1, "{lab:?}");
    assert_eq!(lab[0]["code"]["text"], "client");
    assert_eq!(
        lab[0]["identifier"][0]["system"],
        "urn:ietf:params:oauth:client-id"
    );
    let few = entries(&a.patient.get("Consent/$grantees?_count=1").await.body);
    assert_eq!(few.len(), 1);

    // The practitioner asks: a proposed Consent written by the server; asking again answers
    // the pending one; only a practitioner asks, only of a patient who exists.
    let ask = parameters(vec![
        parameter("patient", json!({"reference": "Patient/p1"})),
        parameter("type", json!("Observation")),
        parameter("days", json!(7)),
        parameter("reason", json!("Follow-up of your blood pressure")),
    ]);
    let asked = a.doctor.post("Consent/$request-access", &ask).await;
    assert_eq!(asked.status, 201, "{}", asked.body);
    let request = asked.body.clone();
    let request_id = request["id"].as_str().unwrap().to_owned();
    assert_eq!(request["status"], "proposed");
    assert_eq!(request["performer"][0]["reference"], "Practitioner/doc1");
    assert_eq!(
        request["provision"]["actor"][0]["reference"]["reference"],
        "Practitioner/doc1"
    );
    assert_eq!(request["provision"]["class"][0]["code"], "Observation");
    assert!(request["provision"]["period"]["end"].is_string());
    assert!(
        request
            .to_string()
            .contains("Follow-up of your blood pressure")
    );
    let again = a.doctor.post("Consent/$request-access", &ask).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["id"], request_id.as_str());
    let nobody = parameters(vec![parameter(
        "patient",
        json!({"reference": "Patient/nobody"}),
    )]);
    assert_eq!(
        a.doctor
            .post("Consent/$request-access", &nobody)
            .await
            .status,
        404
    );
    assert_eq!(
        a.patient.post("Consent/$request-access", &ask).await.status,
        403
    );
    let too_long = parameters(vec![
        parameter("patient", json!({"reference": "Patient/p1"})),
        parameter("days", json!(366)),
    ]);
    assert_eq!(
        a.doctor
            .post("Consent/$request-access", &too_long)
            .await
            .status,
        400
    );

    // The patient finds it with a normal search; it is no grant.
    let pending = a
        .patient
        .get("Consent?patient=Patient/p1&status=proposed")
        .await;
    assert_eq!(pending.status, 200, "{}", pending.body);
    assert!(
        pending.body["entry"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["resource"]["id"] == request_id.as_str())),
        "{}",
        pending.body
    );
    assert_eq!(a.doctor.get(&observation).await.status, 403);

    // Nobody but the patient answers.
    let decline = parameters(vec![parameter("answer", json!("declined"))]);
    let answer_path = format!("Consent/{request_id}/$answer");
    assert_eq!(a.doctor.post(&answer_path, &decline).await.status, 403);
    assert_eq!(other.post(&answer_path, &decline).await.status, 403);
    assert_eq!(a.outsider.post(&answer_path, &decline).await.status, 403);

    // The patient signs the grant (eth-account) and approves with it.
    let patient_wallet = wallet();
    let bound = bind(&a.patient, "p1", &patient_wallet).await;
    assert_eq!(bound.status, 200, "{}", bound.body);
    let unsigned = parameters(vec![
        parameter("answer", json!("approved")),
        parameter("grant", json!("ab".repeat(32))),
    ]);
    assert_eq!(
        a.patient.post(&answer_path, &unsigned).await.status,
        422,
        "a grant that is not on chain"
    );
    let to_doctor = draft(
        "p1",
        json!({"reference": "Practitioner/doc1"}),
        &["Observation"],
        now() + 7 * 86_400,
    );
    let (granted, _) = grant(&a.patient, &to_doctor, &patient_wallet).await;
    assert_eq!(granted.status, 201, "{}", granted.body);
    let grant_id = granted.body["id"].as_str().unwrap().to_owned();
    let approve = parameters(vec![
        parameter("answer", json!("approved")),
        parameter("grant", json!(grant_id)),
    ]);
    let approved = a.patient.post(&answer_path, &approve).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.body["status"], "inactive");
    assert!(
        approved
            .body
            .to_string()
            .contains(&format!("Consent/{grant_id}")),
        "{}",
        approved.body
    );
    assert_eq!(a.patient.post(&answer_path, &approve).await.status, 409);
    let stored = a.patient.get(&format!("Consent/{request_id}")).await;
    assert_eq!(stored.body["status"], "inactive");

    // The practitioner sees the grant and reads within it; another practitioner holds none.
    let mine = a.doctor.get("Consent/$granted-to-me").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    let held = entries(&mine.body);
    assert_eq!(held.len(), 1, "{}", mine.body);
    assert_eq!(held[0]["id"], grant_id.as_str());
    assert_eq!(held[0]["status"], "active");
    assert_eq!(a.doctor.get(&observation).await.status, 200);
    let theirs = other.get("Consent/$granted-to-me").await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    assert!(entries(&theirs.body).is_empty());
    // A grant to an app is not shown to a user of that app.
    assert!(entries(&a.patient.get("Consent/$granted-to-me").await.body).is_empty());

    // Declined: the request is rejected.
    let other_ask = parameters(vec![parameter(
        "patient",
        json!({"reference": "Patient/p1"}),
    )]);
    let second = other.post("Consent/$request-access", &other_ask).await;
    assert_eq!(second.status, 201, "{}", second.body);
    let second_id = second.body["id"].as_str().unwrap();
    let declined = a
        .patient
        .post(&format!("Consent/{second_id}/$answer"), &decline)
        .await;
    assert_eq!(declined.status, 200, "{}", declined.body);
    assert_eq!(declined.body["status"], "rejected");

    // The CapabilityStatement claims the operations.
    let metadata = a.patient.get("metadata").await.body;
    let consent = metadata["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Consent")
        .unwrap()
        .clone();
    for name in ["request-access", "answer", "granted-to-me", "grantees"] {
        assert!(
            consent["operation"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["name"] == name),
            "{name}"
        );
    }

    ledger_proxy_answers(&a.custodian).await;
}

async fn rpc(root: &str, body: &str) -> Value {
    let reply = reqwest::Client::new()
        .post(format!("{root}/ledger/rpc"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "JSON-RPC errors are HTTP 200");
    reply.json().await.unwrap()
}

fn valued<'a>(parameters: &'a Value, name: &str) -> Option<&'a str> {
    parameters["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["valueString"]
        .as_str()
}

/// The proxy: the chain id, the head, `anchoredAt(root)` of an anchored AuditEvent on the
/// anchor contract (without a token), and nothing else.
async fn ledger_proxy_answers(custodian: &Api) {
    let root = root_of(&custodian.base);
    let chain = rpc(&root, r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#).await;
    assert!(
        chain["result"].as_str().unwrap().starts_with("0x"),
        "{chain}"
    );
    assert_eq!(chain["id"], 1);
    let head = rpc(
        &root,
        r#"{"jsonrpc":"2.0","id":"h","method":"eth_blockNumber"}"#,
    )
    .await;
    assert!(head["result"].as_str().unwrap().starts_with("0x"), "{head}");

    let events = custodian.get("AuditEvent?_count=1").await;
    let event_id = events.body["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an AuditEvent: {}", events.body))
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let proof = loop {
        let reply = custodian
            .get(&format!("AuditEvent/{event_id}/$verify"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if valued(&reply.body, "status") == Some("anchored") {
            break reply.body;
        }
        assert!(Instant::now() < deadline, "never anchored");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let anchor = valued(&proof, "address").unwrap();
    let merkle_root = valued(&proof, "root").unwrap();
    let block: u64 = valued(&proof, "blockNumber").unwrap().parse().unwrap();
    let selector = &keccak256("anchoredAt(bytes32)")[..4];
    let data = format!(
        "0x{}{}",
        alloy::hex::encode(selector),
        merkle_root.trim_start_matches("0x")
    );
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "eth_call",
        "params": [{"to": anchor, "data": data}, "latest"]});
    let answered = rpc(&root, &call.to_string()).await;
    let result = answered["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{answered}"));
    let at = u64::from_str_radix(&result[result.len() - 16..], 16).unwrap();
    assert_eq!(at, block, "anchoredAt gives the block of the anchor");

    let elsewhere = json!({"jsonrpc": "2.0", "id": 8, "method": "eth_call",
        "params": [{"to": "0x0000000000000000000000000000000000000001", "data": data}, "latest"]});
    let refused = rpc(&root, &elsewhere.to_string()).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(refused.get("result").is_none());
    let sending = rpc(
        &root,
        r#"{"jsonrpc":"2.0","id":9,"method":"eth_sendRawTransaction","params":["0x00"]}"#,
    )
    .await;
    assert_eq!(sending["error"]["code"], -32601, "{sending}");
    assert_eq!(rpc(&root, "{not json").await["error"]["code"], -32700);
    let batch = rpc(
        &root,
        r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}]"#,
    )
    .await;
    assert_eq!(batch.as_array().map(Vec::len), Some(2), "{batch}");
    let too_many: Vec<Value> = (0..17)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "eth_chainId"}))
        .collect();
    let refused = rpc(&root, &Value::Array(too_many).to_string()).await;
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
}

async fn the_portal_server_side_works(started: &Started) {
    let root = root_of(&started.server.base_url);
    assets_are_served_with_the_policy(&root).await;
    the_portal_client_is_registered(&root).await;
    the_consent_workflow_holds(started).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_portal_api_on_the_embedded_profile() {
    let dir = tempfile::tempdir().unwrap();
    let started = start(dir.path(), &Profile::Embedded, &[]).await;
    the_portal_server_side_works(&started).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_portal_api_on_the_services_profile() {
    let dir = tempfile::tempdir().unwrap();
    let started = start(dir.path(), &Profile::services("portal"), &[]).await;
    the_portal_server_side_works(&started).await;
}

/// `serve --demo`, reading every line it prints (the tests' usual spawner reads only the first).
struct Demo {
    child: Child,
    lines: Receiver<String>,
}

impl Demo {
    fn start(dir: &Path) -> Demo {
        let mut child = common::command(&[])
            .args(["serve", "--listen", "127.0.0.1:0", "--demo", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo { child, lines }
    }

    /// The next `n` lines it prints (within 120 s: the first start seeds the record).
    fn lines(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.lines
                    .recv_timeout(Duration::from_secs(120))
                    .expect("the server prints its lines")
            })
            .collect()
    }

    fn stop(mut self) {
        signal(self.child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "stops on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (base URL, username → password) from a demo start's output.
fn read_demo(demo: &Demo) -> (String, Vec<(String, String)>) {
    let lines = demo.lines(5);
    let base = lines[0]
        .strip_prefix("intellihealth listening on ")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_owned();
    assert_eq!(
        lines[1],
        format!("intellihealth portal at {}/portal/", root_of(&base))
    );
    assert!(lines[2].starts_with("demo logins (kept in "), "{lines:?}");
    let logins = lines[3..]
        .iter()
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            (parts[0].to_owned(), parts[1].to_owned())
        })
        .collect();
    (base, logins)
}

async fn custodian_token(root: &str, credentials: &common::Credentials) -> Api {
    Api {
        base: format!("{root}/fhir"),
        token: common::backend_token(root, credentials).await,
        extra: Vec::new(),
    }
}

async fn total(api: &Api, query: &str) -> u64 {
    let reply = api.get(&format!("{query}&_total=accurate&_count=0")).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    reply.body["total"].as_u64().unwrap()
}

/// Signs `username` in through the portal's client (authorization code with PKCE, the login
/// and approval pages as a browser posts them).
async fn portal_sign_in(base: &str, username: &str, password: &str, scope: &str) -> Api {
    use conformance_tests::keys::AsymmetricClient;
    use conformance_tests::suites::smart::{
        Decision, SmartFixtures, UserLogin, authorized, discover,
    };
    let user = UserLogin {
        username: username.into(),
        password: password.into(),
        patient_id: String::new(),
    };
    let fixtures = SmartFixtures {
        app_client_id: "intellihealth-portal".into(),
        app_redirect_uri: format!("{}/portal/", root_of(base)),
        secret_client_id: String::new(),
        secret: String::new(),
        es384: AsymmetricClient::es384("unused"),
        rs384: AsymmetricClient::es384("unused"),
        patient_user: user.clone(),
        practitioner: user.clone(),
        other_patient_id: String::new(),
        admin_token: None,
        issuer: None,
    };
    let discovered = discover(base).await.unwrap();
    let decision = Decision {
        user: &user,
        approve: true,
        choose_patient: false,
    };
    let tokens = authorized(&discovered, &fixtures, scope, &[], &decision)
        .await
        .unwrap_or_else(|e| panic!("{username} signs in through the portal: {e}"));
    let tokens = serde_json::to_value(&tokens).unwrap();
    Api {
        base: base.to_owned(),
        token: tokens["access_token"].as_str().unwrap().to_owned(),
        extra: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_demo_seeds_a_record_and_logins_once() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = common::provision(dir.path(), &Profile::Embedded);
    let demo = Demo::start(dir.path());
    let (base, logins) = read_demo(&demo);
    let root = root_of(&base);
    let names: Vec<&str> = logins.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(names, ["demo-patient", "demo-doctor"]);
    let file = dir.path().join("demo-logins.txt");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let kept = std::fs::read_to_string(&file).unwrap();
    for (username, password) in &logins {
        assert!(kept.contains(&format!("{username} {password} ")), "{kept}");
    }

    // The record is sealed and indexed like any other: searchable by the custodian.
    let custodian = custodian_token(&root, &credentials).await;
    let patient = custodian.get("Patient/demo-patient").await;
    assert_eq!(patient.status, 200, "{}", patient.body);
    assert!(patient.body["birthDate"].is_string() && patient.body["gender"].is_string());
    let doctor = custodian.get("Practitioner/demo-doctor").await;
    assert_eq!(doctor.body["name"][0]["text"], "Dr. Amira Khan");
    let heart = "Observation?subject=Patient/demo-patient&code=http://loinc.org|8867-4";
    assert!(total(&custodian, heart).await >= 10);
    assert!(
        total(
            &custodian,
            "Observation?subject=Patient/demo-patient&code=85354-9"
        )
        .await
            >= 10
    );
    assert!(
        total(
            &custodian,
            "Observation?subject=Patient/demo-patient&code=4548-4"
        )
        .await
            >= 6
    );
    assert!(total(&custodian, "Encounter?subject=Patient/demo-patient").await >= 8);
    let observations = total(&custodian, "Observation?subject=Patient/demo-patient").await;

    // The demo patient signs in through the portal's client and reads her own record; the
    // demo doctor signs in and asks her for access.
    let password = |name: &str| logins.iter().find(|(u, _)| u == name).unwrap().1.clone();
    let elena = portal_sign_in(
        &base,
        "demo-patient",
        &password("demo-patient"),
        "launch/patient openid fhirUser patient/*.cruds",
    )
    .await;
    assert_eq!(total(&elena, heart).await, total(&custodian, heart).await);
    let khan = portal_sign_in(
        &base,
        "demo-doctor",
        &password("demo-doctor"),
        "openid fhirUser user/*.rs",
    )
    .await;
    let asked = khan
        .post(
            "Consent/$request-access",
            &parameters(vec![parameter(
                "patient",
                json!({"reference": "Patient/demo-patient"}),
            )]),
        )
        .await;
    assert_eq!(asked.status, 201, "{}", asked.body);
    demo.stop();

    // A second start with --demo adds nothing and prints the same logins.
    let again = Demo::start(dir.path());
    let (base, logins_again) = read_demo(&again);
    assert_eq!(logins_again, logins);
    let custodian = custodian_token(&root_of(&base), &credentials).await;
    let patient = custodian.get("Patient/demo-patient").await;
    assert_eq!(patient.body["meta"]["versionId"], "1");
    assert_eq!(
        total(&custodian, "Observation?subject=Patient/demo-patient").await,
        observations
    );
    again.stop();
}
