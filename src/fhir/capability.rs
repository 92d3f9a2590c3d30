//! The CapabilityStatement, generated from what the server really does: every storable type
//! with the interactions the router serves, the formats content negotiation accepts, and the
//! versioning and conditional behaviour the repository implements.
//!
//! Must not claim anything the code does not do: when a route or behaviour is added, it is
//! added here in the same change (the conformance runner checks the statement against the
//! server's answers).

use super::json::{Json, object};
use super::resource::ResourceType;

/// The instance and type interactions served for every resource type.
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// One search parameter as the statement lists it: code, type, definition URL.
pub type SearchParamFacts = (String, String, String);

/// What is fixed about this build; the rest comes from the running server.
pub struct ServerFacts<'a> {
    pub base_url: &'a str,
    pub software_version: &'a str,
    /// When the server started: the statement's `date`.
    pub started_at: &'a str,
    /// The authorization server's endpoints, for the SMART `oauth-uris` extension:
    /// (name, URL) pairs such as ("token", "http://…/auth/token").
    pub oauth_uris: &'a [(&'a str, String)],
    /// The search parameters in force for a type (official and custom).
    pub search_params: &'a dyn Fn(ResourceType) -> Vec<SearchParamFacts>,
}

/// Bulk Data Access 2.0's export, served at the system level, on Patient and on a Group.
const EXPORT_DEFINITION: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export";
const EXPORT_DOCUMENTATION: &str = "Bulk Data export (async: Prefer: respond-async, 202 and Content-Location, poll for X-Progress then the manifest, DELETE cancels): _type, _since and _outputFormat=application/fhir+ndjson; one or more NDJSON files per type, holding exactly what the token could read (scopes and the patients' consent), served only to the client that asked, removed after the retention time";

pub fn capability_statement(facts: &ServerFacts<'_>) -> Json {
    let resources: Vec<Json> = ResourceType::all()
        .map(|t| resource_entry(t, &(facts.search_params)(t)))
        .collect();
    object([
        ("resourceType", Json::str("CapabilityStatement")),
        ("status", Json::str("active")),
        ("date", Json::str(facts.started_at)),
        ("publisher", Json::str("IntelliHealth")),
        ("kind", Json::str("instance")),
        (
            "instantiates",
            Json::Array(vec![Json::str(
                "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data",
            )]),
        ),
        (
            "software",
            object([
                ("name", Json::str("IntelliHealth")),
                ("version", Json::str(facts.software_version)),
            ]),
        ),
        (
            "implementation",
            object([
                (
                    "description",
                    Json::str("IntelliHealth FHIR R4 server: sealed content-addressed storage"),
                ),
                ("url", Json::str(facts.base_url)),
            ]),
        ),
        ("fhirVersion", Json::str("4.0.1")),
        (
            "format",
            Json::Array(vec![Json::str("application/fhir+json"), Json::str("json")]),
        ),
        // The two kinds of PATCH body: JSON Patch, and FHIRPath Patch (a Parameters resource).
        (
            "patchFormat",
            Json::Array(vec![
                Json::str("application/json-patch+json"),
                Json::str("application/fhir+json"),
            ]),
        ),
        (
            "rest",
            Json::Array(vec![object([
                ("mode", Json::str("server")),
                ("security", security(facts)),
                ("resource", Json::Array(resources)),
                (
                    "interaction",
                    Json::Array(vec![
                        object([("code", Json::str("transaction"))]),
                        object([("code", Json::str("batch"))]),
                        object([("code", Json::str("history-system"))]),
                        object([("code", Json::str("search-system"))]),
                    ]),
                ),
                (
                    "operation",
                    Json::Array(vec![
                        object([
                            ("name", Json::str("reindex")),
                            (
                                "definition",
                                Json::str(
                                    "https://intellihealth.dev/fhir/OperationDefinition/reindex",
                                ),
                            ),
                            (
                                "documentation",
                                Json::str(
                                    "POST starts rebuilding the search entries made under other search parameters; GET reports progress (admin token)",
                                ),
                            ),
                        ]),
                        object([
                            ("name", Json::str("export")),
                            ("definition", Json::str(EXPORT_DEFINITION)),
                            ("documentation", Json::str(EXPORT_DOCUMENTATION)),
                        ]),
                    ]),
                ),
            ])]),
        ),
    ])
}

