//! `intellihealth consent bind|grant|revoke|list`: a patient's (or an integrator's) client of a
//! running server's consent API over HTTP, signing with the patient's key file. Nothing here
//! touches storage; it speaks only the public interface any wallet would.

use std::path::PathBuf;

use alloy::primitives::{Address, B256, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolStruct;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use intellihealth::ledger::bindings::{
    CONSENT_DOMAIN_NAME, CONSENT_DOMAIN_VERSION, consent_domain, typed,
};

#[derive(Subcommand)]
pub enum ConsentCommand {
    /// Bind the key's wallet to the patient (or rebind it, after a lost key).
    Bind {
        #[command(flatten)]
        to: Target,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        patient_key: PathBuf,
    },
    /// Grant access to the patient's record, signed with the patient's key.
    Grant {
        #[command(flatten)]
        to: Target,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        patient_key: PathBuf,
        /// The grantee: a FHIR reference such as Practitioner/abc.
        #[arg(long, conflicts_with = "client")]
        reference: Option<String>,
        /// The grantee: an OAuth client id.
        #[arg(long)]
        client: Option<String>,
        /// Resource types, comma-separated; none grants every type.
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Also allow writing (correct), not only reading (access).
        #[arg(long)]
        write: bool,
        /// Days until the grant expires.
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Revoke a grant (by its Consent id), signed with the patient's key.
    Revoke {
        #[command(flatten)]
        to: Target,
        #[arg(long)]
        patient_key: PathBuf,
        #[arg(long)]
        consent: String,
    },
    /// List the patient's grants as the chain holds them.
    List {
        #[command(flatten)]
        to: Target,
        #[arg(long)]
        patient: String,
    },
}

/// Which server, and whose access token.
#[derive(Args)]
pub struct Target {
    /// The server's FHIR base URL, e.g. http://127.0.0.1:8080/fhir.
    #[arg(long)]
    server: String,
    /// A file holding the access token (of the patient, or of a custodian client).
    #[arg(long)]
    token_file: PathBuf,
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(target: &Target) -> Result<Api, String> {
        let token = std::fs::read_to_string(&target.token_file)
            .map_err(|e| format!("{}: {e}", target.token_file.display()))?
            .trim()
            .to_owned();
        Ok(Api {
            base: target.server.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method, format!("{}/{path}", self.base))
            .bearer_auth(&self.token)
            .header("accept", "application/fhir+json");
        if let Some(body) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
        }
        let reply = request.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let why = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
            return Err(format!("{path}: {status} {why}"));
        }
        Ok(body)
    }
}

fn key_of(path: &PathBuf) -> Result<PrivateKeySigner, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{} holds no hex private key", path.display()))
}

fn typed_data_of(parameters: &Value) -> Result<Value, String> {
    let text = parameters["parameter"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "typedData"))
        .and_then(|p| p["valueString"].as_str())
        .ok_or("the server sent no typedData")?;
    serde_json::from_str(text).map_err(|e| format!("typedData: {e}"))
}

fn field<T: std::str::FromStr>(message: &Value, name: &str) -> Result<T, String> {
    let text = match &message[name] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(format!("typedData.message.{name} is missing")),
    };
    text.parse()
        .map_err(|_| format!("typedData.message.{name} is not valid"))
}

/// Signs the typed data the server prepared, after checking it is the registry's domain and
/// rebuilding the message from its fields (so what is signed is what was shown).
fn sign(typed_data: &Value, key: &PrivateKeySigner) -> Result<String, String> {
    let domain = &typed_data["domain"];
    if domain["name"] != CONSENT_DOMAIN_NAME || domain["version"] != CONSENT_DOMAIN_VERSION {
        return Err("the typed data is not for the IntelliHealth consent registry".into());
    }
    let chain_id: u64 = field(domain, "chainId")?;
    let registry: Address = field(domain, "verifyingContract")?;
    let domain = consent_domain(chain_id, registry);
    let m = &typed_data["message"];
    let hash = match typed_data["primaryType"].as_str() {
        Some("BindWallet") => typed::BindWallet {
            patient: field(m, "patient")?,
            wallet: field(m, "wallet")?,
            nonce: field(m, "nonce")?,
            deadline: field(m, "deadline")?,
        }
        .eip712_signing_hash(&domain),
        Some("Grant") => typed::Grant {
            patient: field::<B256>(m, "patient")?,
            grantee: field(m, "grantee")?,
            resourceTypes: m["resourceTypes"]
                .as_array()
                .ok_or("typedData.message.resourceTypes is missing")?
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
            actions: field(m, "actions")?,
            expiry: field(m, "expiry")?,
            nonce: field::<U256>(m, "nonce")?,
            deadline: field(m, "deadline")?,
        }
        .eip712_signing_hash(&domain),
        Some("Revoke") => typed::Revoke {
            patient: field(m, "patient")?,
            grantId: field(m, "grantId")?,
            nonce: field(m, "nonce")?,
            deadline: field(m, "deadline")?,
        }
        .eip712_signing_hash(&domain),
        _ => return Err("the typed data is not a binding, grant or revocation".into()),
    };
    let signature = key.sign_hash_sync(&hash).map_err(|e| e.to_string())?;
    Ok(alloy::hex::encode_prefixed(signature.as_bytes()))
}

