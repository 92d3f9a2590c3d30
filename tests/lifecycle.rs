//! The server's life: a restart keeps everything, SIGTERM drains in-flight requests and every
//! acknowledged write survives it, and what reaches the disk is ciphertext.

mod common;

use std::path::Path;

use common::{Server, client};
use futures::StreamExt;
use serde_json::{Value, json};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Lifecycle"]}], "birthDate": "1980-02-29"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_version_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let created = c
        .post_json("Patient", &patient("Restart"))
        .send()
        .await
        .json()
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let mut changed = created.clone();
    changed["active"] = json!(true);
    let updated = c
        .put_json(&format!("Patient/{id}"), &changed)
        .send()
        .await
        .json()
        .unwrap();
    let doomed = c
        .post_json("Patient", &patient("Doomed"))
        .send()
        .await
        .json()
        .unwrap();
    let doomed_id = doomed["id"].as_str().unwrap().to_owned();
    c.delete(&format!("Patient/{doomed_id}")).send().await;
    assert!(server.terminate().success());

    let key = dir.path().join("master.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the generated master key is private");

    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    assert_eq!(
        c.get(&format!("Patient/{id}")).send().await.json().unwrap(),
        updated
    );
    assert_eq!(
        c.get(&format!("Patient/{id}/_history/1"))
            .send()
            .await
            .json()
            .unwrap(),
        created
    );
    assert_eq!(
        c.get(&format!("Patient/{doomed_id}")).send().await.status,
        410
    );
    let history = c
        .get(&format!("Patient/{id}/_history"))
        .send()
        .await
        .json()
        .unwrap();
    assert_eq!(history["entry"].as_array().unwrap().len(), 2);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_master_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        client(&server)
            .await
            .post_json("Patient", &patient("Keyed"))
            .send()
            .await
            .status,
        201
    );
    assert!(server.terminate().success());
    let output = common::command(&[("INTELLIHEALTH_MASTER_KEY".into(), "11".repeat(32))])
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "it must not serve with the wrong key"
    );
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("master key is not the one"),
        "it says why: {said}"
    );
    assert!(output.stdout.is_empty(), "it never listened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_keep_old_tokens_valid_and_sign_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Tokens name the base URL as issuer and audience: keep it across the restart's new port.
    let fixed = ["--base-url", "http://intellihealth.test/fhir"];
    let server = Server::start(dir.path(), &fixed);
    let old_token = server.token().await;
    let jwks_url = format!("{}/auth/jwks", server.base_url.trim_end_matches("/fhir"));
    let before: Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
    let credentials = server.credentials().clone();
    assert!(server.terminate().success());
    common::succeeded(
        common::command(&[])
            .args(["keys", "rotate", "--data-dir"])
            .arg(dir.path()),
    );

    let server = common::Spawned::new_with(dir.path(), &fixed, credentials);
    let after: Value = reqwest::get(format!(
        "{}/auth/jwks",
        server.base_url.trim_end_matches("/fhir")
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(before["keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        after["keys"].as_array().unwrap().len(),
        2,
        "the old key stays published"
    );
    let kid_of = |token: &str| jsonwebtoken_kid(token);
    let old = conformance_tests::client::Client::new(&server.base_url, Some(old_token.clone()));
    assert_eq!(old.get("metadata").send().await.status, 200);
    let still_valid = old.post_json("Patient", &patient("Rotated")).send().await;
    assert_eq!(
        still_valid.status, 201,
        "a token signed before the rotation still works"
    );
    let new_token = server.token().await;
    assert_ne!(
        kid_of(&new_token),
        kid_of(&old_token),
        "new tokens are signed with the new key"
    );
    assert!(server.terminate().success());
}

/// The `kid` of a JWT's header.
fn jsonwebtoken_kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: Value = serde_json::from_slice(&bytes).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_writes_and_every_acknowledged_one_survives() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let pid = server.pid();
    let mut writes: futures::stream::FuturesUnordered<_> = (0..200)
        .map(|n| {
            let c = c.clone();
            async move {
                c.post_json("Patient", &patient(&format!("Drain{n}")))
                    .send()
                    .await
            }
        })
        .collect();
    // The signal comes as soon as the first write is answered, with the rest in flight
    // (a fixed delay would race the machine's speed).
    let mut replies = vec![writes.next().await.expect("200 writes")];
    // SAFETY: signalling our own child by its PID.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    while let Some(reply) = writes.next().await {
        replies.push(reply);
    }
    assert!(server.terminate().success(), "a clean exit after draining");
    let acknowledged: Vec<Value> = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.json().unwrap())
        .collect();
    assert!(
        !acknowledged.is_empty(),
        "some writes completed before the signal: {:?}",
        replies
            .iter()
            .take(5)
            .map(|r| r.summary())
            .collect::<Vec<_>>()
    );

    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    for resource in &acknowledged {
        let id = resource["id"].as_str().unwrap();
        let read = c.get(&format!("Patient/{id}")).send().await;
        assert_eq!(read.status, 200, "acknowledged write {id} survived");
        assert_eq!(read.json().unwrap(), *resource);
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ciphertext_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let name = "Zbigniewska-Plaintext-Canary";
    let created = c.post_json("Patient", &patient(name)).send().await;
    assert_eq!(created.status, 201);
    assert!(server.terminate().success());
    let mut files = Vec::new();
    collect_files(dir.path(), &mut files);
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("blobs")),
        "a blob was written"
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "{} holds the patient's name in plaintext",
            file.display()
        );
    }
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            collect_files(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}
