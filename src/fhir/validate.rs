//! Validation of a resource against R4, in two passes.
//!
//! 1. **Structure, against R4 itself** (`definitions`): every key is a known element (or, under
//!    `Prefer: handling=lenient`, a warning), repeating elements are arrays and single ones are
//!    not, required elements are present, at most one type of a choice is used, primitives obey
//!    their lexical rules, no empty objects, arrays or strings, and nested resources
//!    (`contained`, Bundle entries) are checked the same way. This pass covers all 145 types.
//! 2. **Values, against fhir-sdk's typed R4B models**, for the resources whose R4B shape is the
//!    R4 shape: catches what a hand walk does not (required code bindings, for one). Skipped
//!    when the resource, or a resource nested in it, is one R4B dropped or reshaped.
//!
//! Must not touch storage or HTTP: it takes JSON and returns issues.

use std::collections::BTreeSet;

use super::definitions::{Definitions, Element, ElementType, Owner, Primitive};
use super::json::{Json, Object};
use super::primitives;
use super::{Issue, IssueCode};

/// Resource types R4B removed (so fhir-sdk cannot parse them) or restructured (so a valid R4
/// instance would fail R4B's rules). Found by parsing all 5,306 official R4 examples with the
/// R4B models: only these failed for a reason other than the example's own invalidity.
const R4B_CANNOT_VALIDATE: &[&str] = &[
    "EffectEvidenceSynthesis",
    "Evidence",
    "EvidenceVariable",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "RiskEvidenceSynthesis",
    "SubstanceSpecification",
];

/// At most this many issues are reported; a thoroughly wrong body needs no more to be fixed.
const MAX_ISSUES: usize = 50;

/// How strictly unknown elements are treated (`Prefer: handling=strict|lenient`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Handling {
    #[default]
    Strict,
    Lenient,
}

/// Validates a whole resource. `Ok` carries warnings (lenient mode); `Err` the errors found.
pub fn validate(resource: &Json, handling: Handling) -> Result<Vec<Issue>, Vec<Issue>> {
    let defs = Definitions::r4();
    let mut walk = Walk {
        defs,
        handling,
        issues: Vec::new(),
        resource_types: BTreeSet::new(),
    };
    walk.resource(resource, "");
    let has_errors = walk.issues.iter().any(Issue::is_error);
    if has_errors {
        return Err(walk.issues);
    }
    if walk
        .resource_types
        .iter()
        .all(|t| !R4B_CANNOT_VALIDATE.contains(&t.as_str()))
    {
        typed_r4b_check(resource)?;
    }
    Ok(walk.issues)
}

/// Without fhir-sdk (the fuzz targets' build), the second pass is skipped.
#[cfg(not(feature = "typed-validation"))]
fn typed_r4b_check(_resource: &Json) -> Result<(), Vec<Issue>> {
    Ok(())
}

/// Runs fhir-sdk's typed R4B deserialisation as the second pass.
#[cfg(feature = "typed-validation")]
fn typed_r4b_check(resource: &Json) -> Result<(), Vec<Issue>> {
    let bytes = resource.to_bytes();
    match serde_json::from_slice::<fhir_sdk::r4b::resources::Resource>(&bytes) {
        Ok(_) => Ok(()),
        Err(e) => {
            // serde's position refers to our compact re-serialisation, not the client's body.
            let message = e.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            let root = resource.get("resourceType").and_then(Json::as_str);
            Err(vec![Issue::error(
                IssueCode::Structure,
                format!("resource does not conform to its definition: {message}"),
                root.map(str::to_owned),
            )])
        }
    }
}

struct Walk<'d> {
    defs: &'d Definitions,
    handling: Handling,
    issues: Vec<Issue>,
    /// Every resource type met (root, contained, Bundle entries): decides the second pass.
    resource_types: BTreeSet<String>,
}