/// Asks the server to prepare (`method path body`), and signs the typed data it answers.
async fn prepare_and_sign(
    api: &Api,
    key: &PrivateKeySigner,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<String, String> {
    let prepared = api.send(method, path, body).await?;
    sign(&typed_data_of(&prepared)?, key)
}

/// Has `$prepare` say what `consent` means, signs that, and sends `consent` with the
/// signature as `method` to `path` (a grant is POSTed, a revocation PUT).
async fn sign_and_send(
    api: &Api,
    key: &PrivateKeySigner,
    consent: Value,
    method: reqwest::Method,
    path: &str,
) -> Result<Value, String> {
    let signature = prepare_and_sign(
        api,
        key,
        reqwest::Method::POST,
        "Consent/$prepare",
        Some(consent.clone()),
    )
    .await?;
    api.send(method, path, Some(with_signature(consent, signature)))
        .await
}

fn with_signature(mut consent: Value, signature: String) -> Value {
    consent["extension"] = json!([{
        "url": "https://intellihealth.dev/fhir/StructureDefinition/eip712-signature",
        "valueString": signature,
    }]);
    consent
}

pub async fn run(command: ConsentCommand) -> Result<(), String> {
    match command {
        ConsentCommand::Bind {
            to,
            patient,
            patient_key,
        } => {
            let api = Api::new(&to)?;
            let key = key_of(&patient_key)?;
            let path = format!("Patient/{patient}/$wallet-binding");
            let signature = prepare_and_sign(
                &api,
                &key,
                reqwest::Method::GET,
                &format!("{path}?address={}", key.address()),
                None,
            )
            .await?;
            let bound = api
                .send(
                    reqwest::Method::POST,
                    &path,
                    Some(json!({"resourceType": "Parameters", "parameter": [
                        {"name": "address", "valueString": key.address().to_string()},
                        {"name": "signature", "valueString": signature},
                    ]})),
                )
                .await?;
            println!(
                "Patient/{patient} bound to {} ({})",
                key.address(),
                bound["parameter"][1]["valueString"]
            );
            Ok(())
        }
        ConsentCommand::Grant {
            to,
            patient,
            patient_key,
            reference,
            client,
            types,
            write,
            days,
        } => {
            let api = Api::new(&to)?;
            let key = key_of(&patient_key)?;
            let grantee = match (reference, client) {
                (Some(reference), _) => json!({"reference": reference}),
                (None, Some(client)) => json!({"identifier": {
                    "system": "urn:ietf:params:oauth:client-id", "value": client}}),
                (None, None) => return Err("name the grantee: --reference or --client".into()),
            };
            let mut actions = vec![
                json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}),
            ];
            if write {
                actions.push(json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "correct"}]}));
            }
            let expiry = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
                + (days as i64) * 86_400_000;
            let mut provision = json!({
                "type": "permit",
                "period": {"end": intellihealth::fhir::instant::format_instant(expiry)},
                "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}, "reference": grantee}],
                "action": actions,
            });
            if !types.is_empty() {
                provision["class"] = types
                    .iter()
                    .map(|t| json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
                    .collect();
            }
            let draft = json!({
                "resourceType": "Consent",
                "status": "proposed",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": format!("Patient/{patient}")},
                "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
                "provision": provision,
            });
            let granted =
                sign_and_send(&api, &key, draft, reqwest::Method::POST, "Consent").await?;
            println!(
                "granted: Consent/{}",
                granted["id"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        ConsentCommand::Revoke {
            to,
            patient_key,
            consent,
        } => {
            let api = Api::new(&to)?;
            let key = key_of(&patient_key)?;
            let path = format!("Consent/{consent}");
            let mut current = api.send(reqwest::Method::GET, &path, None).await?;
            if let Some(object) = current.as_object_mut() {
                object.remove("meta");
            }
            current["status"] = json!("inactive");
            sign_and_send(&api, &key, current, reqwest::Method::PUT, &path).await?;
            println!("revoked: {path}");
            Ok(())
        }
        ConsentCommand::List { to, patient } => {
            let api = Api::new(&to)?;
            let listed = api
                .send(
                    reqwest::Method::GET,
                    &format!("Consent?patient=Patient/{patient}&_count=1000"),
                    None,
                )
                .await?;
            for entry in listed["entry"].as_array().into_iter().flatten() {
                let c = &entry["resource"];
                let actor = &c["provision"]["actor"][0]["reference"];
                let grantee = actor["reference"]
                    .as_str()
                    .or_else(|| actor["identifier"]["value"].as_str())
                    .unwrap_or("?");
                let types: Vec<&str> = c["provision"]["class"]
                    .as_array()
                    .map(|cs| cs.iter().filter_map(|x| x["code"].as_str()).collect())
                    .unwrap_or_else(|| vec!["*"]);
                println!(
                    "{}\t{}\t{}\t{}\tuntil {}",
                    c["id"].as_str().unwrap_or_default(),
                    c["status"].as_str().unwrap_or_default(),
                    grantee,
                    types.join(","),
                    c["provision"]["period"]["end"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}