/// `rest.security`: SMART on FHIR, with the authorization server's endpoints.
fn security(facts: &ServerFacts<'_>) -> Json {
    let uris = facts
        .oauth_uris
        .iter()
        .map(|(name, url)| object([("url", Json::str(*name)), ("valueUri", Json::str(url))]))
        .collect();
    object([
        (
            "extension",
            Json::Array(vec![object([
                (
                    "url",
                    Json::str(
                        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    ),
                ),
                ("extension", Json::Array(uris)),
            ])]),
        ),
        ("cors", Json::Bool(true)),
        (
            "service",
            Json::Array(vec![object([(
                "coding",
                Json::Array(vec![object([
                    (
                        "system",
                        Json::str("http://terminology.hl7.org/CodeSystem/restful-security-service"),
                    ),
                    ("code", Json::str("SMART-on-FHIR")),
                ])]),
            )])]),
        ),
        (
            "description",
            Json::str(
                "Every request needs a SMART on FHIR access token (App Launch 2.0, scopes v1 and v2). A patient's data is served to the patient, to custodian clients, and to others only under the patient's grant on the ConsentRegistry contract (Consent/$prepare); a practitioner may break the glass with the header X-Purpose-Of-Use: BTG and a reason in X-Break-Glass-Reason, which is recorded on chain.",
            ),
        ),
    ])
}

/// The interactions of a type only the server writes (its audit trail).
const READ_ONLY_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "history-instance",
    "history-type",
    "search-type",
];

