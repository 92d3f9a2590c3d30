//! RFC 8785 (JSON Canonicalization Scheme) of a stored resource: the exact bytes an
//! AuditEvent's Merkle leaf is the keccak256 of, so anyone holding the JSON the server returned
//! can recompute the leaf with any JCS implementation. Members sorted by the UTF-16 code units
//! of their names, no whitespace, strings escaped as ECMAScript's `JSON.stringify` does, numbers
//! written as ECMAScript's `Number.prototype.toString` writes them.

use crate::fhir::json::Json;

/// The canonical bytes of `value`.
pub fn canonical(value: &Json) -> Vec<u8> {
    let mut out = String::new();
    write_value(value, &mut out);
    out.into_bytes()
}

fn write_value(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(literal) => out.push_str(&number(literal)),
        Json::String(s) => write_string(s, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Json::Object(object) => {
            let mut members: Vec<(&str, &Json)> = object.iter().collect();
            members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (name, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_value(member, out);
            }
            out.push('}');
        }
    }
}

pub(crate) fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON number literal as ECMAScript writes the double it denotes (RFC 8785 section 3.2.2.3).
fn number(literal: &str) -> String {
    let value: f64 = literal.parse().unwrap_or(0.0);
    if value == 0.0 || !value.is_finite() {
        return "0".to_owned();
    }
    // Rust's `{:e}` gives the shortest digits that read back as the same double.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    let n = exponent.parse::<i32>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let sign = if n - 1 < 0 { '-' } else { '+' };
        let tail = if k == 1 {
            String::new()
        } else {
            format!(".{}", &digits[1..])
        };
        format!("{}{tail}e{sign}{}", &digits[..1], (n - 1).abs())
    };
    if value < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jcs(text: &str) -> String {
        String::from_utf8(canonical(
            &crate::fhir::json::parse(text.as_bytes()).unwrap(),
        ))
        .unwrap()
    }

    #[test]
    fn members_are_sorted_by_utf16_code_units_and_whitespace_goes() {
        // U+1D11E (a surrogate pair, D834 DD1E) sorts before U+FB33 in UTF-16, after it in
        // code points: JCS wants the former.
        assert_eq!(
            jcs("{ \"b\": [1, 2], \"a\": {\"z\": null, \"\u{fb33}\": 1, \"\u{1d11e}\": 2} }"),
            "{\"a\":{\"z\":null,\"\u{1d11e}\":2,\"\u{fb33}\":1},\"b\":[1,2]}"
        );
    }

    #[test]
    fn strings_are_escaped_as_ecmascript_does() {
        assert_eq!(
            jcs(r#""a\"b\\c\/d\u0001\u001f\n\t\u00e9\u2028""#),
            "\"a\\\"b\\\\c/d\\u0001\\u001f\\n\\t\u{e9}\u{2028}\""
        );
    }

    #[test]
    fn numbers_are_written_as_ecmascript_writes_them() {
        for (literal, expected) in [
            ("0", "0"),
            ("-0", "0"),
            ("1", "1"),
            ("1.0", "1"),
            ("-1.50", "-1.5"),
            ("100", "100"),
            ("1e2", "100"),
            ("123456789012345680000", "123456789012345680000"),
            ("1e21", "1e+21"),
            ("1.5e22", "1.5e+22"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("1.25e-7", "1.25e-7"),
            ("9007199254740993", "9007199254740992"),
            ("333333333.33333329", "333333333.3333333"),
            ("4.50", "4.5"),
            ("2e-3", "0.002"),
        ] {
            assert_eq!(number(literal), expected, "{literal}");
        }
    }
}
