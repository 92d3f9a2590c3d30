//! A parsed search → the query plan both index stores execute.
//!
//! A plan is a conjunction of filters. Each filter has two faces:
//! - `narrowing`: a condition on the index keys (`search::keys`) that every resource passing
//!   the filter meets: one equality, a set of equalities, or ranges. The store uses the best
//!   one to find candidates; it is a superset, never the answer.
//! - `passes`: the exact test on a candidate's entries: date precision, every prefix, `:not`,
//!   `:missing`, composites. It decides.
//!
//! So both stores give the same answer by construction: they may differ only in how many
//! candidates they fetch. Chains and `_has` are filters on another plan, resolved by the
//! repository into reference and id filters before the store sees them.
//!
//! Must not touch storage.

use std::collections::BTreeSet;

use super::entries::{SearchEntry, UNBOUNDED_LOW, Value, fold};
use super::keys::{SEP, encode_number, key, param_range, prefix_end};
use super::params::ParamType;
use super::query::{Criterion, Modifier, Prefix, SearchValue, TokenSystem};

/// The filters all of which a resource must pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub filters: Vec<Filter>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Some entry of `param` passes one of `tests`.
    Any { param: String, tests: Vec<Test> },
    /// No entry of `param` passes any of `tests` (`:not`; a resource without the parameter
    /// passes).
    NoneOf { param: String, tests: Vec<Test> },
    /// The parameter has a value (`present`) or has none (`:missing=true`).
    Present { param: String, present: bool },
    /// A reference through `param` to a resource of `targets` that passes `inner` (resolved by
    /// the repository into an `Any` of references).
    Chain {
        param: String,
        targets: Vec<String>,
        inner: Box<Plan>,
    },
    /// Referenced through `reference` by a `source` resource that passes `inner` (resolved
    /// into an `Any` of `_id`s).
    Has {
        source: String,
        reference: String,
        inner: Box<Plan>,
    },
}

/// One exact test on one entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    StrPrefix(String),
    StrExact(String),
    StrContains(String),
    Token {
        system: TokenSystem,
        code: Option<String>,
    },
    TextPrefix(String),
    OfType {
        system: String,
        code: String,
        value: String,
    },
    /// A reference equal to `Type/id` or to a URL.
    Ref(String),
    /// A reference to any resource with this id (of `types` when not empty).
    RefId {
        id: String,
        types: Vec<String>,
    },
    RefIdentifier {
        system: Option<String>,
        value: String,
    },
    Range {
        prefix: Prefix,
        lo: f64,
        hi: f64,
    },
    Quantity {
        prefix: Prefix,
        lo: f64,
        hi: f64,
        system: Option<String>,
        code: Option<String>,
    },
    UriExact(String),
    UriBelow(String),
    UriAbove(String),
    UriContains(String),
    Composite(Vec<Test>),
}

/// A condition on index keys: the key is one of a set, or in one of some ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyCondition {
    Equals(BTreeSet<String>),
    /// `[from, to)` ranges.
    Ranges(Vec<(String, String)>),
}

impl KeyCondition {
    /// How much a condition narrows, for choosing among filters: lower is better.
    fn cost(&self) -> usize {
        match self {
            KeyCondition::Equals(keys) => keys.len(),
            // A range scans a stretch of the index: worth ten equalities.
            KeyCondition::Ranges(ranges) => 10 * ranges.len() + 10,
        }
    }

    /// Whether `key` meets the condition (what the embedded store's scan and a test check).
    pub fn admits(&self, key: &str) -> bool {
        match self {
            KeyCondition::Equals(keys) => keys.contains(key),
            KeyCondition::Ranges(ranges) => ranges
                .iter()
                .any(|(from, to)| key >= from.as_str() && key < to.as_str()),
        }
    }
}

