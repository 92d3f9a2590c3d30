//! FHIR search syntax → a parsed request: which parameters, modifiers, chains, `_has`, values
//! (comma = OR, a repeated parameter = AND), and the result parameters (`_sort`, `_count`,
//! `_include`, `_revinclude`, `_summary`, `_elements`, `_total`, `_contained`).
//!
//! Parsing knows the registry, so a value is checked against its parameter's type here: a
//! malformed value of a known parameter (a date `2020-13-45`, a prefix on a token,
//! `_count=-1`) is an error in every handling mode; an unknown parameter is an error under
//! `Prefer: handling=strict` and otherwise ignored and reported back.
//!
//! Must not touch storage.

mod values;

use super::params::{ParamType, Registry, SearchParam};
use crate::fhir::resource::ResourceType;
use values::parse_value;
pub use values::{date_period, decimal_range};

/// Parameters every FHIR interaction may carry that are never search criteria.
const GENERAL: &[&str] = &["_format", "_pretty", "_summary", "_elements", "_total"];

/// Most values one search may carry, across every parameter (a bound on the work a single
/// request can ask for: a 10,000-value OR list is refused, not evaluated).
pub const MAX_VALUES: usize = 1_000;
/// Most levels of chaining and `_has` nesting.
pub const MAX_CHAIN_DEPTH: usize = 4;
/// The default and largest page size.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1_000;

/// Why a search cannot be run as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A value, modifier or syntax the client got wrong (400 in every mode).
    #[error("{0}")]
    Invalid(String),
    /// A parameter or modifier this server does not support (400 under strict handling,
    /// reported and ignored under lenient handling where the spec allows it).
    #[error("{0}")]
    Unsupported(String),
    /// More than one search may ask of the server (400, too-costly).
    #[error("{0}")]
    TooCostly(String),
}

/// How unknown parameters are treated (`Prefer: handling=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    Strict,
    Lenient,
}

/// A parsed search.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchRequest {
    /// Criteria, all of which must hold.
    pub criteria: Vec<Criterion>,
    pub sort: Vec<SortKey>,
    /// `_count` (`Some(0)`: count only).
    pub count: Option<usize>,
    pub total: Total,
    pub summary: Summary,
    pub elements: Vec<String>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// `_type` of a system search.
    pub types: Vec<ResourceType>,
    /// Parameters ignored (lenient), for the Bundle's OperationOutcome, with why.
    pub ignored: Vec<(String, String)>,
    /// The accepted parameters, in order, for the `self` link.
    pub accepted: Vec<(String, String)>,
}

/// One criterion: a parameter (possibly chained or reversed) and its OR'ed values.
#[derive(Clone, Debug, PartialEq)]
pub enum Criterion {
    /// `param[:modifier]=v1,v2`.
    Param {
        code: String,
        kind: ParamType,
        modifier: Option<Modifier>,
        values: Vec<SearchValue>,
        /// A reference parameter's target types (what a bare id may name).
        targets: Vec<String>,
    },
    /// `reference[:Type].next=…`: resources whose `reference` points at a resource (of
    /// `target` types) matching `inner`.
    Chain {
        reference: String,
        targets: Vec<String>,
        inner: Box<Criterion>,
    },
    /// `_has:Type:reference:…=…`: resources that a `Type` resource matching `inner` points at
    /// through its `reference`.
    Has {
        source: String,
        reference: String,
        inner: Box<Criterion>,
    },
}

/// A modifier of a parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Modifier {
    Exact,
    Contains,
    Not,
    Text,
    OfType,
    Missing(bool),
    /// `:Patient` on a reference parameter.
    Type(String),
    Identifier,
    Below,
    Above,
}

