//! The bad-input corpus: bodies a careless or hostile client sends. Each must get a 4xx with
//! an OperationOutcome, through create and through update of an existing resource; afterwards
//! the server must still answer and the existing resource must be exactly as it was.

use super::{SuiteContext, patient};
use crate::report::Report;

const SUITE: &str = "bad-input";

/// One corpus entry: a name, the content type sent, and the body.
struct Case {
    name: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        content_type: "application/fhir+json",
        body: body.into(),
    }
}

/// A Patient body with one member replaced by raw JSON text.
fn patient_with(member: &str, raw_value: &str) -> Vec<u8> {
    format!(r#"{{"resourceType":"Patient","id":"ID","active":true,"{member}":{raw_value}}}"#)
        .into_bytes()
}

fn corpus() -> Vec<Case> {
    let valid = serde_json::to_vec(&patient("Truncated")).unwrap_or_default();
    let mut deep = String::from(r#"{"resourceType":"Patient","id":"ID","extension":"#);
    for _ in 0..1000 {
        deep.push_str(r#"[{"url":"http://example.org/x","extension":"#);
    }
    deep.push_str("[]");
    for _ in 0..1000 {
        deep.push_str("}]");
    }
    deep.push('}');
    let megabyte_string = format!("\"{}\"", "x".repeat(1024 * 1024 + 1));
    // Distinct keys, each unknown: the duplicate check must not be quadratic in them.
    let wide_object = patient_with(
        "extension",
        &format!(
            "[{{{}}}]",
            (0..300_000)
                .map(|i| format!("\"k{i}\":0"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    vec![
        case(
            "malformed: missing closing brace",
            r#"{"resourceType":"Patient","id":"ID","active":true"#,
        ),
        case(
            "malformed: bare word value",
            r#"{"resourceType":"Patient","id":"ID","active":yes}"#,
        ),
        case("malformed: single quotes", r#"{'resourceType':'Patient'}"#),
        case(
            "malformed: trailing comma",
            r#"{"resourceType":"Patient","id":"ID","active":true,}"#,
        ),
        case("malformed: not JSON at all", "this is not json"),
        case("malformed: empty body", ""),
        case("malformed: JSON null", "null"),
        case("malformed: a JSON array", "[]"),
        case("malformed: a JSON string", r#""Patient""#),
        case(
            "malformed: two documents",
            r#"{"resourceType":"Patient","id":"ID"}{"resourceType":"Patient"}"#,
        ),
        case(
            "truncated: half a valid body",
            valid[..valid.len() / 2].to_vec(),
        ),
        case(
            "truncated: cut inside a string",
            r#"{"resourceType":"Patient","id":"ID","name":[{"family":"Sm"#,
        ),
        case(
            "truncated: cut inside an escape",
            r#"{"resourceType":"Patient","id":"ID","name":[{"family":"\u00"#,
        ),
        case("no resourceType", r#"{"id":"ID","active":true}"#),
        case(
            "resourceType not a string",
            r#"{"resourceType":7,"id":"ID"}"#,
        ),
        case(
            "id with invalid characters",
            r#"{"resourceType":"Patient","id":"bad id!"}"#,
        ),
        case("a 1 MB string", patient_with("gender", &megabyte_string)),
        case(
            "a 1 MB name",
            format!(
                r#"{{"resourceType":"Patient","id":"ID","name":[{{"family":{megabyte_string}}}]}}"#
            ),
        ),
        case("1,000-level nesting", deep),
        case(
            "1,000-level bare arrays",
            "[".repeat(1000) + &"]".repeat(1000),
        ),
        case(
            "duplicate keys",
            r#"{"resourceType":"Patient","id":"ID","active":true,"active":false}"#,
        ),
        case(
            "duplicate resourceType",
            r#"{"resourceType":"Patient","resourceType":"Patient","id":"ID"}"#,
        ),
        case(
            "invalid date: February 30",
            patient_with("birthDate", r#""2023-02-30""#),
        ),
        case(
            "invalid date: month 13",
            patient_with("birthDate", r#""2023-13-01""#),
        ),
        case(
            "invalid date: words",
            patient_with("birthDate", r#""last tuesday""#),
        ),
        case(
            "invalid dateTime: hour 25",
            patient_with("deceasedDateTime", r#""2020-01-01T25:00:00Z""#),
        ),
        case(
            "invalid dateTime: a multi-byte character among the seconds",
            patient_with("deceasedDateTime", "\"2020-01-01T00:00:0\u{e9}Z\""),
        ),
        case(
            "invalid time: an escaped multi-byte character where the fraction starts",
            patient_with(
                "contained",
                r#"[{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"valueTime":"10:00:0\u00e9"}]"#,
            ),
        ),
        case("an object of 300,000 members", wide_object),
        case(
            "invalid dateTime: time without zone",
            patient_with("deceasedDateTime", r#""2020-01-01T10:00:00""#),
        ),
        case(
            "integer out of range",
            patient_with("multipleBirthInteger", "2147483648"),
        ),
        case(
            "integer with a fraction",
            patient_with("multipleBirthInteger", "2.5"),
        ),
        case(
            "integer of 400 digits",
            patient_with("multipleBirthInteger", &format!("1{}", "0".repeat(400))),
        ),
        case(
            "unsignedInt below zero",
            patient_with("photo", r#"[{"contentType":"image/png","size":-1}]"#),
        ),
        case(
            "decimal out of range",
            r#"{"resourceType":"Observation","id":"ID","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e999}}"#,
        ),
        case(
            "boolean as a string",
            patient_with("gender", r#""female","deceasedBoolean":"true""#),
        ),
        case(
            "array where one value belongs",
            patient_with("gender", r#"["female"]"#),
        ),
        case(
            "object where an array belongs",
            patient_with("name", r#"{"family":"x"}"#),
        ),
        case("code with a number", patient_with("gender", "5")),
        case(
            "code outside its required value set",
            patient_with("gender", r#""martian""#),
        ),
        case("null value", patient_with("gender", "null")),
        case("empty array", patient_with("name", "[]")),
        case("empty object", patient_with("name", "[{}]")),
        case("empty string", patient_with("gender", r#""""#)),
        case(
            "unknown element",
            patient_with("favouriteColour", r#""blue""#),
        ),
        case(
            "invalid UTF-8",
            b"{\"resourceType\":\"Patient\",\"id\":\"ID\",\"name\":[{\"family\":\"\xff\xfe\"}]}"
                .to_vec(),
        ),
        case(
            "lone surrogate escape",
            patient_with("name", r#"[{"family":"\ud800"}]"#),
        ),
        case(
            "raw control character in a string",
            patient_with("name", "[{\"family\":\"a\u{1}b\"}]"),
        ),
        case(
            "invalid contained resource",
            patient_with(
                "contained",
                r#"[{"resourceType":"Organization","id":"o","nonsense":1}]"#,
            ),
        ),
        case(
            "contained resource of an unknown type",
            patient_with("contained", r#"[{"resourceType":"Nonsense","id":"o"}]"#),
        ),
        Case {
            name: "wrong content type: text/plain",
            content_type: "text/plain",
            body: serde_json::to_vec(&patient("Plain")).unwrap_or_default(),
        },
        Case {
            name: "wrong content type: form encoded",
            content_type: "application/x-www-form-urlencoded",
            body: b"resourceType=Patient".to_vec(),
        },
        Case {
            name: "wrong content type: XML",
            content_type: "application/fhir+xml",
            body: b"<Patient xmlns=\"http://hl7.org/fhir\"/>".to_vec(),
        },
        case(
            "resourceType mismatch",
            r#"{"resourceType":"Observation","id":"ID","status":"final","code":{"text":"x"}}"#,
        ),
    ]
}

pub async fn run(ctx: &SuiteContext, report: &mut Report) {
    let c = &ctx.client;
    let sentinel = c.post_json("Patient", &patient("Sentinel")).send().await;
    let Some(sentinel_json) = sentinel.json() else {
        report.check(
            SUITE,
            "set-up: create the sentinel patient",
            false,
            sentinel.summary(),
        );
        return;
    };
    let id = sentinel_json["id"].as_str().unwrap_or_default().to_owned();
    let before = c.get(&format!("Patient/{id}")).send().await;

    for case in corpus() {
        let body = String::from_utf8_lossy(&case.body).replace("\"ID\"", &format!("\"{id}\""));
        let body = if std::str::from_utf8(&case.body).is_ok() {
            body.into_bytes()
        } else {
            case.body.clone()
        };
        let created = c
            .request(reqwest::Method::POST, "Patient")
            .header("content-type", case.content_type)
            .body(body.clone())
            .send()
            .await;
        report.check(
            SUITE,
            format!("create: {}", case.name),
            created.status.is_client_error() && created.is_outcome(),
            created.summary(),
        );
        let updated = c
            .request(reqwest::Method::PUT, &format!("Patient/{id}"))
            .header("content-type", case.content_type)
            .body(body)
            .send()
            .await;
        report.check(
            SUITE,
            format!("update: {}", case.name),
            updated.status.is_client_error() && updated.is_outcome(),
            updated.summary(),
        );
    }

    let after = c.get(&format!("Patient/{id}")).send().await;
    report.check(
        SUITE,
        "the existing resource is unchanged afterwards",
        after.status == 200
            && after.body == before.body
            && after.header("etag") == before.header("etag"),
        after.summary(),
    );
    let history = c
        .get(&format!("Patient/{id}/_history"))
        .send()
        .await
        .json()
        .unwrap_or_default();
    report.check(
        SUITE,
        "no version was added to the existing resource",
        history["entry"].as_array().map(Vec::len) == Some(1),
        format!(
            "{} entries",
            history["entry"]
                .as_array()
                .map(Vec::len)
                .unwrap_or_default()
        ),
    );
    let alive = c.get("metadata").send().await;
    report.check(
        SUITE,
        "the server still answers",
        alive.status == 200,
        alive.summary(),
    );
}