/// Why a criterion cannot be planned (a value that has no meaning for its parameter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// Plans parsed criteria. `local_base` is this server's FHIR base URL: a reference value
/// beginning with it is the relative reference it names.
pub fn plan(criteria: &[Criterion], local_base: &str) -> Result<Plan, PlanError> {
    let filters = criteria
        .iter()
        .map(|c| filter_of(c, local_base))
        .collect::<Result<_, _>>()?;
    Ok(Plan { filters })
}

fn filter_of(criterion: &Criterion, local_base: &str) -> Result<Filter, PlanError> {
    match criterion {
        Criterion::Chain {
            reference,
            targets,
            inner,
        } => Ok(Filter::Chain {
            param: reference.clone(),
            targets: targets.clone(),
            inner: Box::new(plan(std::slice::from_ref(inner.as_ref()), local_base)?),
        }),
        Criterion::Has {
            source,
            reference,
            inner,
        } => Ok(Filter::Has {
            source: source.clone(),
            reference: reference.clone(),
            inner: Box::new(plan(std::slice::from_ref(inner.as_ref()), local_base)?),
        }),
        Criterion::Param {
            code,
            kind,
            modifier,
            values,
            targets,
        } => {
            if let Some(Modifier::Missing(missing)) = modifier {
                return Ok(Filter::Present {
                    param: code.clone(),
                    present: !missing,
                });
            }
            let tests = values
                .iter()
                .map(|v| test_of(*kind, modifier.as_ref(), v, local_base, targets))
                .collect::<Result<Vec<_>, _>>()?;
            if modifier == &Some(Modifier::Not) {
                Ok(Filter::NoneOf {
                    param: code.clone(),
                    tests,
                })
            } else {
                Ok(Filter::Any {
                    param: code.clone(),
                    tests,
                })
            }
        }
    }
}

fn test_of(
    kind: ParamType,
    modifier: Option<&Modifier>,
    value: &SearchValue,
    local_base: &str,
    targets: &[String],
) -> Result<Test, PlanError> {
    let mismatch = || PlanError(format!("a value that is not of the {} type", kind.as_str()));
    Ok(match (kind, value) {
        (ParamType::String, SearchValue::Text(text)) => match modifier {
            Some(Modifier::Exact) => Test::StrExact(text.clone()),
            Some(Modifier::Contains) => Test::StrContains(fold(text)),
            _ => Test::StrPrefix(fold(text)),
        },
        (ParamType::Uri, SearchValue::Text(text)) => match modifier {
            Some(Modifier::Below) => Test::UriBelow(text.clone()),
            Some(Modifier::Above) => Test::UriAbove(text.clone()),
            Some(Modifier::Contains) => Test::UriContains(text.clone()),
            _ => Test::UriExact(text.clone()),
        },
        (ParamType::Token, SearchValue::Text(text)) => Test::TextPrefix(fold(text)),
        (ParamType::Token, SearchValue::Token { system, code }) => Test::Token {
            system: system.clone(),
            code: code.clone(),
        },
        (
            ParamType::Token,
            SearchValue::OfType {
                system,
                code,
                value,
            },
        ) => Test::OfType {
            system: system.clone(),
            code: code.clone(),
            value: value.clone(),
        },
        (ParamType::Reference, SearchValue::Reference(text)) => {
            reference_test(modifier, text, local_base, targets)
        }
        (ParamType::Date, SearchValue::Date { prefix, lo, hi }) => Test::Range {
            prefix: *prefix,
            lo: *lo,
            hi: *hi,
        },
        (ParamType::Number, SearchValue::Number { prefix, lo, hi, .. }) => Test::Range {
            prefix: *prefix,
            lo: *lo,
            hi: *hi,
        },
        (
            ParamType::Quantity,
            SearchValue::Number {
                prefix,
                lo,
                hi,
                system,
                code,
                ..
            },
        ) => Test::Quantity {
            prefix: *prefix,
            lo: *lo,
            hi: *hi,
            system: system.clone(),
            code: code.clone(),
        },
        (ParamType::Composite, SearchValue::Composite(parts)) => {
            let tests = parts
                .iter()
                .map(|part| {
                    let part_kind = match part {
                        SearchValue::Token { .. } | SearchValue::OfType { .. } => ParamType::Token,
                        SearchValue::Date { .. } => ParamType::Date,
                        SearchValue::Number {
                            system: None,
                            code: None,
                            ..
                        } => ParamType::Quantity,
                        SearchValue::Number { .. } => ParamType::Quantity,
                        SearchValue::Reference(_) => ParamType::Reference,
                        SearchValue::Text(_) => ParamType::String,
                        SearchValue::Composite(_) => ParamType::Composite,
                    };
                    test_of(part_kind, None, part, local_base, &[])
                })
                .collect::<Result<_, _>>()?;
            Test::Composite(tests)
        }
        _ => return Err(mismatch()),
    })
}

