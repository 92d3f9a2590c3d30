//! The audit trail: every interaction with the server becomes a FHIR AuditEvent, shaped like
//! IHE Basic Audit Log Patterns (BALP), made durable before the response that caused it.
//!
//! - `Touched` is what a request collects on its way: who asked (set where the token is
//!   verified) and every resource version the repository's one authorization decision judged
//!   (with its patients and whether it was allowed), so an interaction is described by the
//!   path that served it and cannot forget a resource.
//! - `event` turns one finished interaction into its AuditEvent (the mapping is in
//!   ARCHITECTURE.md).
//! - `log::AuditLog` is the durable queue: group commit, one sealed batch per round.
//!
//! Must not store anything itself: `AuditSink` (the repository) seals and commits the batches;
//! nor know HTTP: the HTTP face hands it a `Request` summary.

pub mod jcs;
pub mod log;
pub mod trail;

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::auth::Principal;
use crate::fhir::instant::format_instant;

pub use log::{AuditLog, AuditSink};

/// The one error of the audit room: the trail could not be made durable, so the interaction
/// that caused it is refused (an unaudited read is never served).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail could not be written: {0}")]
    Unavailable(String),
}

/// The data key AuditEvents are sealed with: the server's own, never a patient's, so erasing
/// a patient (destroying their key) cannot destroy the record of who read their data. (Not a
/// resource reference: an id cannot contain a `/` after the first.)
pub const AUDIT_KEY_OWNER: &str = "intellihealth/audit";

/// Who made a request, as the token said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub client_id: String,
    /// `Practitioner/abc`, `Patient/123`: the user as a FHIR resource, if the token names one.
    pub fhir_user: Option<String>,
    /// The token's subject, when it names neither a FHIR user nor only the client.
    pub subject: String,
    /// The reason given for an emergency access (purpose of use BTG).
    pub break_glass: Option<String>,
}

impl Agent {
    pub fn of(principal: &Principal) -> Agent {
        Agent {
            client_id: principal.client_id.clone(),
            fhir_user: principal.fhir_user.clone(),
            subject: principal.subject.clone(),
            break_glass: principal.break_glass.clone(),
        }
    }
}

/// One resource version the request's authorization judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// `Observation/123`.
    pub reference: String,
    /// The patients whose compartment holds it (ids).
    pub patients: Vec<String>,
    pub allowed: bool,
}

#[derive(Default, Debug)]
struct Notes {
    agent: Option<Agent>,
    judged: Vec<Judged>,
    /// The interaction failed though its status says otherwise (a sign-in page shown again
    /// after a wrong password is a 200).
    refused: bool,
}

/// What a request collects for its AuditEvent; shared by the clones of its `Principal`.
#[derive(Clone, Default, Debug)]
pub struct Touched(Arc<Mutex<Notes>>);

/// How many judged versions one AuditEvent names; a larger listing keeps its patients but
/// not every resource (the query says what was asked).
const MAX_NAMED: usize = 100;

impl Touched {
    pub fn set_agent(&self, agent: Agent) {
        self.with(|notes| notes.agent = Some(agent));
    }

    /// Notes one judged version (the authorization decision calls this for each).
    pub fn judged(&self, reference: String, patients: &[String], allowed: bool) {
        self.with(|notes| {
            notes.judged.push(Judged {
                reference,
                patients: patients.to_vec(),
                allowed,
            })
        });
    }

    /// Notes that the interaction was refused whatever its HTTP status.
    pub fn refused(&self) {
        self.with(|notes| notes.refused = true);
    }

    fn take(&self) -> Notes {
        let mut taken = Notes::default();
        self.with(|notes| std::mem::swap(notes, &mut taken));
        taken
    }