/// Comparison prefixes of ordered values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// One value of a criterion, parsed for its parameter's type.
#[derive(Clone, Debug, PartialEq)]
pub enum SearchValue {
    /// string and uri values, and `:missing`'s `true`/`false` (already in the modifier).
    Text(String),
    /// token: `code`, `system|code`, `|code`, `system|`.
    Token {
        system: TokenSystem,
        code: Option<String>,
    },
    /// `:of-type`: `type-system|type-code|value`.
    OfType {
        system: String,
        code: String,
        value: String,
    },
    /// reference: `Type/id`, `id`, an absolute URL, or `system|value` for `:identifier`.
    Reference(String),
    /// date: the period of the value, with its prefix.
    Date { prefix: Prefix, lo: f64, hi: f64 },
    /// number and quantity: the value's range by its precision, with its prefix and unit.
    Number {
        prefix: Prefix,
        value: f64,
        lo: f64,
        hi: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// composite: one value per component.
    Composite(Vec<SearchValue>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSystem {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    None,
    /// `system|code` or `system|`.
    Is(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortKey {
    pub code: String,
    pub descending: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Total {
    /// `_total` absent: the total when it is known without counting (every match seen on the
    /// first page, a sorted search, `_count=0`), none otherwise.
    #[default]
    IfKnown,
    None,
    Estimate,
    Accurate,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Summary {
    #[default]
    False,
    True,
    Count,
    Data,
    Text,
}

/// `_include=Type:param[:target]` (or `*`), with `:iterate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Include {
    pub source: String,
    /// `None` for `*` (every reference parameter).
    pub param: Option<String>,
    pub target: Option<String>,
    pub iterate: bool,
}

/// Splits a value on unescaped `sep`, unescaping `\\sep` and `\\\\` (escapes of the other
/// separators stay, for the next split).
pub fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&next @ (',' | '|' | '$' | '\\')) => {
                    if next != sep && next != '\\' {
                        current.push('\\');
                    }
                    current.push(next);
                    chars.next();
                }
                _ => current.push('\\'),
            },
            c if c == sep => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next @ (',' | '|' | '$' | '\\')) = chars.peek()
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

fn preview(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Parses the query of a search on `resource_type` (`None`: a system search, whose criteria
/// are the common parameters and whose `_type` names the types).
pub fn parse(
    registry: &Registry,
    resource_type: Option<ResourceType>,
    pairs: &[(String, String)],
    strictness: Strictness,
) -> Result<SearchRequest, QueryError> {
    let mut request = SearchRequest::default();
    let mut value_count = 0usize;
    // System search: `_type` first, since the criteria are judged against those types.
    for (name, value) in pairs {
        if name == "_type" {
            for ty in value.split(',').filter(|t| !t.is_empty()) {
                let parsed = ResourceType::parse(ty).map_err(|_| {
                    QueryError::Invalid(format!("_type: {} is not a resource type", preview(ty)))
                })?;
                request.types.push(parsed);
            }
            request.accepted.push((name.clone(), value.clone()));
        }
    }
    let context = resource_type
        .map(|t| t.as_str().to_owned())
        .or_else(|| match request.types.as_slice() {
            [single] => Some(single.as_str().to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| "Resource".to_owned());
    for (name, value) in pairs {
        let outcome = parse_pair(registry, &context, name, value, &mut request);
        match outcome {
            Ok(true) => request.accepted.push((name.clone(), value.clone())),
            Ok(false) => {}
            Err(QueryError::Unsupported(why)) if strictness == Strictness::Lenient => {
                request.ignored.push((name.clone(), why));
            }
            Err(e) => return Err(e),
        }
        value_count += value.matches(',').count() + 1;
        if value_count > MAX_VALUES {
            return Err(QueryError::TooCostly(format!(
                "a search may carry at most {MAX_VALUES} values"
            )));
        }
    }
    Ok(request)
}

/// One `name=value`; `Ok(true)` when it is part of the search (for the `self` link).
fn parse_pair(
    registry: &Registry,
    context: &str,
    name: &str,
    value: &str,
    request: &mut SearchRequest,
) -> Result<bool, QueryError> {
    match name {
        "_type" => return Ok(false),
        "_format" | "_pretty" => return Ok(false),
        "_count" => {
            let count: usize = value.parse().map_err(|_| {
                QueryError::Invalid(format!(
                    "_count must be a whole number of 0 or more, not \"{}\"",
                    preview(value)
                ))
            })?;
            request.count = Some(count.min(MAX_COUNT));
            return Ok(true);
        }
        "_sort" => {
            for key in value.split(',').filter(|k| !k.is_empty()) {
                let (code, descending) = match key.strip_prefix('-') {
                    Some(code) => (code, true),
                    None => (key, false),
                };
                let known = registry
                    .param(context, code)
                    .is_some_and(|p| p.is_indexed() && p.kind != ParamType::Composite);
                if !known {
                    return Err(QueryError::Unsupported(format!(
                        "_sort: {} is not a parameter of {context} this server can sort by",
                        preview(code)
                    )));
                }
                request.sort.push(SortKey {
                    code: code.to_owned(),
                    descending,
                });
            }
            return Ok(true);
        }
        "_total" => {
            request.total = match value {
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                other => {
                    return Err(QueryError::Invalid(format!(
                        "_total must be none, estimate or accurate, not \"{}\"",
                        preview(other)
                    )));
                }
            };
            return Ok(true);
        }
        "_summary" => {
            request.summary = match value {
                "true" => Summary::True,
                "false" => Summary::False,
                "count" => Summary::Count,
                "data" => Summary::Data,
                "text" => Summary::Text,
                other => {
                    return Err(QueryError::Invalid(format!(
                        "_summary must be true, false, count, data or text, not \"{}\"",
                        preview(other)
                    )));
                }
            };
            return Ok(true);
        }
        "_elements" => {
            request.elements.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned),
            );
            return Ok(true);
        }
        "_contained" if value == "false" => return Ok(false),
        "_contained" | "_containedType" => {
            return Err(QueryError::Unsupported(format!(
                "{name}={} is not supported: searches return only top-level resources",
                preview(value)
            )));
        }
        _ => {}
    }
    if let Some(rest) = name
        .strip_prefix("_include")
        .or_else(|| name.strip_prefix("_revinclude"))
    {
        let iterate = match rest {
            "" => false,
            ":iterate" | ":recurse" => true,
            other => {
                return Err(QueryError::Invalid(format!(
                    "{name}: unknown modifier {}",
                    preview(other)
                )));
            }
        };
        let include = parse_include(registry, value, iterate)?;
        if name.starts_with("_include") {
            request.includes.push(include);
        } else {
            request.revincludes.push(include);
        }
        return Ok(true);
    }
    if GENERAL.contains(&name) {
        return Ok(false);
    }
    let criterion = parse_criterion(registry, context, name, value, 0)?;
    request.criteria.push(criterion);
    Ok(true)
}

fn parse_include(registry: &Registry, value: &str, iterate: bool) -> Result<Include, QueryError> {
    if value == "*" {
        return Ok(Include {
            source: "*".into(),
            param: None,
            target: None,
            iterate,
        });
    }
    let mut parts = value.split(':');
    let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
        return Err(QueryError::Invalid(format!(
            "_include/_revinclude take Type:parameter[:target], not \"{}\"",
            preview(value)
        )));
    };
    let target = parts.next().map(str::to_owned);
    if ResourceType::parse(source).is_err() {
        return Err(QueryError::Invalid(format!(
            "_include: {} is not a resource type",
            preview(source)
        )));
    }
    if param == "*" {
        return Ok(Include {
            source: source.to_owned(),
            param: None,
            target,
            iterate,
        });
    }
    let known = registry
        .param(source, param)
        .is_some_and(|p| p.kind == ParamType::Reference && p.is_indexed());
    if !known {
        return Err(QueryError::Unsupported(format!(
            "_include: {} is not a reference parameter of {source}",
            preview(param)
        )));
    }
    if let Some(t) = &target
        && ResourceType::parse(t).is_err()
    {
        return Err(QueryError::Invalid(format!(
            "_include: {} is not a resource type",
            preview(t)
        )));
    }
    Ok(Include {
        source: source.to_owned(),
        param: Some(param.to_owned()),
        target,
        iterate,
    })
}

/// Parses `name` (with modifiers, chain or `_has`) and `value` on type `context`.
fn parse_criterion(
    registry: &Registry,
    context: &str,
    name: &str,
    value: &str,
    depth: usize,
) -> Result<Criterion, QueryError> {
    if depth > MAX_CHAIN_DEPTH {
        return Err(QueryError::TooCostly(format!(
            "chains and _has may nest at most {MAX_CHAIN_DEPTH} levels"
        )));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(reference), Some(inner)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(QueryError::Invalid(format!(
                "_has takes _has:Type:reference:parameter, not \"{}\"",
                preview(name)
            )));
        };
        if ResourceType::parse(source).is_err() {
            return Err(QueryError::Invalid(format!(
                "_has: {} is not a resource type",
                preview(source)
            )));
        }
        let reference_param = registry.param(source, reference);
        if !reference_param.is_some_and(|p| p.kind == ParamType::Reference && p.is_indexed()) {
            return Err(QueryError::Invalid(format!(
                "_has: {} is not a reference parameter of {source}",
                preview(reference)
            )));
        }
        let inner = parse_criterion(registry, source, inner, value, depth + 1)?;
        return Ok(Criterion::Has {
            source: source.to_owned(),
            reference: reference.to_owned(),
            inner: Box::new(inner),
        });
    }
    // A chain: the part before the first `.` is a reference parameter (maybe `:Type`).
    if let Some((head, rest)) = name.split_once('.') {
        let (code, type_modifier) = match head.split_once(':') {
            Some((code, ty)) => (code, Some(ty)),
            None => (head, None),
        };
        let param = known_param(registry, context, code)?;
        if param.kind != ParamType::Reference {
            return Err(QueryError::Invalid(format!(
                "{code} is not a reference parameter, so it cannot be chained"
            )));
        }
        let targets: Vec<String> = match type_modifier {
            Some(ty) => {
                if ResourceType::parse(ty).is_err() {
                    return Err(QueryError::Invalid(format!(
                        "{code}:{}: not a resource type",
                        preview(ty)
                    )));
                }
                vec![ty.to_owned()]
            }
            None => param.targets.clone(),
        };
        // The chained parameter must mean the same on every target it is judged on; with
        // several targets it must exist on at least one of them.
        let chained_code = rest.split(['.', ':']).next().unwrap_or_default().to_owned();
        let on_targets: Vec<String> = targets
            .iter()
            .filter(|t| {
                chained_code.starts_with("_has") || registry.param(t, &chained_code).is_some()
            })
            .cloned()
            .collect();
        if on_targets.is_empty() {
            return Err(QueryError::Unsupported(format!(
                "{}: no target of {code} has a parameter {}",
                preview(name),
                preview(&chained_code)
            )));
        }
        let inner_context = if on_targets.len() == 1 {
            on_targets[0].clone()
        } else {
            // Parsed against the first target; judged on each.
            on_targets[0].clone()
        };
        let inner = parse_criterion(registry, &inner_context, rest, value, depth + 1)?;
        return Ok(Criterion::Chain {
            reference: code.to_owned(),
            targets: on_targets,
            inner: Box::new(inner),
        });
    }
    let (code, modifier_text) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    let param = known_param(registry, context, code)?;
    let modifier = modifier_text
        .map(|m| parse_modifier(param, m, value))
        .transpose()?;
    if let Some(Modifier::Missing(_)) = modifier {
        return Ok(Criterion::Param {
            code: code.to_owned(),
            kind: param.kind,
            modifier,
            values: Vec::new(),
            targets: param.targets.clone(),
        });
    }
    let raw_values = split_escaped(value, ',');
    if raw_values.iter().all(String::is_empty) {
        return Err(QueryError::Invalid(format!(
            "{} has no value",
            preview(name)
        )));
    }
    let values = raw_values
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| parse_value(param, modifier.as_ref(), v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Criterion::Param {
        code: code.to_owned(),
        kind: param.kind,
        modifier,
        values,
        targets: param.targets.clone(),
    })
}

fn known_param<'r>(
    registry: &'r Registry,
    context: &str,
    code: &str,
) -> Result<&'r SearchParam, QueryError> {
    match registry.param(context, code) {
        Some(param) if param.is_indexed() => Ok(param),
        Some(param) => Err(QueryError::Unsupported(format!(
            "the search parameter {code} is not supported: {}",
            param
                .unsupported
                .clone()
                .unwrap_or_else(|| "it has no expression to index".into())
        ))),
        None => Err(QueryError::Unsupported(format!(
            "{} is not a search parameter of {context}",
            preview(code)
        ))),
    }
}

fn parse_modifier(param: &SearchParam, text: &str, value: &str) -> Result<Modifier, QueryError> {
    use ParamType as T;
    let invalid =
        |why: &str| QueryError::Invalid(format!("{}:{}: {why}", param.code, preview(text)));
    let modifier = match text {
        "missing" => match value {
            "true" => Modifier::Missing(true),
            "false" => Modifier::Missing(false),
            _ => return Err(invalid("the value must be true or false")),
        },
        "exact" if param.kind == T::String => Modifier::Exact,
        "contains" if matches!(param.kind, T::String | T::Uri) => Modifier::Contains,
        "not" if param.kind == T::Token => Modifier::Not,
        "text" if param.kind == T::Token => Modifier::Text,
        "of-type" if param.kind == T::Token => Modifier::OfType,
        "identifier" if param.kind == T::Reference => Modifier::Identifier,
        "below" if param.kind == T::Uri => Modifier::Below,
        "above" if param.kind == T::Uri => Modifier::Above,
        "in" | "not-in" | "below" | "above" if param.kind == T::Token => {
            return Err(QueryError::Invalid(format!(
                "{}:{text} needs terminology (ValueSet expansion or CodeSystem subsumption), which this server does not provide",
                param.code
            )));
        }
        ty if param.kind == T::Reference && ResourceType::parse(ty).is_ok() => {
            if !param.targets.is_empty() && !param.targets.iter().any(|t| t == ty) {
                return Err(invalid("not a target type of this reference"));
            }
            Modifier::Type(ty.to_owned())
        }
        // Unlike an unknown parameter, an unsupported modifier is refused in every mode: the
        // specification says a server SHALL reject it rather than ignore it.
        _ => {
            return Err(QueryError::Invalid(format!(
                "the modifier :{} is not supported on {} ({} parameter)",
                preview(text),
                param.code,
                param.kind.as_str()
            )));
        }
    };
    Ok(modifier)
}

#[cfg(test)]
mod tests;