fn reference_test(
    modifier: Option<&Modifier>,
    text: &str,
    local_base: &str,
    targets: &[String],
) -> Test {
    if let Some(Modifier::Identifier) = modifier {
        let (system, value) = match text.split_once('|') {
            Some((system, value)) => ((!system.is_empty()).then(|| system.to_owned()), value),
            None => (None, text),
        };
        return Test::RefIdentifier {
            system,
            value: value.to_owned(),
        };
    }
    let base = local_base.trim_end_matches('/');
    let relative = text
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(text);
    let relative = match relative.find("/_history/") {
        Some(at) => &relative[..at],
        None => relative,
    };
    match modifier {
        Some(Modifier::Type(ty)) if !relative.contains('/') => {
            Test::Ref(format!("{ty}/{relative}"))
        }
        _ if relative.contains("://") || relative.contains('/') => Test::Ref(relative.to_owned()),
        _ => Test::RefId {
            id: relative.to_owned(),
            types: targets.to_vec(),
        },
    }
}

/// Whether a target range `[tl, th]` meets a search range `[sl, sh]` under `prefix`
/// (FHIR R4 §3.1.1.4.2, ranges inclusive).
fn range_meets(prefix: Prefix, tl: f64, th: f64, sl: f64, sh: f64) -> bool {
    let within = sl <= tl && th <= sh;
    match prefix {
        Prefix::Eq => within,
        Prefix::Ne => !within,
        Prefix::Gt => th > sh,
        Prefix::Lt => tl < sl,
        Prefix::Ge => th > sh || within,
        Prefix::Le => tl < sl || within,
        Prefix::Sa => tl > sh,
        Prefix::Eb => th < sl,
        Prefix::Ap => {
            // Approximately: within 10% of the value (at least the search value's own range).
            let centre = (sl + sh) / 2.0;
            let slack = (centre.abs() * 0.1).max((sh - sl) / 2.0);
            tl <= centre + slack && th >= centre - slack
        }
    }
}