impl Walk<'_> {
    fn report(&mut self, code: IssueCode, diagnostics: String, expression: &str) {
        if self.issues.len() < MAX_ISSUES {
            self.issues
                .push(Issue::error(code, diagnostics, Some(expression.to_owned())));
        }
    }

    fn full(&self) -> bool {
        self.issues.len() >= MAX_ISSUES
    }

    /// A resource at `prefix` (empty for the root; `Bundle.entry[0].resource` when nested).
    fn resource(&mut self, value: &Json, prefix: &str) {
        let Json::Object(object) = value else {
            let at = if prefix.is_empty() { "(root)" } else { prefix };
            self.report(
                IssueCode::Structure,
                format!("expected a resource object, found {}", value.kind()),
                at,
            );
            return;
        };
        let resource_type = match object.get("resourceType") {
            Some(Json::String(t)) => t.clone(),
            Some(other) => {
                let at = if prefix.is_empty() {
                    "resourceType"
                } else {
                    prefix
                };
                self.report(
                    IssueCode::Structure,
                    format!("resourceType must be a string, found {}", other.kind()),
                    at,
                );
                return;
            }
            None => {
                let at = if prefix.is_empty() { "(root)" } else { prefix };
                self.report(IssueCode::Required, "resourceType is missing".into(), at);
                return;
            }
        };
        let path = if prefix.is_empty() {
            resource_type.clone()
        } else {
            prefix.to_owned()
        };
        let Some(owner) = self
            .defs
            .owner(&resource_type)
            .filter(|_| self.defs.is_resource_type(&resource_type))
        else {
            self.report(
                IssueCode::NotSupported,
                format!("\"{resource_type}\" is not an R4 resource type"),
                &path,
            );
            return;
        };
        if let Some(id) = object.get("id") {
            match id {
                Json::String(id) if primitives::is_id(id) => {}
                _ => self.report(
                    IssueCode::Value,
                    "id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'".into(),
                    &format!("{path}.id"),
                ),
            }
        }
        self.resource_types.insert(resource_type);
        self.object(object, owner, &path, true);
    }

    fn object(&mut self, object: &Object, owner: &Owner, path: &str, is_resource: bool) {
        // An element needs a value or children besides its id (ele-1); a resource may be bare.
        if !is_resource && !object.iter().any(|(k, _)| k != "id") {
            self.report(
                IssueCode::Structure,
                "empty object: every element must have a value or children".into(),
                path,
            );
            return;
        }
        let mut choices_seen: Vec<(&str, &str)> = Vec::new();
        for (key, value) in object.iter() {
            if self.full() {
                return;
            }
            if is_resource && (key == "resourceType" || key == "id") {
                continue;
            }
            let child_path = format!("{path}.{key}");
            if let Some(base) = key.strip_prefix('_') {
                self.primitive_extension(object, owner, base, value, &child_path);
                continue;
            }
            let Some((element, ty)) = owner.lookup(key) else {
                self.unknown(key, &child_path);
                continue;
            };
            if element.keys.len() > 1 {
                if let Some((_, other)) = choices_seen.iter().find(|(n, _)| *n == element.name) {
                    self.report(
                        IssueCode::Structure,
                        format!(
                            "{} is a choice: only one of its types may be used, found {other} and {key}",
                            element.name
                        ),
                        &child_path,
                    );
                }
                choices_seen.push((&element.name, key));
            }
            let ty = ty.clone();
            self.element(object, element, &ty, key, value, &child_path);
        }
        for element in &owner.elements {
            if element.min > 0 && !element_present(object, element) {
                self.report(
                    IssueCode::Required,
                    format!("required element {} is missing", element.name),
                    &format!("{path}.{}", element.name),
                );
            }
        }
    }

    fn unknown(&mut self, key: &str, path: &str) {
        match self.handling {
            Handling::Strict => self.report(
                IssueCode::Structure,
                format!("unknown element \"{key}\""),
                path,
            ),
            Handling::Lenient => {
                if self.issues.len() < MAX_ISSUES {
                    self.issues.push(Issue::warning(
                        IssueCode::Informational,
                        format!("unknown element \"{key}\" kept as sent (lenient handling)"),
                        Some(path.to_owned()),
                    ));
                }
            }
        }
    }

    fn element(
        &mut self,
        parent: &Object,
        element: &Element,
        ty: &ElementType,
        key: &str,
        value: &Json,
        path: &str,
    ) {
        match (element.many, value) {
            (true, Json::Array(items)) => {
                if items.is_empty() {
                    self.report(
                        IssueCode::Structure,
                        "empty array: leave the element out instead".into(),
                        path,
                    );
                }
                // A null in a primitive array is allowed only where `_key` carries its extension.
                let companions = parent
                    .get(&format!("_{key}"))
                    .and_then(Json::as_array)
                    .unwrap_or(&[]);
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    if matches!(item, Json::Null) {
                        let has_extension =
                            companions.get(i).is_some_and(|c| !matches!(c, Json::Null));
                        if !(matches!(ty, ElementType::Primitive(_)) && has_extension) {
                            self.report(
                                IssueCode::Structure,
                                "null is only allowed in a primitive array paired with an extension".into(),
                                &item_path,
                            );
                        }
                        continue;
                    }
                    self.value(ty, item, &item_path);
                }
            }
            (true, other) => self.report(
                IssueCode::Structure,
                format!(
                    "{} repeats: expected an array, found {}",
                    element.name,
                    other.kind()
                ),
                path,
            ),
            (false, Json::Array(_)) => self.report(
                IssueCode::Structure,
                format!(
                    "{} does not repeat: expected a single value, found an array",
                    element.name
                ),
                path,
            ),
            (false, Json::Null) => self.report(
                IssueCode::Structure,
                "null is not a value: leave the element out instead".into(),
                path,
            ),
            (false, single) => self.value(ty, single, path),
        }
    }

    fn value(&mut self, ty: &ElementType, value: &Json, path: &str) {
        match ty {
            ElementType::Primitive(kind) => {
                if let Err(message) = primitives::check(*kind, value) {
                    self.report(IssueCode::Value, message, path);
                }
            }
            ElementType::Resource => self.resource(value, path),
            ElementType::Complex(name) => {
                let Json::Object(object) = value else {
                    self.report(
                        IssueCode::Structure,
                        format!("expected an object ({name}), found {}", value.kind()),
                        path,
                    );
                    return;
                };
                match self.defs.owner(name) {
                    Some(owner) => self.object(object, owner, path, false),
                    None => self.report(
                        IssueCode::Exception,
                        format!("no definition for type {name}"),
                        path,
                    ),
                }
            }
        }
    }

    /// `_birthDate`: the id and extensions of a primitive, beside (or instead of) its value.
    fn primitive_extension(
        &mut self,
        parent: &Object,
        owner: &Owner,
        base: &str,
        value: &Json,
        path: &str,
    ) {
        let Some((element, ElementType::Primitive(_))) = owner.lookup(base) else {
            self.unknown(&format!("_{base}"), path);
            return;
        };
        let check_one = |walk: &mut Self, item: &Json, at: &str| match item {
            Json::Object(o) => walk.element_extension(o, at),
            other => walk.report(
                IssueCode::Structure,
                format!(
                    "expected an object with id or extension, found {}",
                    other.kind()
                ),
                at,
            ),
        };
        match (element.many, value) {
            (true, Json::Array(items)) => {
                if let Some(values) = parent.get(base).and_then(Json::as_array)
                    && values.len() != items.len()
                {
                    self.report(
                        IssueCode::Structure,
                        format!("_{base} must have as many items as {base}"),
                        path,
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    if !matches!(item, Json::Null) {
                        check_one(self, item, &format!("{path}[{i}]"));
                    }
                }
            }
            (false, single @ Json::Object(_)) => check_one(self, single, path),
            (_, other) => self.report(
                IssueCode::Structure,
                format!("unexpected {} for _{base}", other.kind()),
                path,
            ),
        }
    }

    fn element_extension(&mut self, object: &Object, path: &str) {
        for (key, value) in object.iter() {
            let at = format!("{path}.{key}");
            match key {
                "id" => {
                    if let Err(message) = primitives::check(Primitive::String, value) {
                        self.report(IssueCode::Value, message, &at);
                    }
                }
                "extension" => {
                    let owner = self.defs.owner("Element");
                    match (owner, value) {
                        (_, Json::Array(items)) if !items.is_empty() => {
                            let ty = ElementType::Complex("Extension".into());
                            for (i, item) in items.iter().enumerate() {
                                self.value(&ty, item, &format!("{at}[{i}]"));
                            }
                        }
                        _ => self.report(
                            IssueCode::Structure,
                            "extension must be a non-empty array".into(),
                            &at,
                        ),
                    }
                }
                _ => self.unknown(key, &at),
            }
        }
        if object.is_empty() {
            self.report(IssueCode::Structure, "empty object".into(), path);
        }
    }
}