fn resource_entry(resource_type: ResourceType, params: &[SearchParamFacts]) -> Json {
    let server_written = resource_type == ResourceType::AUDIT_EVENT;
    let served = if server_written {
        READ_ONLY_INTERACTIONS
    } else {
        TYPE_INTERACTIONS
    };
    // A Consent that mirrors a grant changes only by the patient's signature: no patch, no
    // conditional writes.
    let conditional = !server_written && resource_type != ResourceType::CONSENT;
    let interactions = served
        .iter()
        .filter(|code| conditional || **code != "patch")
        .map(|code| object([("code", Json::str(*code))]))
        .collect();
    let search_params: Vec<Json> = params
        .iter()
        .map(|(code, kind, url)| {
            object([
                ("name", Json::str(code)),
                ("definition", Json::str(url)),
                ("type", Json::str(kind)),
            ])
        })
        .collect();
    let includes: Vec<Json> = std::iter::once(Json::str("*"))
        .chain(
            params
                .iter()
                .filter(|(_, kind, _)| kind == "reference")
                .map(|(code, _, _)| Json::str(format!("{resource_type}:{code}"))),
        )
        .collect();
    let mut entry = object([
        ("type", Json::str(resource_type.as_str())),
        (
            "profile",
            Json::str(format!(
                "http://hl7.org/fhir/StructureDefinition/{resource_type}"
            )),
        ),
        ("interaction", Json::Array(interactions)),
        ("versioning", Json::str("versioned-update")),
        ("readHistory", Json::Bool(true)),
        ("updateCreate", Json::Bool(!server_written)),
        ("conditionalCreate", Json::Bool(conditional)),
        ("conditionalRead", Json::str("full-support")),
        ("conditionalUpdate", Json::Bool(conditional)),
        (
            "conditionalDelete",
            Json::str(if conditional {
                "multiple"
            } else {
                "not-supported"
            }),
        ),
        ("searchInclude", Json::Array(includes)),
        ("searchParam", Json::Array(search_params)),
    ]);
    let operation = |name: &str, definition: &str, documentation: &str| {
        object([
            ("name", Json::str(name)),
            ("definition", Json::str(definition)),
            ("documentation", Json::str(documentation)),
        ])
    };
    if server_written && let Some(fields) = entry.as_object_mut() {
        fields.insert_at(
            1,
            "documentation",
            Json::str(
                "Written by the server only: one for every interaction, durable before its \
                 response. Patients read their own (AuditEvent?patient=Patient/{id}&_sort=-date); \
                 others need a grant covering AuditEvent.",
            ),
        );
    }
    let operations = match resource_type.as_str() {
        "Patient" => vec![
            operation(
                "everything",
                "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                "The patient and everything in their compartment the token may see",
            ),
            operation(
                "wallet-binding",
                "https://intellihealth.dev/fhir/OperationDefinition/Patient-wallet-binding",
                "GET ?address= gives the EIP-712 typed data binding a wallet to the patient; POST a Parameters of address and signature binds it on chain (the patient or a custodian)",
            ),
            operation("export", EXPORT_DEFINITION, EXPORT_DOCUMENTATION),
            operation(
                "purge",
                "https://intellihealth.dev/fhir/OperationDefinition/Patient-purge",
                "Erasure at the patient's request (crypto-shredding): GET gives the EIP-712 typed data the patient's wallet signs; a custodian POSTs a Parameters with that signature, the erasure is recorded on chain (recordErasure), the patient's data key is destroyed, their index rows and blobs removed; every read of their resources is then 410, and their AuditEvents stay",
            ),
        ],
        "Consent" => vec![
            operation(
                "prepare",
                "https://intellihealth.dev/fhir/OperationDefinition/Consent-prepare",
                "The EIP-712 typed data of the grant a draft Consent describes (or of the revocation of a grant's Consent with status inactive); POST the Consent with the signature in the eip712-signature extension to grant, PUT it to revoke",
            ),
            operation(
                "request-access",
                "https://intellihealth.dev/fhir/OperationDefinition/Consent-request-access",
                "A practitioner (fhirUser Practitioner) asks a patient for access: POST a Parameters of patient (valueReference), type (valueCode, repeated; none = all), days (valueInteger 1-365, default 30) and reason (valueString); the server writes a Consent with status proposed (201), or answers the practitioner's request to that patient already pending (200). It grants nothing: the patient signs a grant",
            ),
            operation(
                "answer",
                "https://intellihealth.dev/fhir/OperationDefinition/Consent-answer",
                "The patient answers an access request (POST Consent/{id}/$answer): answer declined (the request becomes rejected) or approved with grant, the id of the active grant they signed for the requester (the request becomes inactive, referencing the grant's Consent)",
            ),
            operation(
                "granted-to-me",
                "https://intellihealth.dev/fhir/OperationDefinition/Consent-granted-to-me",
                "GET: a collection Bundle of the Consents mirroring the active, unexpired grants to the caller (its fhirUser; a backend service's client id)",
            ),
            operation(
                "grantees",
                "https://intellihealth.dev/fhir/OperationDefinition/Consent-grantees",
                "GET ?name=: whom a patient can grant to, at most 50: Practitioners and Organizations (id and name) and registered confidential clients (Basic entries with the client id)",
            ),
        ],
        "Group" => vec![operation("export", EXPORT_DEFINITION, EXPORT_DOCUMENTATION)],
        "AuditEvent" => vec![operation(
            "verify",
            "https://intellihealth.dev/fhir/OperationDefinition/AuditEvent-verify",
            "Where the AuditEvent is anchored on chain: its leaf (keccak256 of its RFC 8785 form), the Merkle proof (sorted pairs), the root, the anchoring transaction and block, and the AuditAnchor contract's address; or 'not anchored yet' with the expected time",
        )],
        _ => Vec::new(),
    };
    if !operations.is_empty()
        && let Some(fields) = entry.as_object_mut()
    {
        fields.insert("operation", Json::Array(operations));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::validate::{Handling, validate};

    #[test]
    fn is_a_valid_r4_capability_statement_covering_every_type() {
        let statement = capability_statement(&ServerFacts {
            base_url: "http://localhost/fhir",
            software_version: "0.1.0",
            started_at: "2024-01-01T00:00:00Z",
            oauth_uris: &[("token", "http://localhost/auth/token".into())],
            search_params: &|_| {
                vec![(
                    "_id".to_owned(),
                    "token".to_owned(),
                    "http://hl7.org/fhir/SearchParameter/Resource-id".to_owned(),
                )]
            },
        });
        validate(&statement, Handling::Strict).expect("valid CapabilityStatement");
        let patch_formats = statement.get("patchFormat").unwrap().as_array().unwrap();
        assert_eq!(patch_formats.len(), 2, "JSON Patch and FHIRPath Patch");
        let rest = &statement.get("rest").unwrap().as_array().unwrap()[0];
        assert_eq!(rest.get("resource").unwrap().as_array().unwrap().len(), 145);
    }
}