impl Test {
    /// Whether one entry value passes.
    pub fn passes(&self, value: &Value) -> bool {
        match (self, value) {
            (Test::StrPrefix(prefix), Value::Str { n, .. }) => n.starts_with(prefix.as_str()),
            (Test::StrExact(exact), Value::Str { x, .. }) => x == exact,
            (Test::StrContains(part), Value::Str { n, .. }) => n.contains(part.as_str()),
            (Test::Token { system, code }, Value::Token { s, c }) => {
                let system_ok = match system {
                    TokenSystem::Any => true,
                    TokenSystem::None => s.is_none(),
                    TokenSystem::Is(wanted) => s.as_deref() == Some(wanted.as_str()),
                };
                let code_ok = code
                    .as_ref()
                    .is_none_or(|wanted| c.as_ref() == Some(wanted));
                system_ok && code_ok && (code.is_some() || !matches!(system, TokenSystem::Any))
            }
            (Test::TextPrefix(prefix), Value::Text { n }) => n.starts_with(prefix.as_str()),
            (Test::TextPrefix(prefix), Value::Str { n, .. }) => n.starts_with(prefix.as_str()),
            (
                Test::OfType {
                    system,
                    code,
                    value: wanted,
                },
                Value::OfType { s, c, v },
            ) => s == system && c == code && v == wanted,
            (Test::Ref(wanted), Value::Ref { r, .. }) => r == wanted,
            // A bare id names a resource of this server: a relative reference.
            (Test::RefId { id, types }, Value::Ref { r, t }) => {
                let same_id =
                    !r.contains("://") && r.rsplit_once('/').is_some_and(|(_, rid)| rid == id);
                same_id && (types.is_empty() || t.as_ref().is_some_and(|t| types.contains(t)))
            }
            (
                Test::RefIdentifier {
                    system,
                    value: wanted,
                },
                Value::RefIdentifier { s, v },
            ) => v == wanted && system.as_ref().is_none_or(|sys| s.as_ref() == Some(sys)),
            (Test::Range { prefix, lo, hi }, Value::Range { lo: tl, hi: th }) => {
                range_meets(*prefix, *tl, *th, *lo, *hi)
            }
            (Test::Range { prefix, lo, hi }, Value::Quantity { lo: tl, hi: th, .. }) => {
                range_meets(*prefix, *tl, *th, *lo, *hi)
            }
            (
                Test::Quantity {
                    prefix,
                    lo,
                    hi,
                    system,
                    code,
                },
                Value::Quantity {
                    lo: tl,
                    hi: th,
                    s,
                    c,
                    u,
                },
            ) => {
                let unit_ok = match (system, code) {
                    (_, None) => true,
                    // `value||unit`: the code, or the unit as written.
                    (None, Some(code)) => c.as_ref() == Some(code) || u.as_ref() == Some(code),
                    (Some(system), Some(code)) => {
                        s.as_ref() == Some(system) && c.as_ref() == Some(code)
                    }
                };
                unit_ok && range_meets(*prefix, *tl, *th, *lo, *hi)
            }
            (
                Test::Quantity {
                    prefix,
                    lo,
                    hi,
                    system: None,
                    code: None,
                },
                Value::Range { lo: tl, hi: th },
            ) => range_meets(*prefix, *tl, *th, *lo, *hi),
            (Test::UriExact(wanted), Value::Uri { u }) => u == wanted,
            (Test::UriExact(wanted), Value::Ref { r, .. }) => r == wanted,
            (Test::UriBelow(prefix), Value::Uri { u }) => u.starts_with(prefix.as_str()),
            (Test::UriAbove(longer), Value::Uri { u }) => longer.starts_with(u.as_str()),
            (Test::UriContains(part), Value::Uri { u }) => u.contains(part.as_str()),
            (Test::Composite(tests), Value::Composite { parts }) => {
                tests.len() == parts.len()
                    && tests
                        .iter()
                        .zip(parts)
                        .all(|(test, values)| values.iter().any(|v| test.passes(v)))
            }
            _ => false,
        }
    }

