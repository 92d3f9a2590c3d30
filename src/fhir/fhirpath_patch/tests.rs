//! Every operation, through one helper: a resource, a patch, and the resource expected (or
//! the words the refusal must contain).

use crate::fhir::json::parse;
use crate::fhir::patch::{PatchDocument, PatchFormat};

/// One `operation` parameter: its type, path, and other parts given as `("name", r#""valueX": …"#)`.
fn op(kind: &str, path: &str, parts: &[(&str, &str)]) -> String {
    let mut out = format!(
        r#"{{"name":"operation","part":[{{"name":"type","valueCode":"{kind}"}},{{"name":"path","valueString":"{path}"}}"#
    );
    for (name, value) in parts {
        out.push_str(&format!(r#",{{"name":"{name}",{value}}}"#));
    }
    out.push_str("]}");
    out
}

/// A FHIRPath Patch of `operations`.
fn patch(operations: &[String]) -> String {
    format!(
        r#"{{"resourceType":"Parameters","parameter":[{}]}}"#,
        operations.join(",")
    )
}

/// Applies `patch` to `resource`: the result must be `expected` (compact JSON), or an error
/// containing the words of `Err`. The resource given is never changed.
fn check(resource: &str, patch: &str, expected: Result<&str, &str>) {
    let document = parse(resource.as_bytes()).unwrap();
    let before = document.clone();
    let got = PatchDocument::parse(PatchFormat::FhirPath, patch.as_bytes())
        .and_then(|p| p.apply(&document))
        .map(|r| String::from_utf8(r.to_bytes()).unwrap())
        .map_err(|e| e.to_string());
    match (&got, expected) {
        (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{patch}"),
        (Err(got), Err(words)) => assert!(got.contains(words), "{got:?} lacks {words:?}"),
        _ => panic!("{patch}\ngot {got:?}, expected {expected:?}"),
    }
    assert_eq!(document, before, "the resource given is unchanged");
}

const PATIENT: &str = r#"{"resourceType":"Patient","identifier":[{"system":"a","value":"1"},{"system":"b","value":"2"},{"system":"c","value":"3"}],"name":[{"family":"Doe","given":["Jo","Ann"],"_given":[null,{"extension":[{"url":"u","valueString":"x"}]}]}],"birthDate":"1970-01-01"}"#;

const OBSERVATION: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"w"},"valueQuantity":{"value":1.0,"unit":"kg"},"note":[{"text":"n"}]}"#;

#[test]
fn replaces_one_element() {
    check(
        PATIENT,
        &patch(&[op(
            "replace",
            "Patient.birthDate",
            &[("value", r#""valueDate":"1980-02-03""#)],
        )]),
        Ok(&PATIENT.replace("1970-01-01", "1980-02-03")),
    );
    check(
        PATIENT,
        &patch(&[op(
            "replace",
            "Patient.identifier.where(system = 'b').value",
            &[("value", r#""valueString":"22""#)],
        )]),
        Ok(&PATIENT.replace(r#""value":"2""#, r#""value":"22""#)),
    );
    // Decimals keep the digits the client wrote.
    check(
        OBSERVATION,
        &patch(&[op(
            "replace",
            "Observation.value.value",
            &[("value", r#""valueDecimal":1.50"#)],
        )]),
        Ok(&OBSERVATION.replace("1.0", "1.50")),
    );
    // A choice given a value of another type is re-keyed, in its place.
    check(
        OBSERVATION,
        &patch(&[op(
            "replace",
            "Observation.value",
            &[("value", r#""valueString":"heavy""#)],
        )]),
        Ok(&OBSERVATION.replace(
            r#""valueQuantity":{"value":1.0,"unit":"kg"}"#,
            r#""valueString":"heavy""#,
        )),
    );
    // A complex value as parts, shaped by the element's type.
    check(
        PATIENT,
        &patch(&[op(
            "replace",
            "Patient.name[0]",
            &[(
                "value",
                r#""part":[{"name":"family","valueString":"Roe"},{"name":"given","valueString":"Al"}]"#,
            )],
        )]),
        Ok(&PATIENT.replace(
            r#"{"family":"Doe","given":["Jo","Ann"],"_given":[null,{"extension":[{"url":"u","valueString":"x"}]}]}"#,
            r#"{"family":"Roe","given":["Al"]}"#,
        )),
    );
    // Replacing a primitive of a list drops its old extensions.
    check(
        PATIENT,
        &patch(&[op(
            "replace",
            "Patient.name.given.last()",
            &[("value", r#""valueString":"Anne""#)],
        )]),
        Ok(&PATIENT.replace(
            r#"["Jo","Ann"],"_given":[null,{"extension":[{"url":"u","valueString":"x"}]}]"#,
            r#"["Jo","Anne"]"#,
        )),
    );
}

#[test]
fn adds_an_element() {
    let bare = r#"{"resourceType":"Patient","active":true}"#;
    check(
        bare,
        &patch(&[op(
            "add",
            "Patient",
            &[
                ("name", r#""valueString":"birthDate""#),
                ("value", r#""valueDate":"2001-01-01""#),
            ],
        )]),
        Ok(r#"{"resourceType":"Patient","active":true,"birthDate":"2001-01-01"}"#),
    );
    // A repeating element becomes a list; one given in parts is a list of one.
    check(
        bare,
        &patch(&[op(
            "add",
            "Patient",
            &[
                ("name", r#""valueString":"name""#),
                (
                    "value",
                    r#""part":[{"name":"family","valueString":"Doe"},{"name":"given","valueString":"Jo"}]"#,
                ),
            ],
        )]),
        Ok(r#"{"resourceType":"Patient","active":true,"name":[{"family":"Doe","given":["Jo"]}]}"#),
    );
    // Appended to an existing list; a typed complex value as it is.
    check(
        PATIENT,
        &patch(&[op(
            "add",
            "Patient",
            &[
                ("name", r#""valueString":"identifier""#),
                ("value", r#""valueIdentifier":{"system":"d","value":"4"}"#),
            ],
        )]),
        Ok(&PATIENT.replace(
            r#"{"system":"c","value":"3"}]"#,
            r#"{"system":"c","value":"3"},{"system":"d","value":"4"}]"#,
        )),
    );
    // A choice is keyed by its value's type; a primitive list's extensions stay aligned.
    check(
        PATIENT,
        &patch(&[
            op(
                "add",
                "Patient",
                &[("name", r#""valueString":"deceased""#), ("value", r#""valueBoolean":false"#)],
            ),
            op(
                "add",
                "Patient.name[0]",
                &[("name", r#""valueString":"given""#), ("value", r#""valueString":"Lee""#)],
            ),
        ]),
        Ok(&PATIENT
            .replace(r#""Ann"],"_given":[null,{"extension":[{"url":"u","valueString":"x"}]}]"#,
                r#""Ann","Lee"],"_given":[null,{"extension":[{"url":"u","valueString":"x"}]},null]"#)
            .replace(r#""1970-01-01"}"#, r#""1970-01-01","deceasedBoolean":false}"#)),
    );
    check(
        PATIENT,
        &patch(&[op(
            "add",
            "Patient",
            &[
                ("name", r#""valueString":"birthDate""#),
                ("value", r#""valueDate":"2001-01-01""#),
            ],
        )]),
        Err("already there and does not repeat"),
    );
    check(
        PATIENT,
        &patch(&[op(
            "add",
            "Patient",
            &[
                ("name", r#""valueString":"colour""#),
                ("value", r#""valueString":"red""#),
            ],
        )]),
        Err("no element colour"),
    );
}

#[test]
fn inserts_into_a_list() {
    let inserted = |index: &str| {
        patch(&[op(
            "insert",
            "Patient.identifier",
            &[
                ("value", r#""valueIdentifier":{"value":"0"}"#),
                ("index", &format!(r#""valueInteger":{index}"#)),
            ],
        )])
    };
    check(
        PATIENT,
        &inserted("0"),
        Ok(&PATIENT.replace(r#""identifier":["#, r#""identifier":[{"value":"0"},"#)),
    );
    check(
        PATIENT,
        &inserted("3"),
        Ok(&PATIENT.replace(r#""value":"3"}]"#, r#""value":"3"},{"value":"0"}]"#)),
    );
    check(PATIENT, &inserted("4"), Err("past the end"));
    // Into a primitive list with extensions: they stay with their values.
    check(
        PATIENT,
        &patch(&[op(
            "insert",
            "Patient.name[0].given",
            &[
                ("value", r#""valueString":"Al""#),
                ("index", r#""valueInteger":1"#),
            ],
        )]),
        Ok(&PATIENT.replace(
            r#"["Jo","Ann"],"_given":[null,{"#,
            r#"["Jo","Al","Ann"],"_given":[null,null,{"#,
        )),
    );
    check(
        PATIENT,
        &patch(&[op(
            "insert",
            "Patient.birthDate",
            &[
                ("value", r#""valueDate":"2000-01-01""#),
                ("index", r#""valueInteger":0"#),
            ],
        )]),
        Err("does not repeat"),
    );
}

#[test]
fn deletes_one_element_or_nothing() {
    check(
        PATIENT,
        &patch(&[op("delete", "Patient.identifier.first()", &[])]),
        Ok(&PATIENT.replace(r#"{"system":"a","value":"1"},"#, "")),
    );
    // A primitive's extensions go with it.
    check(
        PATIENT,
        &patch(&[op("delete", "Patient.name.given[1]", &[])]),
        Ok(&PATIENT.replace(
            r#"["Jo","Ann"],"_given":[null,{"extension":[{"url":"u","valueString":"x"}]}]"#,
            r#"["Jo"]"#,
        )),
    );
    // What a delete leaves empty goes too: FHIR has no empty elements.
    check(
        r#"{"resourceType":"Patient","name":[{"family":"Doe"}],"active":true}"#,
        &patch(&[op("delete", "Patient.name.family", &[])]),
        Ok(r#"{"resourceType":"Patient","active":true}"#),
    );
    check(
        PATIENT,
        &patch(&[op("delete", "Patient.identifier.where(system = 'z')", &[])]),
        Ok(PATIENT),
    );
    check(
        PATIENT,
        &patch(&[op("delete", "Patient.identifier", &[])]),
        Err("matches 3 elements"),
    );
}

#[test]
fn moves_within_a_list() {
    check(
        PATIENT,
        &patch(&[op(
            "move",
            "Patient.identifier",
            &[
                ("source", r#""valueInteger":0"#),
                ("destination", r#""valueInteger":2"#),
            ],
        )]),
        Ok(&PATIENT.replace(
            r#"[{"system":"a","value":"1"},{"system":"b","value":"2"},{"system":"c","value":"3"}]"#,
            r#"[{"system":"b","value":"2"},{"system":"c","value":"3"},{"system":"a","value":"1"}]"#,
        )),
    );
    check(
        PATIENT,
        &patch(&[op(
            "move",
            "Patient.name.given",
            &[
                ("source", r#""valueInteger":1"#),
                ("destination", r#""valueInteger":0"#),
            ],
        )]),
        Ok(&PATIENT.replace(
            r#"["Jo","Ann"],"_given":[null,{"extension":[{"url":"u","valueString":"x"}]}]"#,
            r#"["Ann","Jo"],"_given":[{"extension":[{"url":"u","valueString":"x"}]},null]"#,
        )),
    );
    check(
        PATIENT,
        &patch(&[op(
            "move",
            "Patient.identifier",
            &[
                ("source", r#""valueInteger":3"#),
                ("destination", r#""valueInteger":0"#),
            ],
        )]),
        Err("below the list's 3 items"),
    );
}

#[test]
fn refuses_clearly_and_changes_nothing() {
    let replace = |path: &str| patch(&[op("replace", path, &[("value", r#""valueString":"x""#)])]);
    check(
        PATIENT,
        &replace("Patient.gender"),
        Err("matches nothing to replace"),
    );
    check(
        PATIENT,
        &replace("Patient.name.given"),
        Err("matches 2 elements"),
    );
    check(
        PATIENT,
        &replace("Observation.status"),
        Err("the resource is a Patient"),
    );
    check(
        PATIENT,
        &replace("Patient.name.exists()"),
        Err("exists() is not supported"),
    );
    check(
        PATIENT,
        &replace("Patient.name | Patient.address"),
        Err("'|' is not supported"),
    );
    check(
        PATIENT,
        &replace("name.family"),
        Err("must start with the resource type"),
    );
    check(
        PATIENT,
        &replace("Patient.birthDate.extension"),
        Err("primitive"),
    );
    check(
        PATIENT,
        &patch(&[op("frobnicate", "Patient.active", &[])]),
        Err("not one of add, insert, delete, replace, move"),
    );
    check(
        PATIENT,
        &patch(&[op("replace", "Patient.birthDate", &[])]),
        Err("the part value is missing"),
    );
    check(
        PATIENT,
        &patch(&[op(
            "delete",
            "Patient.active",
            &[("colour", r#""valueString":"red""#)],
        )]),
        Err("not one of FHIRPath Patch's"),
    );
    check(PATIENT, PATIENT, Err("is a Patient, not a Parameters"));
    check(
        PATIENT,
        r#"[{"op":"remove","path":"/active"}]"#,
        Err("a JSON array"),
    );
    check(PATIENT, "{", Err("not JSON"));
    // The first operation succeeds, the second fails: the whole patch fails (and `check`
    // asserts the resource given is untouched).
    check(
        PATIENT,
        &patch(&[
            op("delete", "Patient.birthDate", &[]),
            op(
                "replace",
                "Patient.gender",
                &[("value", r#""valueCode":"other""#)],
            ),
        ]),
        Err("operation 1 (replace) failed"),
    );
    // An empty patch changes nothing.
    check(PATIENT, &patch(&[]), Ok(PATIENT));
}
