//! Index entries: the values a resource has for each of its search parameters, in the form a
//! search compares them, extracted by each parameter's FHIRPath expression.
//!
//! What each FHIR data type gives, per parameter type (FHIR R4 §3.1.1.4 "search parameter
//! types" and the table of which elements each type applies to):
//!
//! | param | element | entry values |
//! |---|---|---|
//! | string | string, markdown… | the text, folded (case, accents) and exact |
//! | string | HumanName | family, given, prefix, suffix, text, each |
//! | string | Address | line, city, district, state, postalCode, country, text, each |
//! | token | code, boolean, id, string, uri | code (no system) |
//! | token | Coding | system + code; its display as text |
//! | token | CodeableConcept | each coding; its text and codings' displays as text |
//! | token | Identifier | system + value; its type's codings with the value (`:of-type`) |
//! | token | ContactPoint | value (system = the contact point's `system`) |
//! | reference | Reference | the reference (`Type/id` when relative), its identifier |
//! | reference | canonical, uri | the URL |
//! | date | date, dateTime, instant | the period its precision denotes |
//! | date | Period | start to end (an open end is unbounded) |
//! | date | Timing | each event |
//! | number | integer, decimal | the value |
//! | quantity | Quantity (Age, Duration, Money…) | value with system, code and unit |
//! | quantity | Range | low to high |
//! | uri | uri, url, canonical | the URI |
//! | composite | (focus) | one entry per combination of its components' values |
//!
//! Must not touch storage: it maps a resource to entries.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::fhirpath::{Node, reference_parts};
use super::params::{ParamType, Registry, SearchParam};
use crate::fhir::instant;
use crate::fhir::json::Json;

/// One value a search parameter takes in a resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchEntry {
    /// The parameter's code (`name`, `code`, `date`).
    #[serde(rename = "p")]
    pub param: String,
    #[serde(flatten)]
    pub value: Value,
}

/// The comparable form of one value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Value {
    /// A string: `n` folded (lower case, accents removed) for the default prefix match and
    /// `:contains`; `x` exactly as written, for `:exact`.
    #[serde(rename = "s")]
    Str { n: String, x: String },
    /// A coded value: system and code as written (either may be absent).
    #[serde(rename = "t")]
    Token {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        s: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        c: Option<String>,
    },
    /// The human text of a coded value (display, CodeableConcept.text), folded: `:text`.
    #[serde(rename = "x")]
    Text { n: String },
    /// An identifier's value with its type's coding: `:of-type`.
    #[serde(rename = "o")]
    OfType { s: String, c: String, v: String },
    /// A reference: `Type/id` for a relative one (or one to this server), else the URL as
    /// written; `t` its target type when known.
    #[serde(rename = "r")]
    Ref {
        r: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t: Option<String>,
    },
    /// A reference's logical identifier: `:identifier`.
    #[serde(rename = "i")]
    RefIdentifier {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        s: Option<String>,
        v: String,
    },
    /// A range of numbers, or of instants as milliseconds: dates, numbers, a Range.
    #[serde(rename = "n")]
    Range { lo: f64, hi: f64 },
    /// A quantity: its value range and unit.
    #[serde(rename = "q")]
    Quantity {
        lo: f64,
        hi: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        s: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        c: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        u: Option<String>,
    },
    /// A URI as written.
    #[serde(rename = "u")]
    Uri { u: String },
    /// One combination of a composite's component values, in component order.
    #[serde(rename = "c")]
    Composite { parts: Vec<Vec<Value>> },
}

/// The end of a range that has none (an ongoing Period, a Range without a high): finite, so
/// it survives JSON and BSON, and beyond any real value.
pub const UNBOUNDED_HIGH: f64 = 1.0e300;
pub const UNBOUNDED_LOW: f64 = -1.0e300;