    fn with(&self, f: impl FnOnce(&mut Notes)) {
        match self.0.lock() {
            Ok(mut notes) => f(&mut notes),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// The request, as the HTTP face saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path below the server (`/fhir/Observation/1`).
    pub path: String,
    /// The query string, if any (kept only sealed, as the entity's `query`).
    pub query: Option<String>,
    /// The client's network address, if known.
    pub address: Option<String>,
    pub status: u16,
    /// When the request arrived (ms since the epoch).
    pub started: i64,
}

/// One finished interaction, ready to become an AuditEvent.
#[derive(Debug)]
pub struct Interaction {
    pub request: Request,
    agent: Option<Agent>,
    judged: Vec<Judged>,
    refused: bool,
}

impl Interaction {
    pub fn new(request: Request, touched: &Touched) -> Interaction {
        let Notes {
            agent,
            judged,
            refused,
        } = touched.take();
        Interaction {
            request,
            agent,
            judged,
            refused,
        }
    }

    /// The patients the interaction concerns: those of every version it was allowed to see
    /// or change, and of a version it was refused (a denial is about that patient too), and
    /// the patient who asked (the AuditEvent is in their compartment, as its agent, so it
    /// belongs in their chain).
    pub fn patients(&self) -> Vec<String> {
        let mut patients: Vec<String> = self
            .agent
            .as_ref()
            .and_then(|a| a.fhir_user.as_deref()?.strip_prefix("Patient/"))
            .map(|own| vec![own.to_owned()])
            .unwrap_or_default();
        for judged in &self.judged {
            for p in &judged.patients {
                if !patients.contains(p) {
                    patients.push(p.clone());
                }
            }
        }
        patients
    }
}

/// What kind of interaction a request was: (BALP type code, its display, the FHIR restful
/// interaction or operation, the AuditEvent action).
fn classify(method: &str, path: &str) -> (&'static str, &'static str, String, &'static str) {
    const REST: (&str, &str) = ("rest", "Restful Operation");
    if path.starts_with("/auth/") {
        let what = path.trim_start_matches("/auth/").to_owned();
        return ("110114", "User Authentication", what, "E");
    }
    let segments: Vec<&str> = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let operation = segments.iter().find(|s| s.starts_with('$'));
    let (interaction, action) = if let Some(op) = operation {
        (op.to_string(), "E")
    } else {
        let history = segments.contains(&"_history");
        match (method, segments.len(), history) {
            ("GET" | "HEAD", 0, _) => ("search-system".into(), "E"),
            ("GET" | "HEAD", 1, true) => ("history-system".into(), "R"),
            ("GET" | "HEAD", 1, _) if segments[0] == "metadata" => ("capabilities".into(), "R"),
            ("GET" | "HEAD", 1, _) => ("search-type".into(), "E"),
            ("POST", 1, _) if segments[0] == "_search" => ("search-system".into(), "E"),
            ("POST", 1, _) => ("create".into(), "C"),
            ("POST", 2, _) if segments[1] == "_search" => ("search-type".into(), "E"),
            ("GET" | "HEAD", 2, true) => ("history-type".into(), "R"),
            ("GET" | "HEAD", 2, _) => ("read".into(), "R"),
            ("PUT", 2, _) => ("update".into(), "U"),
            ("DELETE", 2, _) => ("delete".into(), "D"),
            ("GET" | "HEAD", 3, true) => ("history-instance".into(), "R"),
            ("GET" | "HEAD", 3, _) => ("search-compartment".into(), "E"),
            ("GET" | "HEAD", 4, true) => ("vread".into(), "R"),
            _ => (method.to_ascii_lowercase(), "E"),
        }
    };
    (REST.0, REST.1, interaction, action)
}

/// BALP's outcome codes: 0 success, 4 minor failure (the client's), 8 serious failure (ours).
fn outcome_code(status: u16) -> &'static str {
    match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

/// The server that records: the AuditEvent's `source`.
#[derive(Clone, Debug)]
pub struct Source {
    /// Which replica (several servers may share one store).
    pub replica: String,
}

/// The AuditEvent for `interaction`, with its id and the instant it is recorded. (Its `meta`
/// is stamped where it is stored, like every resource's.)
pub fn event(
    interaction: &Interaction,
    id: &str,
    recorded: i64,
    source: &Source,
) -> serde_json::Value {
    let request = &interaction.request;
    let (type_code, type_display, subtype, action) = classify(&request.method, &request.path);
    let type_system = if type_code == "rest" {
        "http://terminology.hl7.org/CodeSystem/audit-event-type"
    } else {
        "http://dicom.nema.org/resources/ontology/DCM"
    };
    let subtype_system = if type_code == "rest" && !subtype.starts_with('$') {
        "http://hl7.org/fhir/restful-interaction"
    } else {
        "urn:intellihealth:interaction"
    };
    let mut agents = Vec::new();
    let network = request
        .address
        .as_ref()
        .map(|address| json!({"address": address, "type": "2"}));
    match &interaction.agent {
        Some(agent) => {
            let client = json!({"identifier": {
                "system": "urn:ietf:params:oauth:client-id", "value": agent.client_id}});
            let mut requestor = match &agent.fhir_user {
                Some(user) => json!({
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "humanuser", "display": "human user"}]},
                    "who": {"reference": user},
                    "requestor": true
                }),
                None => json!({
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "dataprocessor", "display": "data processor"}]},
                    "who": client.clone(),
                    "altId": agent.subject,
                    "requestor": true
                }),
            };
            if let Some(network) = &network {
                requestor["network"] = network.clone();
            }
            if agent.break_glass.is_some() {
                requestor["purposeOfUse"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG", "display": "break the glass"}]}]);
            }
            agents.push(requestor);
            if agent.fhir_user.is_some() {
                agents.push(json!({
                    "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
                    "who": client,
                    "requestor": false
                }));
            }
        }
        None => {
            // No token, or one refused: the caller is known only by its address.
            let mut unknown = json!({"name": "unauthenticated", "requestor": true});
            if let Some(network) = &network {
                unknown["network"] = network.clone();
            }
            agents.push(unknown);
        }
    }
    let mut entities = Vec::new();
    for patient in interaction.patients() {
        entities.push(json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
        }));
    }
    let mut named = 0;
    for judged in &interaction.judged {
        let is_patient_itself = judged
            .reference
            .strip_prefix("Patient/")
            .is_some_and(|id| judged.patients.iter().any(|p| p == id));
        if is_patient_itself || named == MAX_NAMED {
            continue;
        }
        named += 1;
        let mut entity = json!({
            "what": {"reference": judged.reference},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"}
        });
        if !judged.allowed {
            entity["description"] = json!("refused");
        }
        entities.push(entity);
    }
    if let Some(query) = &request.query {
        use base64::Engine;
        entities.push(json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
            "query": base64::engine::general_purpose::STANDARD.encode(query.as_bytes())
        }));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": type_system, "code": type_code, "display": type_display},
        "subtype": [{"system": subtype_system, "code": subtype}],
        "action": action,
        "period": {"start": format_instant(request.started), "end": format_instant(recorded)},
        "recorded": format_instant(recorded),
        "outcome": if interaction.refused { "4" } else { outcome_code(request.status) },
        "outcomeDesc": format!("HTTP {} {} {}", request.status, request.method, request.path),
        "agent": agents,
        "source": {
            "site": source.replica,
            "observer": {"display": "IntelliHealth FHIR server"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
        },
    });
    if interaction
        .agent
        .as_ref()
        .is_some_and(|a| a.break_glass.is_some())
    {
        event["purposeOfEvent"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG", "display": "break the glass"}]}]);
    }
    if !entities.is_empty() {
        event["entity"] = json!(entities);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, status: u16) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: None,
            address: Some("127.0.0.1".into()),
            status,
            started: 0,
        }
    }

    #[test]
    fn interactions_are_classified_as_fhir_names_them() {
        let cases = [
            ("GET", "/fhir/Observation/1", "read", "R"),
            ("GET", "/fhir/Observation/1/_history/2", "vread", "R"),
            (
                "GET",
                "/fhir/Observation/1/_history",
                "history-instance",
                "R",
            ),
            ("GET", "/fhir/Observation", "search-type", "E"),
            ("POST", "/fhir/Observation/_search", "search-type", "E"),
            ("POST", "/fhir/Observation", "create", "C"),
            ("PUT", "/fhir/Observation/1", "update", "U"),
            ("DELETE", "/fhir/Observation/1", "delete", "D"),
            ("GET", "/fhir/Patient/1/$everything", "$everything", "E"),
            (
                "GET",
                "/fhir/Patient/1/Observation",
                "search-compartment",
                "E",
            ),
            ("GET", "/fhir/metadata", "capabilities", "R"),
        ];
        for (method, path, interaction, action) in cases {
            let (_, _, got, got_action) = classify(method, path);
            assert_eq!((got.as_str(), got_action), (interaction, action), "{path}");
        }
        assert_eq!(classify("POST", "/auth/token").0, "110114");
    }

    #[test]
    fn an_event_names_who_what_and_the_patient_and_a_denial_is_a_minor_failure() {
        let touched = Touched::default();
        touched.set_agent(Agent {
            client_id: "ehr".into(),
            fhir_user: Some("Practitioner/abc".into()),
            subject: "u".into(),
            break_glass: None,
        });
        touched.judged("Observation/o1".into(), &["p1".into()], false);
        let interaction = Interaction::new(request("GET", "/fhir/Observation/o1", 403), &touched);
        let source = Source {
            replica: "r1".into(),
        };
        let event = event(&interaction, "e1", 5, &source);
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["subtype"][0]["code"], "read");
        assert_eq!(event["agent"][0]["who"]["reference"], "Practitioner/abc");
        assert_eq!(event["agent"][0]["network"]["address"], "127.0.0.1");
        assert_eq!(event["agent"][1]["who"]["identifier"]["value"], "ehr");
        assert_eq!(event["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(event["entity"][1]["what"]["reference"], "Observation/o1");
        assert_eq!(event["entity"][1]["description"], "refused");
        // The notes were taken: a second interaction from them is empty.
        assert!(
            Interaction::new(request("GET", "/", 200), &touched)
                .patients()
                .is_empty()
        );
    }
}
