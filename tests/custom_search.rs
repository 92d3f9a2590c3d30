//! Custom search parameters end to end, on the real binary (embedded profile): one from a file
//! (`--search-parameters`), one written as a `SearchParameter` resource, the
//! CapabilityStatement listing them, `$reindex` (admin token) making resources written before
//! a parameter existed findable by it, and `intellihealth reindex` both through a running
//! server's admin socket and offline, where a second run has nothing left to do.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Profile, Server, Spawned, command};
use serde_json::{Value, json};

const EYE_COLOUR: &str = "http://example.org/fhir/StructureDefinition/eye-colour";

fn nickname_parameter(expression: &str) -> Value {
    json!({
        "resourceType": "SearchParameter",
        "url": "http://example.org/fhir/SearchParameter/Patient-nickname",
        "name": "nickname",
        "status": "active",
        "description": "A patient's nickname",
        "code": "nickname",
        "base": ["Patient"],
        "type": "string",
        "expression": expression,
    })
}

fn eye_colour_parameter() -> Value {
    json!({
        "resourceType": "SearchParameter",
        "url": "http://example.org/fhir/SearchParameter/Patient-eye-colour",
        "name": "eye-colour",
        "status": "active",
        "description": "The colour of a patient's eyes",
        "code": "eye-colour",
        "base": ["Patient"],
        "type": "token",
        "expression": format!("Patient.extension.where(url = '{EYE_COLOUR}').value"),
    })
}

fn patient(nickname: &str, eyes: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{"family": "Custom"}, {"use": "nickname", "given": [nickname]}],
        "extension": [{"url": EYE_COLOUR, "valueCode": eyes}],
    })
}

fn write_parameters(dir: &Path, parameter: &Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("nickname.json"),
        serde_json::to_vec(parameter).unwrap(),
    )
    .unwrap();
}

fn cli(data_dir: &Path, args: &[&str]) -> Output {
    command(&[])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("the CLI runs")
}

fn start(dir: &Path, parameters: &Path, admin: &str) -> Server {
    let credentials = common::provision(dir, &Profile::Embedded);
    let parameters = parameters.to_str().unwrap();
    Spawned::with_env(
        dir,
        &["--search-parameters", parameters],
        &Profile::Embedded,
        None,
        &[("INTELLIHEALTH_ADMIN_TOKEN".into(), admin.into())],
    )
    .with_credentials(credentials)
    .ready(Duration::from_secs(60))
    .unwrap_or_else(|_| panic!("the server starts"))
}

