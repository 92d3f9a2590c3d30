//! The order of the trail, made durable with each round: every AuditEvent of a replica gets the
//! next sequence number (the numbering the anchors cover, without gaps), and every patient it
//! names gets the next link of that patient's chain on this replica (the link's index and the
//! leaf of the patient's previous AuditEvent), so a patient given their events can tell whether
//! one is missing. The state — the next sequence number, each patient's head — is written in
//! the same index commit as the round's events, and the round's leaves with them, so a crash
//! can neither number two events alike nor leave an event without its leaf.
//!
//! Record kinds (values JSON; keys below; `|` never occurs in a replica name or an id):
//!
//! | kind | key | value |
//! |---|---|---|
//! | `audit-trail` | replica | `{"next": n}` |
//! | `audit-head` | `replica|patient` | `{"index": i, "leaf": "0x…"}` |
//! | `audit-round` | `replica|first` (first seq, 20 digits) | `{"first": n, "leaves": ["0x…"], "anchor": null or the anchor's key}` |
//! | `audit-pending/{replica}` | `first` (20 digits) | `{}`: a round not anchored yet |

use std::collections::HashMap;

use std::fmt::Write;

use alloy::primitives::{B256, keccak256};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::jcs::write_string;
use super::{AuditError, Draft};
use crate::index::Record;

/// The extension of an AuditEvent's place in its replica's trail.
pub const SEQUENCE_URL: &str = "https://intellihealth.dev/fhir/StructureDefinition/audit-sequence";
/// The extension of an AuditEvent's link in one patient's chain.
pub const CHAIN_URL: &str = "https://intellihealth.dev/fhir/StructureDefinition/audit-chain";

pub const TRAIL: &str = "audit-trail";
pub const HEAD: &str = "audit-head";
pub const ROUND: &str = "audit-round";

/// Where an AuditEvent is in its replica's trail: (replica, sequence number, the first
/// sequence number of its round), from its `audit-sequence` extension.
pub fn place_of(event: &Value) -> Option<(String, u64, u64)> {
    let extension = event["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == SEQUENCE_URL)?;
    let part = |name: &str| {
        extension["extension"]
            .as_array()?
            .iter()
            .find(|e| e["url"] == name)?["valueString"]
            .as_str()
            .map(str::to_owned)
    };
    Some((
        part("replica")?,
        part("sequence")?.parse().ok()?,
        part("round")?.parse().ok()?,
    ))
}

pub fn pending_kind(replica: &str) -> String {
    format!("audit-pending/{replica}")
}

pub fn round_key(replica: &str, first: u64) -> String {
    format!("{replica}|{first:020}")
}

/// A patient's newest link on this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub index: u64,
    pub leaf: B256,
}

#[derive(Serialize, Deserialize)]
struct TrailState {
    next: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundRecord {
    pub first: u64,
    pub leaves: Vec<B256>,
    pub anchor: Option<String>,
}

/// Reads a record of the trail (the sink answers from the index store).
#[async_trait::async_trait]
pub trait Records: Send + Sync {
    async fn record(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, AuditError>;
}

/// The trail's state in memory: what the last durable round left.
pub struct Trail {
    replica: String,
    next: u64,
    heads: HashMap<String, Option<Head>>,
}

/// An AuditEvent in its final form: the bytes stored, served and hashed.
pub struct Finished {
    pub id: String,
    pub recorded: i64,
    pub bytes: Vec<u8>,
    pub patients: Vec<String>,
    /// Its search entries under the official parameters.
    pub entries: Vec<crate::search::entries::SearchEntry>,
}

/// A round made ready: the events in their final form (placed in the trail), and the records
/// that must be committed with them.
pub struct Prepared {
    pub events: Vec<Finished>,
    pub records: Vec<Record>,
    /// What the trail becomes once they are durable.
    pub advance: Advance,
}

pub struct Advance {
    next: u64,
    heads: Vec<(String, Head)>,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, AuditError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AuditError::Unavailable(format!("an unreadable trail record: {e}")))
}

fn record(kind: &str, key: String, value: &impl Serialize) -> Record {
    Record {
        kind: kind.to_owned(),
        key,
        value: serde_json::to_vec(value).unwrap_or_default(),
        expires_at: None,
    }
}

impl Trail {
    /// The trail as the last durable round left it.
    pub async fn load(records: &dyn Records, replica: &str) -> Result<Trail, AuditError> {
        let next = match records.record(TRAIL, replica).await? {
            Some(bytes) => decode::<TrailState>(&bytes)?.next,
            None => 0,
        };
        Ok(Trail {
            replica: replica.to_owned(),
            next,
            heads: HashMap::new(),
        })
    }