fn element_present(object: &Object, element: &Element) -> bool {
    element
        .keys
        .iter()
        .any(|k| object.get(k).is_some() || object.get(&format!("_{k}")).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::json;

    /// Validates `body` strictly; returns "ok" or the first error as "expression: diagnostics".
    fn check(body: &str, expected: &str) {
        let value = json::parse(body.as_bytes()).unwrap();
        let got = match validate(&value, Handling::Strict) {
            Ok(_) => "ok".to_owned(),
            Err(issues) => {
                let first = &issues[0];
                format!(
                    "{}: {}",
                    first.expression.as_deref().unwrap_or("-"),
                    first.diagnostics
                )
            }
        };
        assert!(
            got.starts_with(expected),
            "body {body}\n got: {got}\nwant: {expected}"
        );
    }

    #[test]
    fn accepts_valid_resources() {
        check(
            r#"{"resourceType":"Patient","id":"a","name":[{"family":"Doe","given":["J"]}],"birthDate":"1970-01-01"}"#,
            "ok",
        );
        check(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}"#,
            "ok",
        );
        check(
            r#"{"resourceType":"Patient","_birthDate":{"extension":[{"url":"http://e","valueString":"x"}]}}"#,
            "ok",
        );
        check(
            r#"{"resourceType":"Patient","name":[{"given":["a",null],"_given":[null,{"id":"g2"}]}]}"#,
            "ok",
        );
        check(
            r##"{"resourceType":"Patient","contained":[{"resourceType":"Organization","id":"o","name":"Org"}],"managingOrganization":{"reference":"#o"}}"##,
            "ok",
        );
        check(
            r#"{"resourceType":"MedicinalProduct","name":[{"productName":"x"}]}"#,
            "ok",
        );
        check(r#"{"resourceType":"Organization","id":"bare"}"#, "ok");
    }

    #[test]
    fn refuses_structural_errors_with_their_path() {
        check(
            r#"{"resourceType":"Patient","foo":1}"#,
            "Patient.foo: unknown element \"foo\"",
        );
        check(
            r#"{"resourceType":"Patient","name":{"family":"x"}}"#,
            "Patient.name: name repeats",
        );
        check(
            r#"{"resourceType":"Patient","gender":["male"]}"#,
            "Patient.gender: gender does not repeat",
        );
        check(
            r#"{"resourceType":"Patient","birthDate":"2023-02-30"}"#,
            "Patient.birthDate: not a valid date",
        );
        check(
            r#"{"resourceType":"Patient","active":"true"}"#,
            "Patient.active: expected a boolean",
        );
        check(
            r#"{"resourceType":"Patient","name":[]}"#,
            "Patient.name: empty array",
        );
        check(
            r#"{"resourceType":"Patient","name":[{}]}"#,
            "Patient.name[0]: empty object",
        );
        check(
            r#"{"resourceType":"Patient","gender":null}"#,
            "Patient.gender: null is not a value",
        );
        check(
            r#"{"resourceType":"Observation","code":{"text":"x"}}"#,
            "Observation.status: required element status",
        );
        check(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"a","valueBoolean":true}"#,
            "Observation.valueBoolean: value is a choice",
        );
        check(
            r#"{"resourceType":"Patient","multipleBirthInteger":2147483648}"#,
            "Patient.multipleBirthInteger: 2147483648 is out of range",
        );
        check(
            r#"{"resourceType":"Patient","id":"bad id"}"#,
            "Patient.id: id must be",
        );
        check(
            r#"{"resourceType":"Nope"}"#,
            "Nope: \"Nope\" is not an R4 resource type",
        );
        check(r#"{"id":"x"}"#, "(root): resourceType is missing");
        check(
            r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","bad":true}}]}"#,
            "Bundle.entry[0].resource.bad: unknown element",
        );
        check(
            r#"{"resourceType":"Patient","_gender":{"foo":1}}"#,
            "Patient._gender.foo: unknown element",
        );
    }

    #[test]
    fn second_pass_catches_required_bindings() {
        check(
            r#"{"resourceType":"Patient","gender":"martian"}"#,
            "Patient: resource does not conform to its definition: Unknown value: martian",
        );
    }

    #[test]
    fn lenient_handling_keeps_unknown_elements_as_warnings() {
        let value = json::parse(br#"{"resourceType":"Patient","foo":1}"#).unwrap();
        let warnings = validate(&value, Handling::Lenient).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(!warnings[0].is_error());
    }
}
