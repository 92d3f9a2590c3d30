//! Index keys: each entry as the strings both index stores keep in one ordered, multi-valued
//! index, so that every search condition a store is asked to use is a single equality, a set of
//! equalities or a single range over that one index (the MongoDB-compatible server the
//! services profile runs on uses an index for exactly those, never for an `$elemMatch`, an
//! `$and` or an `$or` of them).
//!
//! A key is `param ␁ form ␁ value` (␁ = U+0001, which FHIR strings cannot contain):
//!
//! | entry | form | value | narrows |
//! |---|---|---|---|
//! | string | `n` | folded text | prefix (a range), `:exact` (its folded form) |
//! | token | `c` | code | `code`, `\|code` |
//! | token with a system | `sc` | system ␁ code | `system\|code`, `system\|` (a range) |
//! | identifier of a type | `o` | type system ␁ type code ␁ value | `:of-type` |
//! | reference | `r` | `Type/id`, or the URL | `Type/id`, `id` (one per target type), URL |
//! | reference identifier with a system | `i` | system ␁ value | `:identifier` |
//! | range, quantity | `lo`, `hi` | the bound, order-preserving hex | every prefix but `ne`, `ap` |
//! | quantity with a unit | `uc` | unit code | `value\|system\|code` |
//! | uri | `u` | the URI | equality, `:below` (a range) |
//! | composite | (its first component's keys) | | its first component |
//!
//! Besides the entries' keys, a resource has one key per patient whose compartment it is in,
//! `$patient ␁ p ␁ id` (`$` cannot start a parameter's code): what `$everything` and a
//! `patient/`-scoped search narrow by when nothing narrower is asked.
//!
//! What has no key of its own (`:text`, `:contains`, `:missing=false`, a value-only
//! `:identifier`, `ne`, `ap`) narrows to every key of its parameter: the range
//! `[param ␁, param ␂)`. Keys are as few as the conditions need, since every key of every
//! resource is one more entry in a B-tree on every write.
//!
//! Keys only narrow: the entries decide. Every store condition is built so that a resource
//! matching the search has a key that meets it (a superset); the exact semantics (date
//! precision, prefixes, `:not`, composites) are then checked on the entries themselves.
//!
//! Must not touch storage.

use super::entries::{SearchEntry, Value};

/// The separator inside a key.
pub const SEP: char = '\u{1}';

/// The pseudo-parameter of compartment keys.
pub const COMPARTMENT_PARAM: &str = "$patient";

/// The key of the resources in `patient`'s compartment (a patient id).
pub fn compartment_key(patient: &str) -> String {
    key(COMPARTMENT_PARAM, "p", patient)
}

/// A key of `param` in `form` with `value`.
pub fn key(param: &str, form: &str, value: &str) -> String {
    format!("{param}{SEP}{form}{SEP}{value}")
}

/// The first key past every key starting with `prefix`: `[prefix, end)` is a prefix range.
pub fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// An order-preserving text form of a number: 16 hex digits whose string order is the
/// numbers' order (negative numbers included).
pub fn encode_number(value: f64) -> String {
    let bits = value.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    format!("{ordered:016x}")
}

fn value_keys(param: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Str { n, .. } => out.push(key(param, "n", n)),
        Value::Token { s, c: Some(code) } => {
            out.push(key(param, "c", code));
            if let Some(system) = s {
                out.push(key(param, "sc", &format!("{system}{SEP}{code}")));
            }
        }
        Value::Token {
            s: Some(system),
            c: None,
        } => {
            out.push(key(param, "sc", &format!("{system}{SEP}")));
        }
        Value::OfType { s, c, v } => out.push(key(param, "o", &format!("{s}{SEP}{c}{SEP}{v}"))),
        Value::Ref { r, .. } => out.push(key(param, "r", r)),
        Value::RefIdentifier { s: Some(s), v } => {
            out.push(key(param, "i", &format!("{s}{SEP}{v}")));
        }
        Value::Range { lo, hi } => {
            out.push(key(param, "lo", &encode_number(*lo)));
            out.push(key(param, "hi", &encode_number(*hi)));
        }
        Value::Quantity { lo, hi, c, .. } => {
            out.push(key(param, "lo", &encode_number(*lo)));
            out.push(key(param, "hi", &encode_number(*hi)));
            if let Some(code) = c {
                out.push(key(param, "uc", code));
            }
        }
        Value::Uri { u } => out.push(key(param, "u", u)),
        Value::Composite { parts } => {
            for first in parts.first().into_iter().flatten() {
                value_keys(param, first, out);
            }
        }
        // A parameter with only such values still needs one key, for `:missing=false`.
        Value::Token { s: None, c: None } | Value::Text { .. } | Value::RefIdentifier { .. } => {
            out.push(key(param, "_", ""))
        }
    }
}

/// Every key of `param`: `[param ␁, param ␂)`, what a condition without keys of its own
/// narrows to.
pub fn param_range(param: &str) -> (String, String) {
    (format!("{param}{SEP}"), format!("{param}\u{2}"))
}

/// Every key of a resource with these entries in these patients' compartments, sorted,
/// without repeats.
pub fn keys_of(entries: &[SearchEntry], patients: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(entries.len() * 3 + patients.len());
    for entry in entries {
        value_keys(&entry.param, &entry.value, &mut out);
    }
    out.extend(patients.iter().map(|p| compartment_key(p)));
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sort_as_their_text() {
        let values = [
            -1.0e300, -5.5, -1.0, -0.0, 0.0, 1.0e-9, 1.0, 99.5, 100.0, 1.0e15, 1.0e300,
        ];
        let encoded: Vec<String> = values.iter().map(|v| encode_number(*v)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded);
    }

    #[test]
    fn tokens_have_every_form_a_search_needs() {
        let entries = [SearchEntry {
            param: "code".into(),
            value: Value::Token {
                s: Some("http://loinc.org".into()),
                c: Some("1234-5".into()),
            },
        }];
        let keys = keys_of(&entries, &[]);
        assert_eq!(
            keys,
            [
                key("code", "c", "1234-5"),
                key("code", "sc", "http://loinc.org\u{1}1234-5")
            ]
        );
        let (from, to) = param_range("code");
        assert!(
            keys.iter()
                .all(|k| k.as_str() >= from.as_str() && k.as_str() < to.as_str())
        );
    }
}