    /// The key condition every entry passing this test meets (on parameter `param`).
    fn narrowing(&self, param: &str) -> KeyCondition {
        let one = |form: &str, value: &str| KeyCondition::Equals([key(param, form, value)].into());
        let prefix = |form: &str, value: &str| {
            let from = key(param, form, value);
            let to = prefix_end(&from);
            KeyCondition::Ranges(vec![(from, to)])
        };
        // Every key of the parameter: for a test without keys of its own.
        let any = || KeyCondition::Ranges(vec![param_range(param)]);
        let range = |form: &str, from: Option<f64>, to: Option<f64>| {
            let from = key(param, form, &from.map(encode_number).unwrap_or_default());
            let to = match to {
                // Up to and including that bound: the next key after it.
                Some(to) => format!("{}\u{0}", key(param, form, &encode_number(to))),
                None => prefix_end(&key(param, form, "")),
            };
            KeyCondition::Ranges(vec![(from, to)])
        };
        match self {
            Test::StrPrefix(text) => prefix("n", text),
            Test::StrExact(text) => one("n", &fold(text)),
            Test::TextPrefix(_) | Test::StrContains(_) => any(),
            Test::Token { system, code } => match (system, code) {
                (TokenSystem::Any | TokenSystem::None, Some(code)) => one("c", code),
                (TokenSystem::Is(system), Some(code)) => one("sc", &format!("{system}{SEP}{code}")),
                (TokenSystem::Is(system), None) => prefix("sc", &format!("{system}{SEP}")),
                _ => any(),
            },
            Test::OfType {
                system,
                code,
                value,
            } => one("o", &format!("{system}{SEP}{code}{SEP}{value}")),
            Test::Ref(reference) => one("r", reference),
            // A bare id: one reference per type it may point at.
            Test::RefId { id, types } if !types.is_empty() => KeyCondition::Equals(
                types
                    .iter()
                    .map(|t| key(param, "r", &format!("{t}/{id}")))
                    .collect(),
            ),
            Test::RefId { .. } => any(),
            Test::RefIdentifier {
                system: Some(system),
                value,
            } => one("i", &format!("{system}{SEP}{value}")),
            Test::RefIdentifier { system: None, .. } => any(),
            Test::Range { prefix: p, lo, hi }
            | Test::Quantity {
                prefix: p, lo, hi, ..
            } => {
                match (self, p) {
                    // A unit given with its system must be the coded unit: one equality. (A
                    // unit alone may match the unit as written, which has no key.)
                    (
                        Test::Quantity {
                            system: Some(_),
                            code: Some(code),
                            ..
                        },
                        _,
                    ) => one("uc", code),
                    (_, Prefix::Eq) => range("lo", Some(*lo), Some(*hi)),
                    (_, Prefix::Gt) => range("hi", Some(*hi), None),
                    (_, Prefix::Ge) => range("hi", Some(*lo), None),
                    (_, Prefix::Sa) => range("lo", Some(*hi), None),
                    (_, Prefix::Lt) => range("lo", Some(UNBOUNDED_LOW), Some(*lo)),
                    (_, Prefix::Le) => range("lo", Some(UNBOUNDED_LOW), Some(*hi)),
                    (_, Prefix::Eb) => range("hi", Some(UNBOUNDED_LOW), Some(*lo)),
                    (_, Prefix::Ne | Prefix::Ap) => any(),
                }
            }
            Test::UriExact(uri) => one("u", uri),
            Test::UriBelow(uri) => prefix("u", uri),
            Test::UriAbove(_) | Test::UriContains(_) => any(),
            Test::Composite(tests) => tests.first().map_or_else(any, |t| t.narrowing(param)),
        }
    }
}

/// Merges the conditions of alternative tests into one (an OR of them).
fn union(conditions: Vec<KeyCondition>) -> Option<KeyCondition> {
    let mut equals = BTreeSet::new();
    let mut ranges = Vec::new();
    for condition in conditions {
        match condition {
            KeyCondition::Equals(keys) => equals.extend(keys),
            KeyCondition::Ranges(r) => ranges.extend(r),
        }
    }
    match (equals.is_empty(), ranges.is_empty()) {
        (false, true) => Some(KeyCondition::Equals(equals)),
        (true, false) => Some(KeyCondition::Ranges(ranges)),
        (true, true) => None,
        (false, false) => {
            // Equalities as degenerate ranges, so one condition covers both.
            ranges.extend(equals.into_iter().map(|k| (k.clone(), format!("{k}\u{0}"))));
            Some(KeyCondition::Ranges(ranges))
        }
    }
}

/// Values beyond which a key condition is not worth using: a wider OR is cheaper checked
/// candidate by candidate than looked up key by key.
const MAX_NARROWING_KEYS: usize = 100;