/// The ids of a searchset's matches, for a strict search (an unknown parameter is a 400).
async fn search(c: &conformance_tests::client::Client, query: &str) -> (u16, Vec<String>) {
    let reply = c
        .get(query)
        .header("Prefer", "handling=strict")
        .send()
        .await;
    let ids = reply.json().unwrap_or_default()["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (reply.status.as_u16(), ids)
}

/// The Patient search parameters the CapabilityStatement claims.
async fn claimed(c: &conformance_tests::client::Client) -> Vec<String> {
    let statement = c.get("metadata").send().await.json().unwrap_or_default();
    statement["rest"][0]["resource"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["type"] == "Patient")
        .flat_map(|r| r["searchParam"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// `$reindex`'s status as (running, stale).
async fn reindex_status(base: &str, admin: &str) -> (bool, i64) {
    let reply: Value = reqwest::Client::new()
        .get(format!("{base}/$reindex"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let value = |name: &str| {
        reply["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    (
        value("running")["valueBoolean"].as_bool().unwrap_or(true),
        value("stale")["valueInteger"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_parameters_are_searchable_once_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let parameters = dir.path().join("parameters");
    write_parameters(
        &parameters,
        &nickname_parameter("Patient.name.where(use = 'nickname').given"),
    );
    let admin = format!("admin-{:016x}", rand::random::<u64>());
    let server = start(&data, &parameters, &admin);
    let c = common::client(&server).await;

    // A parameter from a file: indexed from the first write.
    let bobby = c
        .post_json("Patient", &patient("Bobby", "blue"))
        .send()
        .await;
    assert_eq!(bobby.status, 201, "{}", bobby.summary());
    let bobby = bobby.json().unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        search(&c, "Patient?nickname=bob").await,
        (200, vec![bobby.clone()])
    );
    assert_eq!(search(&c, "Patient?nickname=rob").await, (200, vec![]));
    let names = claimed(&c).await;
    assert!(names.contains(&"nickname".to_owned()), "{names:?}");
    assert!(!names.contains(&"eye-colour".to_owned()), "{names:?}");
    assert_eq!(search(&c, "Patient?eye-colour=blue").await.0, 400);

    // A parameter written as a resource: known at once, claimed, and used by new writes.
    let written = c
        .post_json("SearchParameter", &eye_colour_parameter())
        .send()
        .await;
    assert_eq!(written.status, 201, "{}", written.summary());
    let parameter_id = written.json().unwrap()["id"].as_str().unwrap().to_owned();
    assert!(claimed(&c).await.contains(&"eye-colour".to_owned()));
    let green = c
        .post_json("Patient", &patient("Greg", "green"))
        .send()
        .await;
    let green = green.json().unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        search(&c, "Patient?eye-colour=green").await,
        (200, vec![green.clone()])
    );

    // `$reindex` needs the admin token; with it, the patient written before the parameter
    // existed becomes findable by it.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/$reindex", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let started = reqwest::Client::new()
        .post(format!("{}/$reindex", server.base_url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (running, stale) = reindex_status(&server.base_url, &admin).await;
        if !running && stale == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reindexing did not finish: {stale} stale"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        search(&c, "Patient?eye-colour=blue").await,
        (200, vec![bobby.clone()])
    );
    assert_eq!(
        search(&c, "Patient?eye-colour:not=blue&family=Custom").await,
        (200, vec![green.clone()])
    );

    // The CLI reaches a running server through its admin socket.
    let through_socket = cli(&data, &["reindex"]);
    assert!(
        through_socket.status.success(),
        "{}",
        String::from_utf8_lossy(&through_socket.stderr)
    );
    assert!(String::from_utf8_lossy(&through_socket.stdout).contains("reindexed 0 resources"));

    // Deleting the SearchParameter takes the parameter away.
    let deleted = c
        .delete(&format!("SearchParameter/{parameter_id}"))
        .send()
        .await;
    assert!(deleted.status == 200 || deleted.status == 204);
    assert_eq!(search(&c, "Patient?eye-colour=blue").await.0, 400);
    assert!(!claimed(&c).await.contains(&"eye-colour".to_owned()));
    let credentials = server.credentials().clone();
    assert_eq!(server.terminate().code(), Some(0));

    // Offline: the file's parameter changes meaning; the CLI reindexes what it must, with
    // progress, and a second run finds nothing left.
    write_parameters(&parameters, &nickname_parameter("Patient.name.family"));
    let offline = cli(
        &data,
        &[
            "reindex",
            "--search-parameters",
            parameters.to_str().unwrap(),
        ],
    );
    let out = String::from_utf8_lossy(&offline.stdout);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let reindexed: usize = out
        .trim()
        .strip_prefix("reindexed ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {out}"));
    assert!(reindexed >= 2, "{out}");
    assert!(String::from_utf8_lossy(&offline.stderr).contains("reindexing"));
    let again = cli(
        &data,
        &[
            "reindex",
            "--search-parameters",
            parameters.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("reindexed 0 resources"));

    let server = Spawned::new_with(
        &data,
        &["--search-parameters", parameters.to_str().unwrap()],
        credentials,
    );
    let c = common::client(&server).await;
    let (status, mut found) = search(&c, "Patient?nickname=custom").await;
    found.sort();
    let mut both = vec![bobby, green];
    both.sort();
    assert_eq!((status, found), (200, both));
    assert_eq!(search(&c, "Patient?nickname=bob").await, (200, vec![]));
}
