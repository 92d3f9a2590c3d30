//! One finished interaction as its AuditEvent, written once, directly in the form it is stored,
//! served and hashed: RFC 8785 canonical JSON (members sorted, no whitespace), so the leaf is
//! the keccak256 of the stored bytes themselves and nothing is parsed, re-serialised or
//! canonicalised on the way. The request that caused the event writes all of it but its place
//! in the trail (`Draft`: the bytes before and after the `extension` member), and its search
//! entries too, straight from what it knows rather than by FHIRPath over the JSON; the trail's
//! orderer splices the extension in (`Draft::finish`).
//!
//! The mapping (IHE Basic Audit Log Patterns) is in ARCHITECTURE.md. Tests check that the
//! bytes are their own canonical form and that the entries are the ones the official search
//! parameters extract.

use base64::Engine;

use super::jcs::write_string;
use super::{Interaction, MAX_NAMED};
use crate::fhir::instant::format_instant;
use crate::search::entries::{SearchEntry, Value, fold};

/// The server that records: the AuditEvent's `source`.
#[derive(Clone, Debug)]
pub struct Source {
    /// Which replica (several servers may share one store).
    pub replica: String,
}

/// An AuditEvent as its request wrote it: everything but its place in the trail.
#[derive(Clone, Debug)]
pub struct Draft {
    pub id: String,
    /// `meta.lastUpdated` and `recorded` (ms).
    pub recorded: i64,
    /// The patients it concerns (its compartment), each linked into their chain.
    pub patients: Vec<String>,
    /// Its search entries under the official parameters.
    pub entries: Vec<SearchEntry>,
    /// `{"action":…,"agent":[…]` and `"entity":[…]` when there is one: the members before
    /// `extension`.
    head: String,
    /// `,"id":…}`: the members after `extension`, and the closing brace.
    tail: String,
}

impl Draft {
    /// The stored bytes, with `extension` (a canonical JSON array) spliced in.
    pub fn finish(&self, extension: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + extension.len() + self.tail.len() + 16);
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(b",\"extension\":");
        out.extend_from_slice(extension.as_bytes());
        out.extend_from_slice(self.tail.as_bytes());
        out
    }
}

