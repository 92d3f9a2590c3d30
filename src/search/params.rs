//! The registry of official R4 search parameters (`fhir-profiles/search-parameters.json`),
//! each compiled for the resource types it applies to.
//!
//! The published expression of a shared parameter covers many types at once
//! (`AllergyIntolerance.patient | CarePlan.subject.where(...) | ...`); each type keeps only the
//! branches rooted at itself, so evaluation never walks other types' paths.
//!
//! Must not touch storage.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::fhirpath::{self, Expr};

const SEARCH_PARAMETERS_JSON: &str = include_str!("../../fhir-profiles/search-parameters.json");

/// One search parameter as it applies to one resource type.
#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    pub kind: String,
    /// `None` when the expression uses FHIRPath outside the supported subset.
    pub expression: Option<Expr>,
}

pub struct Registry {
    by_type: HashMap<String, HashMap<String, SearchParam>>,
}

#[derive(Deserialize)]
struct Bundle {
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    resource: RawParam,
}

#[derive(Deserialize)]
struct RawParam {
    code: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    base: Vec<String>,
    expression: Option<String>,
}

impl Registry {
    /// The registry compiled into the binary.
    pub fn r4() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let bundle: Bundle = serde_json::from_str(SEARCH_PARAMETERS_JSON)
                .expect("fhir-profiles/search-parameters.json is the official bundle");
            Registry::build(bundle)
        })
    }

    fn build(bundle: Bundle) -> Registry {
        let mut by_type: HashMap<String, HashMap<String, SearchParam>> = HashMap::new();
        for Entry { resource: raw } in bundle.entry {
            for base in &raw.base {
                let expression = raw
                    .expression
                    .as_deref()
                    .and_then(|text| branches_for(text, base))
                    .and_then(|text| fhirpath::compile(&text).ok());
                by_type.entry(base.clone()).or_default().insert(
                    raw.code.clone(),
                    SearchParam {
                        code: raw.code.clone(),
                        kind: raw.kind.clone(),
                        expression,
                    },
                );
            }
        }
        Registry { by_type }
    }

    pub fn param(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        self.by_type
            .get(resource_type)
            .and_then(|params| params.get(code))
            .or_else(|| self.by_type.get("Resource").and_then(|p| p.get(code)))
    }
}

/// The `|`-branches of `expression` that start at `base` (or at the abstract bases), joined.
fn branches_for(expression: &str, base: &str) -> Option<String> {
    let kept: Vec<&str> = split_top_level(expression)
        .into_iter()
        .map(str::trim)
        .filter(|branch| {
            let root = branch.trim_start_matches('(');
            [base, "Resource", "DomainResource"].iter().any(|b| {
                root.strip_prefix(b)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with(' '))
            })
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(" | "))
}

/// Splits on `|` outside parentheses and string literals.
fn split_top_level(expression: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in expression.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                parts.push(&expression[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&expression[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_branches_of_each_type() {
        let registry = Registry::r4();
        let param = registry.param("Observation", "patient").unwrap();
        assert_eq!(param.kind, "reference");
        assert_eq!(
            param.expression,
            Some(fhirpath::compile("Observation.subject.where(resolve() is Patient)").unwrap())
        );
        assert!(registry.param("Observation", "_lastUpdated").is_some());
        assert_eq!(
            branches_for("(A.x as B) | C.y | A.z", "A").as_deref(),
            Some("(A.x as B) | A.z")
        );
    }
}
