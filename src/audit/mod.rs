//! The audit trail: every interaction with the server becomes a FHIR AuditEvent, shaped like
//! IHE Basic Audit Log Patterns (BALP), made durable before the response that caused it.
//!
//! - `Touched` is what a request collects on its way: who asked (set where the token is
//!   verified) and every resource version the repository's one authorization decision judged
//!   (with its patients and whether it was allowed), so an interaction is described by the
//!   path that served it and cannot forget a resource.
//! - `event` turns one finished interaction into its AuditEvent, written once in the canonical
//!   form it is stored and hashed in, with its search entries (the mapping is in
//!   ARCHITECTURE.md).
//! - `log::AuditLog` is the durable queue: group commit, one sealed batch per round.
//!
//! Must not store anything itself: `AuditSink` (the repository) seals and commits the batches;
//! nor know HTTP: the HTTP face hands it a `Request` summary.

pub mod event;
pub mod jcs;
pub mod log;
pub mod trail;

use std::sync::{Arc, Mutex};

use crate::auth::Principal;

pub use event::{Draft, Source, draft};
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
