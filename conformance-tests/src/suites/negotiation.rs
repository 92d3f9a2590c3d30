//! Content negotiation: JSON in its spellings and FHIR versions, `_format`, `_pretty`, plain
//! refusals (406, 415) with an OperationOutcome for XML and other formats, and CORS for
//! browser apps.

use super::{SuiteContext, patient};
use crate::report::Report;

const SUITE: &str = "negotiation";

pub async fn run(ctx: &SuiteContext, report: &mut Report) {
    let c = &ctx.client;
    let created = c.post_json("Patient", &patient("Negotiation")).send().await;
    let id = created
        .json()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let path = format!("Patient/{id}");

    let accepted = [
        ("application/fhir+json", "Accept: application/fhir+json"),
        (
            "application/fhir+json; fhirVersion=4.0",
            "Accept with fhirVersion=4.0",
        ),
        (
            "application/fhir+json; fhirVersion=4.3",
            "Accept with fhirVersion=4.3 (fhir-sdk)",
        ),
        ("application/json", "Accept: application/json"),
        ("*/*", "Accept: */*"),
    ];
    for (accept, name) in accepted {
        let reply = c.get(&path).header("accept", accept).send().await;
        let json = reply.json().unwrap_or_default();
        report.check(
            SUITE,
            name,
            reply.status == 200 && json["id"] == id.as_str(),
            reply.summary(),
        );
    }
    for format in ["json", "application/fhir%2Bjson", "application/json"] {
        let reply = c.get(&format!("{path}?_format={format}")).send().await;
        report.check(
            SUITE,
            format!("_format={format}"),
            reply.status == 200 && reply.json().is_some(),
            reply.summary(),
        );
    }
    let pretty = c.get(&format!("{path}?_pretty=true")).send().await;
    report.check(
        SUITE,
        "_pretty=true indents the JSON",
        pretty.status == 200
            && pretty.body.windows(3).any(|w| w == b"\n  ")
            && pretty.json().is_some(),
        pretty.summary(),
    );
    let compact = c.get(&path).send().await;
    report.check(
        SUITE,
        "no _pretty gives compact JSON",
        !compact.body.contains(&b'\n') || compact.body.ends_with(b"\n"),
        String::new(),
    );

    for (accept, name) in [
        (
            "application/fhir+xml",
            "Accept: application/fhir+xml is 406",
        ),
        ("application/xml", "Accept: application/xml is 406"),
        (
            "application/fhir+json; fhirVersion=3.0",
            "Accept with fhirVersion=3.0 is 406",
        ),
    ] {
        let reply = c.get(&path).header("accept", accept).send().await;
        report.check(
            SUITE,
            name,
            reply.status == 406 && reply.is_outcome(),
            reply.summary(),
        );
    }
    for format in ["xml", "application/fhir%2Bxml", "ttl"] {
        let reply = c.get(&format!("{path}?_format={format}")).send().await;
        report.check(
            SUITE,
            format!("_format={format} is 406"),
            reply.status == 406 && reply.is_outcome(),
            reply.summary(),
        );
    }
    let xml_body =
        b"<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/></Patient>".to_vec();
    for content_type in ["application/fhir+xml", "application/xml", "text/plain"] {
        let reply = c
            .request(reqwest::Method::POST, "Patient")
            .header("content-type", content_type)
            .body(xml_body.clone())
            .send()
            .await;
        report.check(
            SUITE,
            format!("a body sent as {content_type} is 415"),
            reply.status == 415 && reply.is_outcome(),
            reply.summary(),
        );
    }
    let fhir_sdk_style = c
        .post_json("Patient", &patient("FhirSdk"))
        .header("accept", "application/fhir+json; fhirVersion=4.3")
        .header("content-type", "application/fhir+json; fhirVersion=4.3")
        .send()
        .await;
    report.check(
        SUITE,
        "a create labelled fhirVersion=4.3 is accepted",
        fhir_sdk_style.status == 201,
        fhir_sdk_style.summary(),
    );

    // Browser apps on another origin: a preflight, then the real request (CapabilityStatement
    // `rest.security.cors` says whether a server claims this).
    let origin = "https://app.example";
    let preflight = c
        .request(reqwest::Method::OPTIONS, &path)
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header(
            "access-control-request-headers",
            "authorization, content-type, if-match",
        )
        .send()
        .await;
    let allowed = |name: &str| {
        preflight
            .header(name)
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    report.check(
        SUITE,
        "a CORS preflight allows the FHIR methods and headers",
        preflight.status.is_success()
            && allowed("access-control-allow-origin") == "*"
            && allowed("access-control-allow-methods").contains("put")
            && allowed("access-control-allow-headers").contains("authorization")
            && allowed("access-control-allow-headers").contains("if-match"),
        format!("{} {:?}", preflight.status.as_u16(), preflight.headers),
    );
    let cross_origin = c.get(&path).header("origin", origin).send().await;
    let exposed = cross_origin
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    report.check(
        SUITE,
        "a cross-origin read exposes ETag and Location to the app",
        cross_origin.status == 200
            && cross_origin
                .header("access-control-allow-origin")
                .as_deref()
                == Some("*")
            && exposed.contains("etag")
            && exposed.contains("location"),
        format!("{} {exposed}", cross_origin.status.as_u16()),
    );
}