/// Folds a string the way string search compares: Unicode decomposition, combining marks
/// removed, lower case. `Ménard` and `MENARD` both become `menard`.
pub fn fold(text: &str) -> String {
    text.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Most entries kept per parameter of one resource: a resource with more values than that in
/// one parameter is indexed on the first ones (a bound on index work per write).
const MAX_ENTRIES_PER_PARAM: usize = 1_000;

/// Every index entry of `resource` (of type `resource_type`, with its final `id` and `meta`).
pub fn extract(registry: &Registry, resource_type: &str, resource: &Json) -> Vec<SearchEntry> {
    let mut out = Vec::new();
    for param in registry.params_of(resource_type) {
        if !param.is_indexed() {
            continue;
        }
        let values = values_of(param, resource);
        // The same value twice (two names with one family) is one entry.
        let mut seen = std::collections::HashSet::new();
        for value in values.into_iter().take(MAX_ENTRIES_PER_PARAM) {
            if seen.insert(serde_json::to_string(&value).unwrap_or_default()) {
                out.push(SearchEntry {
                    param: param.code.clone(),
                    value,
                });
            }
        }
    }
    out
}

/// The values of one parameter in `resource`.
pub fn values_of(param: &SearchParam, resource: &Json) -> Vec<Value> {
    let Some(expression) = &param.expression else {
        return Vec::new();
    };
    let nodes = expression.evaluate(resource);
    if param.kind == ParamType::Composite {
        let mut out = Vec::new();
        for focus in nodes {
            let mut parts: Vec<Vec<Value>> = Vec::new();
            for component in &param.components {
                let values: Vec<Value> = component
                    .expression
                    .evaluate_at(resource, focus)
                    .into_iter()
                    .flat_map(|n| node_values(component.kind, n))
                    .collect();
                parts.push(values);
            }
            if parts.iter().all(|p| !p.is_empty()) {
                out.push(Value::Composite { parts });
            }
        }
        return out;
    }
    nodes
        .into_iter()
        .flat_map(|node| node_values(param.kind, node))
        .collect()
}

/// The values one node gives a parameter of type `kind`.
pub fn node_values(kind: ParamType, node: Node<'_>) -> Vec<Value> {
    let mut out = Vec::new();
    match kind {
        ParamType::String => string_values(node.value, &mut out),
        ParamType::Token => token_values(node, &mut out),
        ParamType::Reference => reference_values(node.value, &mut out),
        ParamType::Date => date_values(node.value, &mut out),
        ParamType::Number => {
            if let Some(v) = number(node.value) {
                out.push(Value::Range { lo: v, hi: v });
            }
        }
        ParamType::Quantity => quantity_values(node.value, &mut out),
        ParamType::Uri => {
            if let Json::String(u) = node.value {
                out.push(Value::Uri { u: u.clone() });
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
    out
}

fn text(value: &str) -> Value {
    Value::Str {
        n: fold(value),
        x: value.to_owned(),
    }
}

fn string_values(value: &Json, out: &mut Vec<Value>) {
    match value {
        Json::String(s) => out.push(text(s)),
        Json::Object(object) => {
            // HumanName and Address: their textual parts; other types their `text`.
            for key in [
                "family",
                "given",
                "prefix",
                "suffix",
                "text",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                match object.get(key) {
                    Some(Json::String(s)) => out.push(text(s)),
                    Some(Json::Array(items)) => {
                        for item in items {
                            if let Json::String(s) = item {
                                out.push(text(s));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn str_of<'a>(value: &'a Json, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Json::as_str)
}

fn coding_values(coding: &Json, out: &mut Vec<Value>) {
    let s = str_of(coding, "system").map(str::to_owned);
    let c = str_of(coding, "code").map(str::to_owned);
    if s.is_some() || c.is_some() {
        out.push(Value::Token { s, c });
    }
    if let Some(display) = str_of(coding, "display") {
        out.push(Value::Text { n: fold(display) });
    }
}

fn token_values(node: Node<'_>, out: &mut Vec<Value>) {
    let value = node.value;
    match value {
        Json::String(code) => out.push(Value::Token {
            s: None,
            c: Some(code.clone()),
        }),
        Json::Bool(b) => out.push(Value::Token {
            s: None,
            c: Some(b.to_string()),
        }),
        Json::Object(object) => {
            if let Some(Json::Array(codings)) = object.get("coding") {
                // CodeableConcept
                for coding in codings {
                    coding_values(coding, out);
                }
                if let Some(t) = str_of(value, "text") {
                    out.push(Value::Text { n: fold(t) });
                }
            } else if object.get("value").is_some()
                && (object.get("type").is_some()
                    || object.get("use").is_some()
                    || object.get("system").is_some()
                    || node.type_hint == Some("Identifier"))
                && object.get("code").is_none()
            {
                identifier_or_contact_values(value, out);
            } else if object.get("code").is_some() || object.get("system").is_some() {
                coding_values(value, out);
            } else if let Some(t) = str_of(value, "text") {
                out.push(Value::Text { n: fold(t) });
            } else if let Some(Json::String(v)) = object.get("value") {
                out.push(Value::Token {
                    s: None,
                    c: Some(v.clone()),
                });
            }
        }
        _ => {}
    }
}

/// Identifier (`system`, `value`, `type`) and ContactPoint (`system`, `value`, `use`).
fn identifier_or_contact_values(value: &Json, out: &mut Vec<Value>) {
    let v = str_of(value, "value").map(str::to_owned);
    out.push(Value::Token {
        s: str_of(value, "system").map(str::to_owned),
        c: v.clone(),
    });
    if let (Some(v), Some(Json::Array(codings))) =
        (v, value.get("type").and_then(|t| t.get("coding")))
    {
        for coding in codings {
            if let (Some(s), Some(c)) = (str_of(coding, "system"), str_of(coding, "code")) {
                out.push(Value::OfType {
                    s: s.to_owned(),
                    c: c.to_owned(),
                    v: v.clone(),
                });
            }
        }
    }
    if let Some(t) = value.get("type").and_then(|t| str_of(t, "text")) {
        out.push(Value::Text { n: fold(t) });
    }
}

/// `Type/id` for a relative reference or any URL ending in `Type/id` (with or without a
/// version), else the reference as written.
pub fn normalize_reference(reference: &str) -> (String, Option<String>) {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return (reference.to_owned(), None);
    }
    match reference_parts(reference) {
        Some((ty, id)) if !reference.contains("://") => (format!("{ty}/{id}"), Some(ty.to_owned())),
        Some((ty, _)) => (strip_version(reference), Some(ty.to_owned())),
        None => (reference.to_owned(), None),
    }
}

fn strip_version(reference: &str) -> String {
    match reference.find("/_history/") {
        Some(at) => reference[..at].to_owned(),
        None => reference.to_owned(),
    }
}

fn reference_values(value: &Json, out: &mut Vec<Value>) {
    match value {
        Json::String(url) => out.push(Value::Ref {
            r: url.split('|').next().unwrap_or(url).to_owned(),
            t: None,
        }),
        Json::Object(_) => {
            if let Some(reference) = str_of(value, "reference") {
                let (r, t) = normalize_reference(reference);
                let t = t.or_else(|| str_of(value, "type").map(str::to_owned));
                out.push(Value::Ref { r, t });
            }
            if let Some(identifier) = value.get("identifier")
                && let Some(v) = str_of(identifier, "value")
            {
                out.push(Value::RefIdentifier {
                    s: str_of(identifier, "system").map(str::to_owned),
                    v: v.to_owned(),
                });
            }
        }
        _ => {}
    }
}

/// A period in milliseconds, as a range of f64 (exact: every instant of years 0-9999 fits).
fn period_of(text: &str) -> Option<(f64, f64)> {
    instant::period(text).map(|(lo, hi)| (lo as f64, hi as f64))
}

fn date_values(value: &Json, out: &mut Vec<Value>) {
    match value {
        Json::String(text) => {
            if let Some((lo, hi)) = period_of(text) {
                out.push(Value::Range { lo, hi });
            }
        }
        Json::Object(object) => {
            if object.get("start").is_some() || object.get("end").is_some() {
                // Period: an absent end is ongoing, an absent start unknown.
                let lo = str_of(value, "start")
                    .and_then(period_of)
                    .map_or(UNBOUNDED_LOW, |p| p.0);
                let hi = str_of(value, "end")
                    .and_then(period_of)
                    .map_or(UNBOUNDED_HIGH, |p| p.1);
                out.push(Value::Range { lo, hi });
            } else if let Some(Json::Array(events)) = object.get("event") {
                // Timing
                for event in events {
                    date_values(event, out);
                }
            }
        }
        _ => {}
    }
}

/// The value of a JSON number (or of a Quantity's `value`).
fn number(value: &Json) -> Option<f64> {
    match value {
        Json::Number(text) => text.parse().ok(),
        _ => None,
    }
}

fn quantity_values(value: &Json, out: &mut Vec<Value>) {
    let Json::Object(object) = value else {
        if let Some(v) = number(value) {
            out.push(Value::Quantity {
                lo: v,
                hi: v,
                s: None,
                c: None,
                u: None,
            });
        }
        return;
    };
    if object.get("low").is_some() || object.get("high").is_some() {
        // Range: its bounds are Quantities of one unit.
        let low = object.get("low");
        let high = object.get("high");
        let lo = low.and_then(|q| q.get("value")).and_then(number);
        let hi = high.and_then(|q| q.get("value")).and_then(number);
        let unit_of = low.or(high);
        out.push(Value::Quantity {
            lo: lo.unwrap_or(UNBOUNDED_LOW),
            hi: hi.unwrap_or(UNBOUNDED_HIGH),
            s: unit_of.and_then(|q| str_of(q, "system")).map(str::to_owned),
            c: unit_of.and_then(|q| str_of(q, "code")).map(str::to_owned),
            u: unit_of.and_then(|q| str_of(q, "unit")).map(str::to_owned),
        });
        return;
    }
    if let Some(v) = object.get("value").and_then(number) {
        out.push(Value::Quantity {
            lo: v,
            hi: v,
            s: str_of(value, "system").map(str::to_owned),
            c: str_of(value, "code")
                .or_else(|| str_of(value, "currency"))
                .map(str::to_owned),
            u: str_of(value, "unit").map(str::to_owned),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::json;

    fn entries(body: &str) -> Vec<SearchEntry> {
        let resource = json::parse(body.as_bytes()).unwrap();
        let rt = resource.get("resourceType").and_then(Json::as_str).unwrap();
        extract(Registry::r4(), rt, &resource)
    }

    fn of<'a>(entries: &'a [SearchEntry], param: &str) -> Vec<&'a Value> {
        entries
            .iter()
            .filter(|e| e.param == param)
            .map(|e| &e.value)
            .collect()
    }

    #[test]
    fn folds_case_and_accents() {
        assert_eq!(fold("Ménard"), "menard");
        assert_eq!(fold("ÅSTRÖM"), "astrom");
        assert_eq!(fold("Zoë"), "zoe");
    }

    #[test]
    fn extracts_a_patient() {
        let e = entries(
            r#"{"resourceType":"Patient","id":"p1","meta":{"lastUpdated":"2024-01-02T03:04:05.678Z","tag":[{"system":"urn:t","code":"x"}]},
                "identifier":[{"system":"urn:mrn","value":"123","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]}}],
                "name":[{"family":"Ménard","given":["Zoë","Anne"]}],"gender":"female","birthDate":"1970-05",
                "telecom":[{"system":"phone","value":"555-1234"}],"deceasedBoolean":false,
                "generalPractitioner":[{"reference":"Practitioner/d1"}],"address":[{"city":"Québec"}]}"#,
        );
        assert!(of(&e, "family").contains(&&Value::Str {
            n: "menard".into(),
            x: "Ménard".into()
        }));
        assert_eq!(of(&e, "given").len(), 2);
        assert!(of(&e, "name").len() >= 3);
        assert!(of(&e, "identifier").contains(&&Value::Token {
            s: Some("urn:mrn".into()),
            c: Some("123".into())
        }));
        assert!(of(&e, "identifier").contains(&&Value::OfType {
            s: "http://terminology.hl7.org/CodeSystem/v2-0203".into(),
            c: "MR".into(),
            v: "123".into()
        }));
        assert_eq!(
            of(&e, "gender"),
            [&Value::Token {
                s: None,
                c: Some("female".into())
            }]
        );
        assert_eq!(
            of(&e, "deceased"),
            [&Value::Token {
                s: None,
                c: Some("false".into())
            }]
        );
        let Value::Range { lo, hi } = of(&e, "birthdate")[0] else {
            panic!("a range")
        };
        assert_eq!(
            (
                instant::format_instant(*lo as i64),
                instant::format_instant(*hi as i64)
            ),
            (
                "1970-05-01T00:00:00.000Z".to_owned(),
                "1970-05-31T23:59:59.999Z".to_owned()
            )
        );
        assert_eq!(
            of(&e, "general-practitioner"),
            [&Value::Ref {
                r: "Practitioner/d1".into(),
                t: Some("Practitioner".into())
            }]
        );
        assert!(of(&e, "_id").contains(&&Value::Token {
            s: None,
            c: Some("p1".into())
        }));
        assert!(!of(&e, "_lastUpdated").is_empty());
        assert!(of(&e, "_tag").contains(&&Value::Token {
            s: Some("urn:t".into()),
            c: Some("x".into())
        }));
        assert!(of(&e, "phone").contains(&&Value::Token {
            s: Some("phone".into()),
            c: Some("555-1234".into())
        }));
        assert!(of(&e, "address-city").contains(&&Value::Str {
            n: "quebec".into(),
            x: "Québec".into()
        }));
    }

    #[test]
    fn extracts_an_observation_with_a_composite() {
        let e = entries(
            r#"{"resourceType":"Observation","id":"o","status":"final","subject":{"reference":"http://other.example/fhir/Patient/p9/_history/2"},
                "code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic"}],"text":"BP sys"},
                "effectivePeriod":{"start":"2020-01-01T10:00:00Z"},
                "valueQuantity":{"value":120.5,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}"#,
        );
        assert!(of(&e, "code").contains(&&Value::Text { n: "bp sys".into() }));
        assert!(of(&e, "code").contains(&&Value::Text {
            n: "systolic".into()
        }));
        assert_eq!(
            of(&e, "subject"),
            [&Value::Ref {
                r: "http://other.example/fhir/Patient/p9".into(),
                t: Some("Patient".into())
            }]
        );
        let Value::Range { hi, .. } = of(&e, "date")[0] else {
            panic!("a range")
        };
        assert_eq!(*hi, UNBOUNDED_HIGH, "an ongoing period");
        assert_eq!(
            of(&e, "value-quantity"),
            [&Value::Quantity {
                lo: 120.5,
                hi: 120.5,
                s: Some("http://unitsofmeasure.org".into()),
                c: Some("mm[Hg]".into()),
                u: Some("mmHg".into())
            }]
        );
        let composite = of(&e, "code-value-quantity");
        assert_eq!(composite.len(), 1);
        let Value::Composite { parts } = composite[0] else {
            panic!("a composite")
        };
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn round_trips_through_json() {
        let e = entries(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1}}"#,
        );
        let text = serde_json::to_string(&e).unwrap();
        let back: Vec<SearchEntry> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }
}
