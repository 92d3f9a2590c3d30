//! The registry of search parameters: the official R4 SearchParameter bundle
//! (`fhir-profiles/search-parameters.json`), each compiled for the resource types it applies
//! to, plus custom SearchParameters (files, and `SearchParameter` resources) layered on top.
//!
//! The published expression of a shared parameter covers many types at once
//! (`AllergyIntolerance.patient | CarePlan.subject.where(...) | ...`); each type keeps only the
//! branches rooted at itself, so evaluation never walks other types' paths. A composite keeps
//! its components: the parameter each one refers to (by canonical URL), and its expression,
//! relative to the composite's focus.
//!
//! A parameter whose expression cannot be compiled is kept, marked `unsupported` with the
//! reason: the server reports it at start-up and refuses a search on it, never half-evaluates it.
//!
//! Must not touch storage.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::fhirpath::{self, Expr};

const SEARCH_PARAMETERS_JSON: &str = include_str!("../../fhir-profiles/search-parameters.json");

/// The type of a search parameter (FHIR `SearchParamType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn parse(text: &str) -> Option<ParamType> {
        Some(match text {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One search parameter as it applies to one resource type.
#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamType,
    /// `None` when the parameter has no expression, or one outside the supported subset (then
    /// `unsupported` says why).
    pub expression: Option<Expr>,
    /// The resource types a reference parameter may point at.
    pub targets: Vec<String>,
    /// A composite's components, in order.
    pub components: Vec<Component>,
    pub unsupported: Option<String>,
}

/// One component of a composite parameter.
#[derive(Debug)]
pub struct Component {
    pub kind: ParamType,
    /// Relative to the composite's focus.
    pub expression: Expr,
}

impl SearchParam {
    /// Whether values can be extracted for it (and so searched).
    pub fn is_indexed(&self) -> bool {
        self.expression.is_some() && self.unsupported.is_none()
    }
}

#[derive(Default)]
pub struct Registry {
    by_type: HashMap<String, BTreeMap<String, Arc<SearchParam>>>,
    /// Every parameter that applies to a type (its own and the common ones), made once:
    /// extraction asks for it on every write.
    applying: HashMap<String, Vec<Arc<SearchParam>>>,
    /// The common ones alone, for a type without parameters of its own.
    common: Vec<Arc<SearchParam>>,
    /// A stable hash of every definition: entries made under another fingerprint are stale.
    fingerprint: u64,
    /// The types a custom parameter applies to (`Resource` and `DomainResource`: every
    /// type); the others' entries are exactly the official ones.
    customised: std::collections::HashSet<String>,
}

#[derive(Deserialize)]
struct Bundle {
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    resource: RawParam,
}

/// A SearchParameter resource, as much of it as the registry reads.
#[derive(Deserialize, Clone, Debug)]
pub struct RawParam {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub url: String,
    pub code: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub base: Vec<String>,
    pub expression: Option<String>,
    #[serde(default)]
    pub target: Vec<String>,
    #[serde(default)]
    pub component: Vec<RawComponent>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct RawComponent {
    pub definition: String,
    pub expression: String,
}

/// The official definitions, parsed once.
fn official() -> &'static [RawParam] {
    static RAW: OnceLock<Vec<RawParam>> = OnceLock::new();
    RAW.get_or_init(|| {
        let bundle: Bundle = serde_json::from_str(SEARCH_PARAMETERS_JSON)
            .expect("fhir-profiles/search-parameters.json is the official bundle");
        bundle.entry.into_iter().map(|e| e.resource).collect()
    })
}

impl Registry {
    /// The official R4 registry compiled into the binary.
    pub fn r4() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| Registry::build(official()))
    }

    /// The official registry with `custom` parameters added (a custom one with the code of
    /// an official one on the same type replaces it).
    pub fn with_custom(custom: &[RawParam]) -> Registry {
        let mut all: Vec<RawParam> = official().to_vec();
        all.extend(custom.iter().cloned());
        let mut registry = Registry::build(&all);
        let described = |p: &RawParam| {
            (
                p.url.clone(),
                p.code.clone(),
                p.kind.clone(),
                p.base.clone(),
                p.expression.clone(),
                p.target.clone(),
            )
        };
        let official: std::collections::HashSet<_> = official().iter().map(described).collect();
        registry.customised = custom
            .iter()
            .filter(|p| p.status.as_deref() != Some("retired"))
            .filter(|p| !official.contains(&described(p)))
            .flat_map(|p| p.base.iter().cloned())
            .collect();
        registry
    }

    /// Whether a custom parameter applies to `resource_type`: if not, its entries are exactly
    /// what the official parameters extract.
    pub fn customised(&self, resource_type: &str) -> bool {
        ["Resource", "DomainResource", resource_type]
            .iter()
            .any(|t| self.customised.contains(*t))
    }

    fn build(raw: &[RawParam]) -> Registry {
        let by_url: HashMap<&str, &RawParam> = raw.iter().map(|p| (p.url.as_str(), p)).collect();
        // A set: a custom parameter identical to one already in force (the official
        // definitions are often stored as resources too) changes nothing, nor the fingerprint.
        let mut described: Vec<String> = raw
            .iter()
            .filter(|p| p.status.as_deref() != Some("retired"))
            .map(|p| {
                let components: Vec<String> = p
                    .component
                    .iter()
                    .map(|c| format!("{}={}", c.definition, c.expression))
                    .collect();
                format!(
                    "{}|{}|{}|{}|{}|{}|{}",
                    p.url,
                    p.code,
                    p.kind,
                    p.base.join(","),
                    p.expression.as_deref().unwrap_or_default(),
                    p.target.join(","),
                    components.join(",")
                )
            })
            .collect();
        described.sort();
        described.dedup();
        // The extraction rules are part of what the entries depend on.
        described.push(format!("extraction-rules-{EXTRACTION_RULES}"));
        let fingerprint = fnv1a(described.join("\n").as_bytes());
        let mut by_type: HashMap<String, BTreeMap<String, Arc<SearchParam>>> = HashMap::new();
        for param in raw {
            if param.status.as_deref() == Some("retired") {
                continue;
            }
            for base in &param.base {
                let compiled = compile_for(param, base, &by_url);
                by_type
                    .entry(base.clone())
                    .or_default()
                    .insert(param.code.clone(), Arc::new(compiled));
            }
        }
        let merged = |ty: &str| -> Vec<Arc<SearchParam>> {
            let mut out: BTreeMap<&str, &Arc<SearchParam>> = BTreeMap::new();
            for base in ["Resource", "DomainResource", ty] {
                for (code, param) in by_type.get(base).into_iter().flatten() {
                    out.insert(code, param);
                }
            }
            out.into_values().cloned().collect()
        };
        let applying = by_type
            .keys()
            .filter(|t| *t != "Resource" && *t != "DomainResource")
            .map(|t| (t.clone(), merged(t)))
            .collect();
        let common = merged("");
        Registry {
            by_type,
            applying,
            common,
            fingerprint,
            customised: Default::default(),
        }
    }

    /// The fingerprint of these definitions (stable across builds and machines).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The parameter `code` of `resource_type` (or of every resource: `_id`, `_lastUpdated`…).
    pub fn param(&self, resource_type: &str, code: &str) -> Option<&Arc<SearchParam>> {
        self.by_type
            .get(resource_type)
            .and_then(|params| params.get(code))
            .or_else(|| {
                ["DomainResource", "Resource"]
                    .iter()
                    .find_map(|base| self.by_type.get(*base).and_then(|p| p.get(code)))
            })
    }

    /// Every parameter that applies to `resource_type`, its own and the common ones.
    pub fn params_of(&self, resource_type: &str) -> &[Arc<SearchParam>] {
        self.applying
            .get(resource_type)
            .map_or(self.common.as_slice(), Vec::as_slice)
    }

    /// The custom parameters among `custom` that cannot be used, with why.
    pub fn unsupported_custom(&self, custom: &[RawParam]) -> Vec<String> {
        let mut out = Vec::new();
        for raw in custom {
            if raw.base.is_empty() {
                out.push(format!("{} ({}): no base", raw.code, raw.url));
            }
            for base in &raw.base {
                match self.by_type.get(base).and_then(|p| p.get(&raw.code)) {
                    Some(param) if param.url == raw.url => {
                        if let Some(why) = &param.unsupported {
                            out.push(format!("{base}.{} ({}): {why}", raw.code, raw.url));
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Parameters that cannot be searched, with why: reported at start-up.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .by_type
            .iter()
            .flat_map(|(base, params)| {
                params.values().filter_map(move |p| {
                    p.unsupported
                        .as_ref()
                        .map(|why| format!("{base}.{}: {why}", p.code))
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// The version of `search::entries`' and `search::keys`' rules: raise it when they change what
/// is extracted or how it is keyed, and every stored resource is reindexed.
const EXTRACTION_RULES: u32 = 3;

/// FNV-1a, 64 bits: a hash whose value never changes with the compiler or the platform.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn compile_for(param: &RawParam, base: &str, by_url: &HashMap<&str, &RawParam>) -> SearchParam {
    let kind = ParamType::parse(&param.kind);
    let mut unsupported = None;
    let expression = match param.expression.as_deref() {
        None => None,
        Some(text) => match branches_for(text, base) {
            None => None,
            Some(branch) => match fhirpath::compile(&branch) {
                Ok(expr) => Some(expr),
                Err(e) => {
                    unsupported = Some(format!("expression not supported ({e})"));
                    None
                }
            },
        },
    };
    let mut components = Vec::new();
    for component in &param.component {
        let component_kind = by_url
            .get(component.definition.as_str())
            .and_then(|p| ParamType::parse(&p.kind));
        match (
            component_kind,
            fhirpath::compile_relative(&component.expression),
        ) {
            (Some(kind), Ok(expression)) => components.push(Component { kind, expression }),
            (None, _) => {
                unsupported = Some(format!(
                    "component {} is not a known parameter",
                    component.definition
                ))
            }
            (_, Err(e)) => unsupported = Some(format!("component expression not supported ({e})")),
        }
    }
    let kind = match kind {
        Some(kind) => kind,
        None => {
            unsupported = Some(format!("unknown parameter type {}", param.kind));
            ParamType::Special
        }
    };
    if kind == ParamType::Special && unsupported.is_none() && param.expression.is_some() {
        unsupported = Some("special parameters need their own search logic".into());
    }
    SearchParam {
        code: param.code.clone(),
        url: param.url.clone(),
        kind,
        expression,
        targets: param.target.clone(),
        components,
        unsupported,
    }
}

/// The `|`-branches of `expression` that start at `base` (or at the abstract bases), joined.
fn branches_for(expression: &str, base: &str) -> Option<String> {
    let kept: Vec<&str> = split_top_level(expression)
        .into_iter()
        .map(str::trim)
        .filter(|branch| {
            let root = branch.trim_start_matches('(');
            // A branch that starts with an element name (`name | alias`) is relative to the
            // resource itself, so it belongs to every base.
            if root.starts_with(|c: char| c.is_ascii_lowercase()) {
                return true;
            }
            [base, "Resource", "DomainResource"].iter().any(|b| {
                root.strip_prefix(b).is_some_and(|rest| {
                    rest.is_empty()
                        || rest.starts_with('.')
                        || rest.starts_with(' ')
                        || rest.starts_with(')')
                })
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
        assert_eq!(param.kind, ParamType::Reference);
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

    #[test]
    fn storing_the_official_definitions_again_leaves_the_fingerprint_as_it_was() {
        let official_only = Registry::r4().fingerprint();
        let copies = official().to_vec();
        assert_eq!(Registry::with_custom(&copies).fingerprint(), official_only);
        let mut changed = copies[0].clone();
        changed.expression = Some(format!(
            "{} | {}.id",
            changed.expression.clone().unwrap_or_default(),
            changed.base[0]
        ));
        assert_ne!(
            Registry::with_custom(&[changed.clone()]).fingerprint(),
            official_only
        );
        // Only the types a changed parameter applies to are customised.
        assert!(!Registry::with_custom(&copies).customised("Patient"));
        let mut family = copies
            .iter()
            .find(|p| p.code == "family" && p.base.contains(&"Patient".to_owned()))
            .unwrap()
            .clone();
        family.expression = Some("Patient.name.family | Patient.name.text".into());
        let customised = Registry::with_custom(&[family]);
        assert!(customised.customised("Patient"));
        assert!(!customised.customised("AuditEvent"));
    }

    #[test]
    fn composites_know_their_components() {
        let registry = Registry::r4();
        let param = registry
            .param("Observation", "code-value-quantity")
            .unwrap();
        assert_eq!(param.kind, ParamType::Composite);
        let kinds: Vec<ParamType> = param.components.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ParamType::Token, ParamType::Quantity]);
        assert!(param.is_indexed());
    }

    #[test]
    fn every_official_parameter_is_searchable_but_the_special_ones() {
        let unsupported = Registry::r4().unsupported();
        assert!(
            unsupported.iter().all(|u| u.starts_with("Location.near")),
            "{unsupported:#?}"
        );
        let codes: Vec<&str> = Registry::r4()
            .params_of("Patient")
            .iter()
            .map(|p| p.code.as_str())
            .collect();
        for code in [
            "_id",
            "_lastUpdated",
            "_tag",
            "name",
            "birthdate",
            "identifier",
        ] {
            assert!(codes.contains(&code), "{code}");
        }
    }
}