    async fn head(
        &mut self,
        records: &dyn Records,
        patient: &str,
    ) -> Result<Option<Head>, AuditError> {
        if let Some(head) = self.heads.get(patient) {
            return Ok(*head);
        }
        let key = format!("{}|{patient}", self.replica);
        let head = match records.record(HEAD, &key).await? {
            Some(bytes) => Some(decode::<Head>(&bytes)?),
            None => None,
        };
        self.heads.insert(patient.to_owned(), head);
        Ok(head)
    }

    /// Numbers and links `drafts`, splices each one's place into it and computes its leaf.
    /// Changes nothing until `committed`: a round that fails to store leaves the trail as it
    /// was.
    pub async fn prepare(
        &mut self,
        records: &dyn Records,
        drafts: Vec<Draft>,
    ) -> Result<Prepared, AuditError> {
        let first = self.next;
        let mut heads: Vec<(String, Head)> = Vec::new();
        let mut finished = Vec::with_capacity(drafts.len());
        let mut leaves = Vec::with_capacity(drafts.len());
        let mut extension = String::with_capacity(512);
        for (offset, draft) in drafts.into_iter().enumerate() {
            let seq = first + offset as u64;
            extension.clear();
            extension.push_str("[{\"extension\":[{\"url\":\"replica\",\"valueString\":");
            write_string(&self.replica, &mut extension);
            let _ = write!(
                extension,
                "}},{{\"url\":\"sequence\",\"valueString\":\"{seq}\"}},{{\"url\":\"round\",\
                 \"valueString\":\"{first}\"}}],\"url\":\"{SEQUENCE_URL}\"}}"
            );
            let mut links = Vec::with_capacity(draft.patients.len());
            for patient in &draft.patients {
                let previous = match heads.iter().rev().find(|(p, _)| p == patient) {
                    Some((_, head)) => Some(*head),
                    None => self.head(records, patient).await?,
                };
                let index = previous.map_or(0, |h| h.index + 1);
                let previous_leaf = previous.map_or(B256::ZERO, |h| h.leaf);
                extension.push_str(
                    ",{\"extension\":[{\"url\":\"patient\",\"valueReference\":{\"reference\":",
                );
                write_string(&format!("Patient/{patient}"), &mut extension);
                let _ = write!(
                    extension,
                    "}}}},{{\"url\":\"index\",\"valueString\":\"{index}\"}},{{\"url\":\"previous\",\
                     \"valueString\":\"{previous_leaf}\"}}],\"url\":\"{CHAIN_URL}\"}}"
                );
                links.push((patient.clone(), index));
            }
            extension.push(']');
            let bytes = draft.finish(&extension);
            let leaf = keccak256(&bytes);
            for (patient, index) in links {
                heads.push((patient, Head { index, leaf }));
            }
            leaves.push(leaf);
            finished.push(Finished {
                id: draft.id,
                recorded: draft.recorded,
                bytes,
                patients: draft.patients,
                entries: draft.entries,
            });
        }
        let next = first + finished.len() as u64;
        let replica = &self.replica;
        let mut out = vec![
            record(TRAIL, replica.clone(), &TrailState { next }),
            record(
                ROUND,
                round_key(replica, first),
                &RoundRecord {
                    first,
                    leaves,
                    anchor: None,
                },
            ),
            record(&pending_kind(replica), format!("{first:020}"), &json!({})),
        ];
        // Each patient's newest link of the round is their head.
        let mut newest: HashMap<&str, Head> = HashMap::new();
        for (patient, head) in &heads {
            newest.insert(patient, *head);
        }
        for (patient, head) in newest {
            out.push(record(HEAD, format!("{replica}|{patient}"), &head));
        }
        Ok(Prepared {
            events: finished,
            records: out,
            advance: Advance { next, heads },
        })
    }

    /// The round was made durable: its state is now the trail's.
    pub fn committed(&mut self, advance: Advance) {
        self.next = advance.next;
        for (patient, head) in advance.heads {
            self.heads.insert(patient, Some(head));
        }
    }
}
