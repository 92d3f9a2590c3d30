//! Tokens from an external identity provider (npm oauth2-mock-server@8.2.3, started by
//! `scripts/mock-idp`): accepted when its issuer is in INTELLIHEALTH_TRUSTED_ISSUERS, with its
//! `scope`, `patient` and `fhirUser` claims honoured, and refused by a server that does not
//! trust it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Profile, Spawned, client, provision};
use serde_json::json;

struct Idp<'a> {
    dir: &'a Path,
    url: String,
}

impl Drop for Idp<'_> {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mock-idp");
        let _ = Command::new(script).arg("stop").arg(self.dir).output();
    }
}

fn start_idp(dir: &Path) -> Idp<'_> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mock-idp");
    let output = Command::new(script)
        .args(["start"])
        .arg(dir)
        .args(["--audience", "http://placeholder.invalid/fhir"])
        .output()
        .expect("scripts/mock-idp runs");
    assert!(
        output.status.success(),
        "mock-idp: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let url = stdout
        .trim()
        .strip_prefix("export INTELLIHEALTH_TEST_IDP=")
        .map(|v| v.trim_matches('\'').to_owned())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    Idp { dir, url }
}

async fn external_token(idp: &Idp<'_>, audience: &str) -> String {
    let reply: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/token", idp.url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "external-app"),
            ("scope", "patient/Patient.rs"),
            ("patient", "ext-p1"),
            ("fhirUser", "Patient/ext-p1"),
            ("aud", audience),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"]
        .as_str()
        .expect("a token from the mock IdP")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_issuers_tokens_are_accepted_and_an_untrusted_ones_refused() {
    let idp_dir = tempfile::tempdir().unwrap();
    let idp = start_idp(idp_dir.path());

    let trusting_dir = tempfile::tempdir().unwrap();
    let credentials = provision(trusting_dir.path(), &Profile::Embedded);
    let trust = [("INTELLIHEALTH_TRUSTED_ISSUERS".to_owned(), idp.url.clone())];
    let (listen, base_url) = common::fixed_address();
    let args = ["--listen", listen.as_str(), "--base-url", base_url.as_str()];
    let trusting = Spawned::with_env(trusting_dir.path(), &args, &Profile::Embedded, None, &trust)
        .with_credentials(credentials)
        .ready(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the server starts"));
    let admin = client(&trusting).await;
    for id in ["ext-p1", "ext-p2"] {
        let patient = json!({"resourceType": "Patient", "id": id, "active": true});
        assert_eq!(
            admin
                .put_json(&format!("Patient/{id}"), &patient)
                .send()
                .await
                .status,
            201
        );
    }

    let token = external_token(&idp, &trusting.base_url).await;
    let external = conformance_tests::client::Client::new(&trusting.base_url, Some(token));
    let own = external.get("Patient/ext-p1").send().await;
    assert_eq!(
        own.status,
        200,
        "a trusted issuer's token is accepted: {}",
        own.summary()
    );
    let other = external.get("Patient/ext-p2").send().await;
    assert_eq!(
        other.status,
        403,
        "its patient claim confines it: {}",
        other.summary()
    );
    let write = external
        .post_json("Patient", &json!({"resourceType": "Patient"}))
        .send()
        .await;
    assert_eq!(
        write.status,
        403,
        "its scope claim limits it: {}",
        write.summary()
    );

    let wary_dir = tempfile::tempdir().unwrap();
    let wary = common::Server::start(wary_dir.path(), &[]);
    let token = external_token(&idp, &wary.base_url).await;
    let refused = conformance_tests::client::Client::new(&wary.base_url, Some(token))
        .get("Patient/ext-p1")
        .send()
        .await;
    assert_eq!(
        refused.status,
        401,
        "an untrusted issuer's token is refused: {}",
        refused.summary()
    );
    assert!(
        refused
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("invalid_token")
    );
    assert!(trusting.terminate().success());
    assert!(wary.terminate().success());
}
