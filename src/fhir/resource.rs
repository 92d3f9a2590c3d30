//! A resource on its way in: resource type names, ids, the URL/body rules of create and update,
//! and the server-owned `meta` (`versionId`, `lastUpdated`) stamped into the client's JSON.
//!
//! Must not touch storage: the caller decides the version number and the time.

use std::fmt::Write as _;

use rand::RngCore;

use super::definitions::Definitions;
use super::instant::format_instant;
use super::json::{self, Json};
use super::{FhirError, primitives};

/// A resource type this server stores: one of R4's 145 (all concrete types but `Parameters`,
/// which R4 defines as an operation payload with no REST endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    pub const PATIENT: ResourceType = ResourceType("Patient");
    pub const CONSENT: ResourceType = ResourceType("Consent");
    pub const AUDIT_EVENT: ResourceType = ResourceType("AuditEvent");

    pub fn parse(name: &str) -> Result<ResourceType, FhirError> {
        Self::all()
            .find(|t| t.0 == name)
            .ok_or_else(|| FhirError::UnknownType(name.to_owned()))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// All storable types, in alphabetical order.
    pub fn all() -> impl Iterator<Item = ResourceType> {
        Definitions::r4()
            .resource_types
            .iter()
            .filter(|t| t.as_str() != "Parameters")
            .map(|t| ResourceType(t.as_str()))
    }
}

/// A fresh logical id: a random (v4) UUID, so ids leak nothing about order or volume.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    uuid_text(bytes)
}

/// A fresh id that sorts by creation time: a v7 UUID (milliseconds since the epoch, then
/// randomness). For AuditEvents, which are made by the thousand a second and whose time is
/// in their content anyway: each round's index rows then land together at the end of every
/// id-ordered table instead of on a page each.
pub fn new_time_ordered_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let millis = crate::fhir::instant::now_millis().max(0) as u64;
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    uuid_text(bytes)
}

fn uuid_text(mut bytes: [u8; 16]) -> String {
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut id = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// Checks an id taken from a URL.
pub fn check_id(id: &str) -> Result<(), FhirError> {
    if primitives::is_id(id) {
        Ok(())
    } else {
        Err(FhirError::InvalidId(preview(id)))
    }
}

fn preview(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Parses a request body and checks it against the URL of a create (`url_id` = None) or an
/// update. Returns the JSON object as the client sent it.
pub fn parse_body(
    bytes: &[u8],
    url_type: ResourceType,
    url_id: Option<&str>,
) -> Result<Json, FhirError> {
    let body = json::parse(bytes)?;
    let Json::Object(object) = &body else {
        return Err(FhirError::Invalid(vec![super::Issue::error(
            super::IssueCode::Structure,
            format!("expected a resource object, found {}", body.kind()),
            None,
        )]));
    };
    match object.get("resourceType") {
        Some(Json::String(t)) if t == url_type.as_str() => {}
        Some(Json::String(t)) => {
            return Err(FhirError::TypeMismatch {
                url: url_type.as_str().to_owned(),
                body: preview(t),
            });
        }
        Some(_) | None => {
            return Err(FhirError::Invalid(vec![super::Issue::error(
                super::IssueCode::Required,
                "resourceType is missing or not a string".into(),
                Some("resourceType".into()),
            )]));
        }
    }
    // A create ignores the body's id, but an id that is not even an id is a broken resource.
    if let Some(id) = object.get("id")
        && !matches!(id, Json::String(text) if primitives::is_id(text))
    {
        return Err(FhirError::InvalidId(match id {
            Json::String(text) => preview(text),
            other => format!("(a JSON {})", other.kind()),
        }));
    }
    if let Some(url_id) = url_id {
        match object.get("id").and_then(Json::as_str) {
            Some(id) if id == url_id => {}
            Some(id) => {
                return Err(FhirError::IdMismatch {
                    url: url_id.to_owned(),
                    body: preview(id),
                });
            }
            None => return Err(FhirError::MissingId),
        }
    }
    Ok(body)
}

/// Sets the server-owned parts of a resource: its id and `meta.versionId`/`meta.lastUpdated`.
/// Everything else in `meta` (profiles, tags, security labels, source) is the client's.
pub fn stamp(resource: &mut Json, id: &str, version: u64, last_updated_millis: i64) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    object.insert_at(1, "id", Json::str(id));
    let mut meta = match object.remove("meta") {
        Some(Json::Object(meta)) => meta,
        _ => json::Object::new(),
    };
    meta.insert_at(0, "versionId", Json::str(version.to_string()));
    meta.insert_at(
        1,
        "lastUpdated",
        Json::str(format_instant(last_updated_millis)),
    );
    let position = object
        .iter()
        .position(|(k, _)| k == "id")
        .map_or(1, |p| p + 1);
    object.insert_at(position, "meta", Json::Object(meta));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_ids_are_v7_uuids_that_sort_by_time() {
        let first = new_time_ordered_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_time_ordered_id();
        assert!(first < second, "{first} then {second}");
        assert_eq!(&first[14..15], "7");
        assert!(matches!(&first[19..20], "8" | "9" | "a" | "b"));
        assert!(primitives::is_id(&first));
        assert_ne!(new_time_ordered_id(), new_time_ordered_id());
    }

    #[test]
    fn stamps_meta_and_keeps_the_clients_meta() {
        let mut r = json::parse(
            br#"{"resourceType":"Patient","meta":{"versionId":"9","profile":["http://p"]},"active":true}"#,
        )
        .unwrap();
        stamp(&mut r, "abc", 3, 1_700_000_000_123);
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            r#"{"resourceType":"Patient","id":"abc","meta":{"versionId":"3","lastUpdated":"2023-11-14T22:13:20.123Z","profile":["http://p"]},"active":true}"#
        );
    }

    #[test]
    fn checks_the_body_against_the_url() {
        let patient = ResourceType::parse("Patient").unwrap();
        let body = br#"{"resourceType":"Patient","id":"a"}"#;
        assert!(parse_body(body, patient, Some("a")).is_ok());
        assert!(matches!(
            parse_body(body, patient, Some("b")),
            Err(FhirError::IdMismatch { .. })
        ));
        assert!(matches!(
            parse_body(br#"{"resourceType":"Patient"}"#, patient, Some("a")),
            Err(FhirError::MissingId)
        ));
        assert!(matches!(
            parse_body(br#"{"resourceType":"Observation"}"#, patient, None),
            Err(FhirError::TypeMismatch { .. })
        ));
        assert!(matches!(
            parse_body(b"[1]", patient, None),
            Err(FhirError::Invalid(_))
        ));
    }

    #[test]
    fn knows_the_145_storable_types() {
        assert_eq!(ResourceType::all().count(), 145);
        assert!(ResourceType::parse("Parameters").is_err());
        assert!(ResourceType::parse("patient").is_err());
    }

    #[test]
    fn ids_are_valid_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert!(check_id(&id).is_ok());
        assert_ne!(id, new_id());
    }
}