/// What kind of interaction a request was: (BALP type code, its display, the FHIR restful
/// interaction or operation, the AuditEvent action).
pub(super) fn classify(
    method: &str,
    path: &str,
) -> (&'static str, &'static str, String, &'static str) {
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
            // A batch's entries are audited one by one as the requests they are.
            ("POST", 0, _) => ("transaction".into(), "E"),
            ("PUT", 1, _) => ("update".into(), "U"),
            ("DELETE", 1, _) => ("delete".into(), "D"),
            ("PATCH", 2, _) => ("patch".into(), "U"),
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

const ROLE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const CLIENT_ID: &str = "urn:ietf:params:oauth:client-id";

/// Canonical JSON, written member by member: each writer below names its members in the
/// order RFC 8785 sorts them (all ASCII, so byte order), which the tests check.
struct Out {
    text: String,
    /// Whether the object or array being written has a member yet.
    first: Vec<bool>,
}

impl Out {
    fn new() -> Out {
        Out {
            text: String::with_capacity(1600),
            first: Vec::new(),
        }
    }
    fn separate(&mut self) {
        if let Some(first) = self.first.last_mut() {
            if !*first {
                self.text.push(',');
            }
            *first = false;
        }
    }
    fn open(&mut self, bracket: char) {
        self.text.push(bracket);
        self.first.push(true);
    }
    fn close(&mut self, bracket: char) {
        self.text.push(bracket);
        self.first.pop();
    }
    fn name(&mut self, name: &str) {
        self.separate();
        write_string(name, &mut self.text);
        self.text.push(':');
    }
    fn string(&mut self, name: &str, value: &str) {
        self.name(name);
        write_string(value, &mut self.text);
    }
    fn boolean(&mut self, name: &str, value: bool) {
        self.name(name);
        self.text.push_str(if value { "true" } else { "false" });
    }
    fn object(&mut self, name: &str, members: impl FnOnce(&mut Out)) {
        self.name(name);
        self.open('{');
        members(self);
        self.close('}');
    }
    fn array(&mut self, name: &str, items: impl FnOnce(&mut Out)) {
        self.name(name);
        self.open('[');
        items(self);
        self.close(']');
    }
    /// An object as an element of the array being written.
    fn element(&mut self, members: impl FnOnce(&mut Out)) {
        self.separate();
        self.open('{');
        members(self);
        self.close('}');
    }
    fn coding(&mut self, code: &str, display: &str, system: &str) {
        self.string("code", code);
        self.string("display", display);
        self.string("system", system);
    }
}

/// Collects the search entries as the official AuditEvent parameters would extract them (each
/// value once per parameter).
#[derive(Default)]
struct Entries(Vec<SearchEntry>);

impl Entries {
    fn add(&mut self, param: &str, value: Value) {
        if !self.0.iter().any(|e| e.param == param && e.value == value) {
            self.0.push(SearchEntry {
                param: param.to_owned(),
                value,
            });
        }
    }
    fn code(&mut self, param: &str, code: &str) {
        self.add(
            param,
            Value::Token {
                s: None,
                c: Some(code.to_owned()),
            },
        );
    }
    fn coding(&mut self, param: &str, system: &str, code: &str, display: Option<&str>) {
        self.add(
            param,
            Value::Token {
                s: Some(system.to_owned()),
                c: Some(code.to_owned()),
            },
        );
        if let Some(display) = display {
            self.add(param, Value::Text { n: fold(display) });
        }
    }
    fn string(&mut self, param: &str, text: &str) {
        self.add(
            param,
            Value::Str {
                n: fold(text),
                x: text.to_owned(),
            },
        );
    }
    fn reference(&mut self, param: &str, reference: &str) {
        let (r, t) = crate::search::entries::normalize_reference(reference);
        self.add(param, Value::Ref { r, t });
    }
    fn instant(&mut self, param: &str, text: &str) {
        if let Some((lo, hi)) = crate::fhir::instant::period(text) {
            self.add(
                param,
                Value::Range {
                    lo: lo as f64,
                    hi: hi as f64,
                },
            );
        }
    }
}

/// The AuditEvent of `interaction`, with its id and the instant it is recorded.
pub fn draft(interaction: &Interaction, id: &str, recorded: i64, source: &Source) -> Draft {
    let request = &interaction.request;
    let (type_code, type_display, subtype, action) = classify(&request.method, &request.path);
    let rest = type_code == "rest";
    let type_system = if rest {
        "http://terminology.hl7.org/CodeSystem/audit-event-type"
    } else {
        DCM
    };
    let subtype_system = if rest && !subtype.starts_with('$') {
        "http://hl7.org/fhir/restful-interaction"
    } else {
        "urn:intellihealth:interaction"
    };
    let recorded_text = format_instant(recorded);
    let outcome = if interaction.refused {
        "4"
    } else {
        outcome_code(request.status)
    };
    let patients = interaction.patients();
    let break_glass = interaction
        .agent
        .as_ref()
        .is_some_and(|a| a.break_glass.is_some());
    let mut entries = Entries::default();
    let mut out = Out::new();
    out.open('{');
    out.string("action", action);
    entries.code("action", action);
    out.array("agent", |out| write_agents(out, interaction, &mut entries));
    let named = named_entities(interaction);
    if !patients.is_empty() || !named.is_empty() || request.query.is_some() {
        out.array("entity", |out| {
            for patient in &patients {
                let reference = format!("Patient/{patient}");
                out.element(|out| {
                    out.object("role", |out| out.coding("1", "Patient", OBJECT_ROLE));
                    out.object("type", |out| out.coding("1", "Person", ENTITY_TYPE));
                    out.object("what", |out| out.string("reference", &reference));
                });
                entries.coding("entity-role", OBJECT_ROLE, "1", Some("Patient"));
                entries.coding("entity-type", ENTITY_TYPE, "1", Some("Person"));
                entries.reference("entity", &reference);
                entries.reference("patient", &reference);
            }
            for (reference, allowed) in &named {
                out.element(|out| {
                    if !allowed {
                        out.string("description", "refused");
                    }
                    out.object("role", |out| {
                        out.coding("4", "Domain Resource", OBJECT_ROLE)
                    });
                    out.object("type", |out| out.coding("2", "System Object", ENTITY_TYPE));
                    out.object("what", |out| out.string("reference", reference));
                });
                entries.coding("entity-role", OBJECT_ROLE, "4", Some("Domain Resource"));
                entries.coding("entity-type", ENTITY_TYPE, "2", Some("System Object"));
                entries.reference("entity", reference);
            }
            if let Some(query) = &request.query {
                let encoded = base64::engine::general_purpose::STANDARD.encode(query.as_bytes());
                out.element(|out| {
                    out.string("query", &encoded);
                    out.object("role", |out| out.coding("24", "Query", OBJECT_ROLE));
                    out.object("type", |out| out.coding("2", "System Object", ENTITY_TYPE));
                });
                entries.coding("entity-role", OBJECT_ROLE, "24", Some("Query"));
                entries.coding("entity-type", ENTITY_TYPE, "2", Some("System Object"));
            }
        });
    }
    let head = std::mem::take(&mut out.text);

    // The members after `extension` (the object is still open: `first` says a member came).
    out.string("id", id);
    entries.code("_id", id);
    out.object("meta", |out| {
        out.string("lastUpdated", &recorded_text);
        out.string("versionId", "1");
    });
    entries.instant("_lastUpdated", &recorded_text);
    out.string("outcome", outcome);
    entries.code("outcome", outcome);
    out.string(
        "outcomeDesc",
        &format!(
            "HTTP {} {} {}",
            request.status, request.method, request.path
        ),
    );
    out.object("period", |out| {
        out.string("end", &recorded_text);
        out.string("start", &format_instant(request.started));
    });
    if break_glass {
        out.array("purposeOfEvent", |out| {
            out.element(|out| {
                out.array("coding", |out| {
                    out.element(|out| out.coding("BTG", "break the glass", ACT_REASON));
                });
            });
        });
    }
    out.string("recorded", &recorded_text);
    entries.instant("date", &recorded_text);
    out.string("resourceType", "AuditEvent");
    out.object("source", |out| {
        out.object("observer", |out| {
            out.string("display", "IntelliHealth FHIR server");
        });
        out.string("site", &source.replica);
        out.array("type", |out| {
            out.element(|out| {
                out.coding(
                    "4",
                    "Application Server",
                    "http://terminology.hl7.org/CodeSystem/security-source-type",
                );
            });
        });
    });
    entries.code("site", &source.replica);
    out.array("subtype", |out| {
        out.element(|out| {
            out.string("code", &subtype);
            out.string("system", subtype_system);
        });
    });
    entries.add(
        "subtype",
        Value::Token {
            s: Some(subtype_system.to_owned()),
            c: Some(subtype.clone()),
        },
    );
    out.object("type", |out| {
        out.coding(type_code, type_display, type_system)
    });
    entries.coding("type", type_system, type_code, Some(type_display));
    out.close('}');
    // In the order extraction gives them: by parameter code (the sort is stable, so each
    // parameter's values stay in document order).
    let mut entries = entries.0;
    entries.sort_by(|a, b| a.param.cmp(&b.param));
    Draft {
        id: id.to_owned(),
        recorded,
        patients,
        entries,
        head,
        tail: out.text,
    }
}

/// The resources an AuditEvent names besides its patients: each judged version, at most
/// `MAX_NAMED`, with whether it was allowed.
fn named_entities(interaction: &Interaction) -> Vec<(String, bool)> {
    let mut named = Vec::new();
    for judged in &interaction.judged {
        let is_patient_itself = judged
            .reference
            .strip_prefix("Patient/")
            .is_some_and(|id| judged.patients.iter().any(|p| p == id));
        if is_patient_itself {
            continue;
        }
        if named.len() == MAX_NAMED {
            break;
        }
        named.push((judged.reference.clone(), judged.allowed));
    }
    named
}

fn write_network(out: &mut Out, address: Option<&str>, entries: &mut Entries) {
    if let Some(address) = address {
        out.object("network", |out| {
            out.string("address", address);
            out.string("type", "2");
        });
        entries.string("address", address);
    }
}

fn write_agents(out: &mut Out, interaction: &Interaction, entries: &mut Entries) {
    let address = interaction.request.address.as_deref();
    let Some(agent) = &interaction.agent else {
        // No token, or one refused: the caller is known only by its address.
        out.element(|out| {
            out.string("name", "unauthenticated");
            write_network(out, address, entries);
            out.boolean("requestor", true);
        });
        entries.string("agent-name", "unauthenticated");
        return;
    };
    let client = |out: &mut Out| {
        out.object("who", |out| {
            out.object("identifier", |out| {
                out.string("system", CLIENT_ID);
                out.string("value", &agent.client_id);
            });
        });
    };
    let purpose = |out: &mut Out| {
        if agent.break_glass.is_some() {
            out.array("purposeOfUse", |out| {
                out.element(|out| {
                    out.array("coding", |out| {
                        out.element(|out| out.coding("BTG", "break the glass", ACT_REASON));
                    });
                });
            });
        }
    };
    match &agent.fhir_user {
        Some(user) => {
            out.element(|out| {
                write_network(out, address, entries);
                purpose(out);
                out.boolean("requestor", true);
                out.object("type", |out| {
                    out.array("coding", |out| {
                        out.element(|out| out.coding("humanuser", "human user", ROLE_TYPE));
                    });
                });
                out.object("who", |out| out.string("reference", user));
            });
            entries.reference("agent", user);
            if user.starts_with("Patient/") {
                entries.reference("patient", user);
            }
            out.element(|out| {
                out.boolean("requestor", false);
                out.object("type", |out| {
                    out.array("coding", |out| {
                        out.element(|out| out.coding("110150", "Application", DCM));
                    });
                });
                client(out);
            });
        }
        None => {
            out.element(|out| {
                out.string("altId", &agent.subject);
                write_network(out, address, entries);
                purpose(out);
                out.boolean("requestor", true);
                out.object("type", |out| {
                    out.array("coding", |out| {
                        out.element(|out| out.coding("dataprocessor", "data processor", ROLE_TYPE));
                    });
                });
                client(out);
            });
            entries.code("altid", &agent.subject);
        }
    }
    entries.add(
        "agent",
        Value::RefIdentifier {
            s: Some(CLIENT_ID.to_owned()),
            v: agent.client_id.clone(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Agent, Request, Touched};
    use crate::search::params::Registry;

    fn request(method: &str, path: &str, status: u16) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: None,
            address: Some("127.0.0.1".into()),
            status,
            started: 1_700_000_000_000,
        }
    }

    fn source() -> Source {
        Source {
            replica: "intellihealth@r\"1".into(),
        }
    }

    /// The stored bytes of `draft` with a sample extension, as JSON.
    fn stored(draft: &Draft) -> Vec<u8> {
        draft.finish(r#"[{"url":"https://example.org/x","valueString":"y"}]"#)
    }

    fn value(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
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
        let event = value(&stored(&draft(&interaction, "e1", 5, &source())));
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["subtype"][0]["code"], "read");
        assert_eq!(event["agent"][0]["who"]["reference"], "Practitioner/abc");
        assert_eq!(event["agent"][0]["network"]["address"], "127.0.0.1");
        assert_eq!(event["agent"][1]["who"]["identifier"]["value"], "ehr");
        assert_eq!(event["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(event["entity"][1]["what"]["reference"], "Observation/o1");
        assert_eq!(event["entity"][1]["description"], "refused");
        assert_eq!(event["meta"]["versionId"], "1");
        // The notes were taken: a second interaction from them is empty.
        assert!(
            Interaction::new(request("GET", "/", 200), &touched)
                .patients()
                .is_empty()
        );
    }

    /// Interactions of every shape an AuditEvent takes.
    fn interactions() -> Vec<Interaction> {
        let mut out = Vec::new();
        let agents = [
            None,
            Some(Agent {
                client_id: "ehr".into(),
                fhir_user: None,
                subject: "svc \"account\"".into(),
                break_glass: None,
            }),
            Some(Agent {
                client_id: "portal".into(),
                fhir_user: Some("Patient/p1".into()),
                subject: "p1".into(),
                break_glass: None,
            }),
            Some(Agent {
                client_id: "doctor-app".into(),
                fhir_user: Some("Practitioner/d\u{e9}1".into()),
                subject: "d1".into(),
                break_glass: Some("unconscious".into()),
            }),
        ];
        let shapes: [(&str, &str, u16, Option<&str>); 5] = [
            ("GET", "/fhir/Observation/o1", 200, None),
            (
                "GET",
                "/fhir/Observation",
                200,
                Some("subject=Patient/p2&code=x|y"),
            ),
            ("POST", "/auth/token", 401, None),
            ("DELETE", "/fhir/Patient/p2", 500, None),
            ("GET", "/fhir/Patient/p1/$everything", 403, None),
        ];
        for (n, agent) in agents.iter().enumerate() {
            for (m, (method, path, status, query)) in shapes.iter().enumerate() {
                let touched = Touched::default();
                if let Some(agent) = agent {
                    touched.set_agent(agent.clone());
                }
                if (n + m) % 2 == 0 {
                    touched.judged("Observation/o1".into(), &["p1".into()], true);
                    touched.judged("Patient/p2".into(), &["p2".into()], true);
                    touched.judged("Condition/c1".into(), &["p2".into(), "p3".into()], false);
                }
                if m == 3 {
                    touched.refused();
                }
                let mut r = request(method, path, *status);
                r.query = query.map(str::to_owned);
                if n == 0 {
                    r.address = None;
                }
                out.push(Interaction::new(r, &touched));
            }
        }
        out
    }

    #[test]
    fn the_stored_bytes_are_their_own_canonical_form() {
        for (n, interaction) in interactions().iter().enumerate() {
            let draft = draft(interaction, &format!("e{n}"), 1_700_000_000_123, &source());
            let bytes = stored(&draft);
            let parsed = crate::fhir::json::parse(&bytes).unwrap();
            assert_eq!(
                String::from_utf8(crate::audit::jcs::canonical(&parsed)).unwrap(),
                String::from_utf8(bytes.clone()).unwrap()
            );
            crate::fhir::validate::validate(&parsed, crate::fhir::validate::Handling::Strict)
                .unwrap_or_else(|e| panic!("invalid AuditEvent {n}: {e:?}"));
        }
    }

    /// What the official search parameters extract, in a comparable order.
    fn sorted(entries: &[SearchEntry]) -> Vec<String> {
        let mut out: Vec<String> = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_entries_are_what_the_official_parameters_extract() {
        let registry = Registry::r4();
        for (n, interaction) in interactions().iter().enumerate() {
            let draft = draft(interaction, &format!("e{n}"), 1_700_000_000_123, &source());
            let parsed = crate::fhir::json::parse(&stored(&draft)).unwrap();
            let extracted = crate::search::entries::extract(registry, "AuditEvent", &parsed);
            assert_eq!(sorted(&draft.entries), sorted(&extracted), "AuditEvent {n}");
            let params = |entries: &[SearchEntry]| -> Vec<String> {
                entries.iter().map(|e| e.param.clone()).collect()
            };
            assert_eq!(params(&draft.entries), params(&extracted), "AuditEvent {n}");
            let mut compartment =
                crate::search::compartment::patient_compartment("AuditEvent", &draft.id, &parsed)
                    .patients;
            let mut patients = draft.patients.clone();
            compartment.sort();
            patients.sort();
            assert_eq!(patients, compartment, "AuditEvent {n}");
        }
    }
}
