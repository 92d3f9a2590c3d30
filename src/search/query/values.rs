//! Search values: a parameter's raw text read as its type (prefixes, precision as ranges,
//! `system|code`, quantities, references). A value that does not fit its type is an error.

use super::{
    Modifier, Prefix, QueryError, SearchValue, TokenSystem, preview, split_escaped, unescape,
};
use crate::search::params::{ParamType, SearchParam};

/// Splits a leading comparison prefix off an ordered value.
fn split_prefix(value: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = value.strip_prefix(text)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

/// A decimal's value and the range its written precision denotes (`100` is [99.5, 100.5),
/// `1.50` is [1.495, 1.505)).
pub fn decimal_range(text: &str) -> Option<(f64, f64, f64)> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'));
    if !valid {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let half = 0.5 * 10f64.powi(exponent - decimals);
    // Ranges are compared inclusively: the upper end is the last number below `value + half`.
    Some((value, value - half, (value + half).next_down()))
}

/// The period of a date search value: a FHIR date or dateTime, or a dateTime given to the
/// minute (which search allows).
pub fn date_period(text: &str) -> Option<(f64, f64)> {
    if let Some((lo, hi)) = crate::fhir::instant::period(text) {
        return Some((lo as f64, hi as f64));
    }
    // `2020-01-01T10:00` or with a zone: the whole minute.
    let (date_time, zone) = match text.get(16..) {
        Some(zone) if text.len() > 16 => (&text[..16], zone),
        _ => (text, ""),
    };
    if date_time.len() != 16 || date_time.as_bytes().get(13) != Some(&b':') {
        return None;
    }
    let with_seconds = format!("{date_time}:00{}", if zone.is_empty() { "Z" } else { zone });
    let (lo, _) = crate::fhir::instant::period(&with_seconds)?;
    Some((lo as f64, (lo + 59_999) as f64))
}

pub(super) fn parse_value(
    param: &SearchParam,
    modifier: Option<&Modifier>,
    raw: &str,
) -> Result<SearchValue, QueryError> {
    let invalid =
        |why: String| QueryError::Invalid(format!("{}={}: {why}", param.code, preview(raw)));
    match param.kind {
        ParamType::String | ParamType::Uri => Ok(SearchValue::Text(unescape(raw))),
        ParamType::Token => {
            if modifier == Some(&Modifier::Text) {
                return Ok(SearchValue::Text(unescape(raw)));
            }
            // `gt5`, `le2020-01-01`: a comparison, which tokens do not have.
            let (prefix, rest) = split_prefix(raw);
            if prefix != Prefix::Eq || raw.starts_with("eq") {
                let looks_ordered = decimal_range(rest).is_some() || date_period(rest).is_some();
                if looks_ordered && !raw.contains('|') {
                    return Err(invalid(
                        "token parameters take no comparison prefix (eq, gt, lt, …)".into(),
                    ));
                }
            }
            let parts = split_escaped(raw, '|');
            if modifier == Some(&Modifier::OfType) {
                return match parts.as_slice() {
                    [system, code, value] if !code.is_empty() && !value.is_empty() => {
                        Ok(SearchValue::OfType {
                            system: unescape(system),
                            code: unescape(code),
                            value: unescape(value),
                        })
                    }
                    _ => Err(invalid(":of-type takes type-system|type-code|value".into())),
                };
            }
            match parts.as_slice() {
                [code] => Ok(SearchValue::Token {
                    system: TokenSystem::Any,
                    code: Some(unescape(code)),
                }),
                [system, code] => Ok(SearchValue::Token {
                    system: if system.is_empty() {
                        TokenSystem::None
                    } else {
                        TokenSystem::Is(unescape(system))
                    },
                    code: (!code.is_empty()).then(|| unescape(code)),
                }),
                _ => Err(invalid(
                    "a token is code, system|code, |code or system|".into(),
                )),
            }
        }
        ParamType::Reference => {
            let value = unescape(raw);
            if modifier == Some(&Modifier::Identifier) && !value.contains('|') {
                return Ok(SearchValue::Reference(format!("|{value}")));
            }
            Ok(SearchValue::Reference(value))
        }
        ParamType::Date => {
            let (prefix, text) = split_prefix(raw);
            let (lo, hi) = date_period(text).ok_or_else(|| {
                invalid(
                    "not a FHIR date or dateTime (e.g. 2020, 2020-05-01, 2020-05-01T10:00:00Z)"
                        .into(),
                )
            })?;
            Ok(SearchValue::Date { prefix, lo, hi })
        }
        ParamType::Number | ParamType::Quantity => {
            let (prefix, text) = split_prefix(raw);
            let parts = split_escaped(text, '|');
            let (number, system, code) = match (param.kind, parts.as_slice()) {
                (ParamType::Number, [number]) => (number.as_str(), None, None),
                (ParamType::Quantity, [number]) => (number.as_str(), None, None),
                (ParamType::Quantity, [number, system, code]) => (
                    number.as_str(),
                    (!system.is_empty()).then(|| system.clone()),
                    (!code.is_empty()).then(|| code.clone()),
                ),
                _ => {
                    return Err(invalid(
                        "a number, or for a quantity number|system|code".into(),
                    ));
                }
            };
            let (value, lo, hi) =
                decimal_range(number).ok_or_else(|| invalid("not a number".into()))?;
            Ok(SearchValue::Number {
                prefix,
                value,
                lo,
                hi,
                system,
                code,
            })
        }
        ParamType::Composite => {
            let parts = split_escaped(raw, '$');
            if parts.len() != param.components.len() {
                return Err(invalid(format!(
                    "a composite of {} parts joined by $",
                    param.components.len()
                )));
            }
            let mut values = Vec::new();
            for (part, component) in parts.iter().zip(&param.components) {
                let stand_in = SearchParam {
                    code: param.code.clone(),
                    url: String::new(),
                    kind: component.kind,
                    expression: None,
                    targets: Vec::new(),
                    components: Vec::new(),
                    unsupported: None,
                };
                values.push(parse_value(&stand_in, None, part)?);
            }
            Ok(SearchValue::Composite(values))
        }
        ParamType::Special => Err(QueryError::Unsupported(format!(
            "the special parameter {} is not supported",
            param.code
        ))),
    }
}