impl Filter {
    /// The key condition of this filter, if it has one (negative filters have none).
    pub fn narrowing(&self) -> Option<KeyCondition> {
        match self {
            Filter::Any { param, tests } => {
                let condition = union(tests.iter().map(|t| t.narrowing(param)).collect())?;
                let size = match &condition {
                    KeyCondition::Equals(keys) => keys.len(),
                    KeyCondition::Ranges(ranges) => ranges.len(),
                };
                (size <= MAX_NARROWING_KEYS).then_some(condition)
            }
            Filter::Present {
                param,
                present: true,
            } => Some(KeyCondition::Ranges(vec![param_range(param)])),
            _ => None,
        }
    }

    /// Whether a resource with these entries passes. Chains and `_has` must have been resolved.
    pub fn passes(&self, entries: &[SearchEntry]) -> bool {
        fn of<'e>(
            entries: &'e [SearchEntry],
            param: &'e str,
        ) -> impl Iterator<Item = &'e SearchEntry> {
            entries.iter().filter(move |e| e.param == param)
        }
        match self {
            Filter::Any { param, tests } => {
                of(entries, param).any(|e| tests.iter().any(|t| t.passes(&e.value)))
            }
            Filter::NoneOf { param, tests } => {
                !of(entries, param).any(|e| tests.iter().any(|t| t.passes(&e.value)))
            }
            Filter::Present { param, present } => of(entries, param).next().is_some() == *present,
            Filter::Chain { .. } | Filter::Has { .. } => false,
        }
    }
}

impl Plan {
    /// The parameters whose entries decide whether a resource passes (of a resolved plan).
    pub fn params(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .filters
            .iter()
            .map(|f| match f {
                Filter::Any { param, .. }
                | Filter::NoneOf { param, .. }
                | Filter::Present { param, .. }
                | Filter::Chain { param, .. } => param.as_str(),
                Filter::Has { reference, .. } => reference.as_str(),
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The best key condition to find candidates with, if any filter has one.
    pub fn narrowing(&self) -> Option<KeyCondition> {
        self.filters
            .iter()
            .filter_map(Filter::narrowing)
            .min_by_key(KeyCondition::cost)
    }

    /// Whether a resource with these entries passes every filter.
    pub fn passes(&self, entries: &[SearchEntry]) -> bool {
        self.filters.iter().all(|f| f.passes(entries))
    }
}

/// The value a resource sorts by for `param`: the smallest of its values ascending, the
/// largest descending (FHIR R4 §3.1.1.5.8); `None` when it has none (sorted last).
pub fn sort_value(entries: &[SearchEntry], param: &str, descending: bool) -> Option<SortValue> {
    let values = entries.iter().filter(|e| e.param == param).filter_map(|e| {
        Some(match &e.value {
            Value::Str { n, .. } => SortValue::Text(n.clone()),
            Value::Token { c, s } => SortValue::Text(c.clone().or_else(|| s.clone())?),
            Value::Text { .. } | Value::OfType { .. } | Value::RefIdentifier { .. } => return None,
            Value::Ref { r, .. } => SortValue::Text(r.clone()),
            Value::Uri { u } => SortValue::Text(u.clone()),
            Value::Range { lo, hi } | Value::Quantity { lo, hi, .. } => {
                SortValue::Number(if descending { *hi } else { *lo })
            }
            Value::Composite { .. } => return None,
        })
    });
    if descending {
        values.max()
    } else {
        values.min()
    }
}

/// A sort key's value.
#[derive(Clone, Debug, PartialEq)]
pub enum SortValue {
    Number(f64),
    Text(String),
}

impl Eq for SortValue {}

impl PartialOrd for SortValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (SortValue::Number(a), SortValue::Number(b)) => a.total_cmp(b),
            (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
            (SortValue::Number(_), SortValue::Text(_)) => std::cmp::Ordering::Less,
            (SortValue::Text(_), SortValue::Number(_)) => std::cmp::Ordering::Greater,
        }
    }
}

#[cfg(test)]
mod tests;
