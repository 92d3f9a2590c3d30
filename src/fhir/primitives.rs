//! The lexical rules of R4's primitive datatypes, checked on the JSON value a client sent.
//!
//! Each rule is the one the R4 specification states for the type (its regex, value range and
//! the 1 MB cap on strings), with one addition: calendar dates must exist (`2023-02-30` is
//! refused), which the published regexes alone would let through.
//!
//! Must not know about elements or resources: `validate` decides where a primitive is expected.

use super::definitions::Primitive;
use super::json::Json;

/// R4: "strings SHALL NOT exceed 1 MB in size".
pub const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Checks one primitive value; the error says what is wrong, in words for a client.
pub fn check(kind: Primitive, value: &Json) -> Result<(), String> {
    match kind {
        Primitive::Boolean => match value {
            Json::Bool(_) => Ok(()),
            other => Err(format!("expected a boolean, found {}", other.kind())),
        },
        Primitive::Integer => integer(value, i64::from(i32::MIN)),
        Primitive::UnsignedInt => integer(value, 0),
        Primitive::PositiveInt => integer(value, 1),
        Primitive::Decimal => decimal(value),
        _ => {
            let Json::String(text) = value else {
                return Err(format!("expected a string, found {}", value.kind()));
            };
            if text.is_empty() {
                return Err("empty string: leave the element out instead".into());
            }
            if is_string_kind(kind) && text.len() > MAX_STRING_BYTES {
                return Err(format!(
                    "string of {} bytes exceeds the 1 MB limit",
                    text.len()
                ));
            }
            string_rule(kind, text)
        }
    }
}

fn string_rule(kind: Primitive, text: &str) -> Result<(), String> {
    let ok = match kind {
        Primitive::String | Primitive::Markdown => true,
        Primitive::Code => is_code(text),
        Primitive::Id => is_id(text),
        Primitive::Uri | Primitive::Url | Primitive::Canonical => {
            !text.bytes().any(is_schema_space)
        }
        Primitive::Oid => is_oid(text),
        Primitive::Uuid => is_uuid(text),
        Primitive::Base64Binary => is_base64(text),
        Primitive::Date => return date(text).map(|_| ()),
        Primitive::DateTime => return date_time(text, false),
        Primitive::Instant => return date_time(text, true),
        Primitive::Time => return time(text),
        Primitive::Xhtml => {
            let t = text.trim();
            t.starts_with("<div") && t.ends_with("div>")
        }
        // Numbers and booleans never reach here: `check` handles them before strings.
        Primitive::Boolean
        | Primitive::Integer
        | Primitive::UnsignedInt
        | Primitive::PositiveInt
        | Primitive::Decimal => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("not a valid {}: \"{}\"", name(kind), preview(text)))
    }
}

/// The 1 MB cap belongs to `string` and the types derived from it; `xhtml`, `uri` and
/// `base64Binary` are not strings in R4 (an attachment or a narrative may be larger).
fn is_string_kind(kind: Primitive) -> bool {
    matches!(
        kind,
        Primitive::String | Primitive::Code | Primitive::Id | Primitive::Markdown
    )
}

/// A valid FHIR logical id: 1–64 of `A-Z a-z 0-9 - .`.
pub fn is_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `\s` in the XML Schema regexes R4 publishes: space, tab, CR, LF, and nothing else (a
/// no-break space is not whitespace there, and official examples rely on it).
fn is_schema_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_code(text: &str) -> bool {
    // `[^\s]+(\s[^\s]+)*`: no leading, trailing or doubled whitespace.
    let bytes = text.as_bytes();
    !bytes.first().copied().is_some_and(is_schema_space)
        && !bytes.last().copied().is_some_and(is_schema_space)
        && !bytes
            .windows(2)
            .any(|w| is_schema_space(w[0]) && is_schema_space(w[1]))
}

fn is_oid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut arcs = rest.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut count = 0;
    let rest_ok = arcs.all(|arc| {
        count += 1;
        !arc.is_empty()
            && arc.bytes().all(|b| b.is_ascii_digit())
            && (arc == "0" || !arc.starts_with('0'))
    });
    first_ok && rest_ok && count > 0
}

fn is_uuid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:uuid:") else {
        return false;
    };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_base64(text: &str) -> bool {
    let mut count = 0usize;
    for b in text.bytes() {
        if b.is_ascii_whitespace() {
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=') {
            return false;
        }
        count += 1;
    }
    count.is_multiple_of(4)
}

fn integer(value: &Json, minimum: i64) -> Result<(), String> {
    let Json::Number(literal) = value else {
        return Err(format!("expected a whole number, found {}", value.kind()));
    };
    if literal.contains(['.', 'e', 'E']) {
        return Err(format!("expected a whole number, found {literal}"));
    }
    match literal.parse::<i64>() {
        Ok(n) if n >= minimum && n <= i64::from(i32::MAX) => Ok(()),
        _ => Err(format!(
            "{literal} is out of range (allowed {minimum} to {})",
            i32::MAX
        )),
    }
}

fn decimal(value: &Json) -> Result<(), String> {
    let Json::Number(literal) = value else {
        return Err(format!("expected a number, found {}", value.kind()));
    };
    match literal.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(()),
        _ => Err(format!(
            "{} is out of range for a decimal",
            preview(literal)
        )),
    }
}

/// Parses `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, checking the calendar; returns the consumed length.
fn date(text: &str) -> Result<usize, String> {
    let bad = || format!("not a valid date: \"{}\"", preview(text));
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let year = digits(0..4).filter(|&y| y >= 1).ok_or_else(bad)?;
    if b.len() == 4 {
        return Ok(4);
    }
    if b.get(4) != Some(&b'-') {
        return Err(bad());
    }
    let month = digits(5..7)
        .filter(|m| (1..=12).contains(m))
        .ok_or_else(bad)?;
    if b.len() == 7 {
        return Ok(7);
    }
    if b.get(7) != Some(&b'-') {
        return Err(bad());
    }
    let day = digits(8..10).ok_or_else(bad)?;
    if day < 1 || day > days_in_month(year, month) {
        return Err(format!(
            "not a valid date: \"{}\" (no such day)",
            preview(text)
        ));
    }
    if b.len() == 10 || b.get(10) == Some(&b'T') {
        Ok(10)
    } else {
        Err(bad())
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `dateTime` (any date precision, or a full time with zone) and `instant` (always full).
fn date_time(text: &str, instant: bool) -> Result<(), String> {
    let name = if instant { "instant" } else { "dateTime" };
    let bad = || format!("not a valid {name}: \"{}\"", preview(text));
    let consumed = date(text).map_err(|_| bad())?;
    if consumed == text.len() {
        return if instant { Err(bad()) } else { Ok(()) };
    }
    if consumed != 10 {
        return Err(bad());
    }
    let rest = &text[11..];
    // The time runs up to the zone designator.
    let zone_at = rest.find(['Z', '+', '-']).ok_or_else(bad)?;
    time(&rest[..zone_at]).map_err(|_| bad())?;
    let zone = &rest[zone_at..];
    let zone_ok = zone == "Z"
        || (zone.len() == 6
            && zone.as_bytes()[3] == b':'
            && {
                let hours = zone[1..3].parse::<u32>().ok();
                let minutes = zone[4..6].parse::<u32>().ok();
                matches!((hours, minutes), (Some(h), Some(m)) if (h <= 13 && m <= 59) || (h == 14 && m == 0))
            });
    if zone_ok { Ok(()) } else { Err(bad()) }
}

fn time(text: &str) -> Result<(), String> {
    let bad = || format!("not a valid time: \"{}\"", preview(text));
    let b = text.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return Err(bad());
    }
    let two = |i: usize| -> Option<u32> {
        let (h, l) = (b[i], b[i + 1]);
        (h.is_ascii_digit() && l.is_ascii_digit())
            .then(|| u32::from(h - b'0') * 10 + u32::from(l - b'0'))
    };
    let ok = matches!(two(0), Some(h) if h <= 23)
        && matches!(two(3), Some(m) if m <= 59)
        && matches!(two(6), Some(s) if s <= 60);
    // `get`, not indexing: byte 8 may fall inside a multi-byte character of a client's text.
    let fraction_ok = match text.get(8..) {
        Some("") => true,
        Some(f) => f.len() > 1 && f.starts_with('.') && f[1..].bytes().all(|d| d.is_ascii_digit()),
        None => false,
    };
    if ok && fraction_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

fn name(kind: Primitive) -> &'static str {
    match kind {
        Primitive::Code => "code",
        Primitive::Id => "id",
        Primitive::Uri => "uri",
        Primitive::Url => "url",
        Primitive::Canonical => "canonical",
        Primitive::Oid => "oid",
        Primitive::Uuid => "uuid",
        Primitive::Base64Binary => "base64Binary",
        Primitive::Xhtml => "xhtml div",
        _ => "value",
    }
}

/// At most 64 characters of a value, so an error never echoes a megabyte back.
fn preview(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Json {
        Json::String(text.into())
    }
    fn n(text: &str) -> Json {
        Json::Number(text.into())
    }

    #[test]
    fn accepts_what_r4_allows() {
        let cases: &[(Primitive, Json)] = &[
            (Primitive::Date, s("2024")),
            (Primitive::Date, s("2024-02")),
            (Primitive::Date, s("2024-02-29")),
            (Primitive::DateTime, s("2015-02-07T13:28:17-05:00")),
            (Primitive::DateTime, s("2015-02-07T13:28:17.239+14:00")),
            (Primitive::DateTime, s("2015")),
            (Primitive::Instant, s("2015-02-07T13:28:17.239Z")),
            (Primitive::Time, s("23:59:60")),
            (Primitive::Integer, n("-2147483648")),
            (Primitive::PositiveInt, n("1")),
            (Primitive::UnsignedInt, n("0")),
            (Primitive::Decimal, n("1.50")),
            (Primitive::Decimal, n("1e300")),
            (Primitive::Code, s("a code")),
            (Primitive::Code, s("CHEST\u{a0}")),
            (Primitive::Id, s("example-1.2")),
            (Primitive::Oid, s("urn:oid:1.2.840.10008")),
            (
                Primitive::Uuid,
                s("urn:uuid:a76d9bbf-f293-4fb7-ad4c-2851cac77162"),
            ),
            (Primitive::Base64Binary, s("SGVs bG8=")),
            (
                Primitive::Xhtml,
                s("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"),
            ),
            (Primitive::Boolean, Json::Bool(false)),
        ];
        for (kind, value) in cases {
            assert_eq!(check(*kind, value), Ok(()), "{kind:?} {value:?}");
        }
    }

    #[test]
    fn refuses_what_r4_forbids() {
        let cases: &[(Primitive, Json, &str)] = &[
            (Primitive::Date, s("2023-02-29"), "no such day"),
            (Primitive::Date, s("2023-13-01"), "not a valid date"),
            (Primitive::Date, s("0000"), "not a valid date"),
            (Primitive::Date, s("2023-1-01"), "not a valid date"),
            (
                Primitive::DateTime,
                s("2015-02-07T13:28"),
                "not a valid dateTime",
            ),
            (
                Primitive::DateTime,
                s("2015-02-07T13:28:17"),
                "not a valid dateTime",
            ),
            (
                Primitive::DateTime,
                s("2015-02-07T25:00:00Z"),
                "not a valid dateTime",
            ),
            (
                Primitive::DateTime,
                s("2015-02-07T13:28:17+15:00"),
                "not a valid dateTime",
            ),
            (Primitive::Instant, s("2015-02-07"), "not a valid instant"),
            // A multi-byte character where the fraction would start is refused, not sliced.
            (Primitive::Time, s("00:00:0é"), "not a valid time"),
            (
                Primitive::DateTime,
                s("2020-01-01T00:00:0éZ"),
                "not a valid dateTime",
            ),
            (Primitive::Date, s("2020-0é-01"), "not a valid date"),
            (Primitive::Integer, n("2147483648"), "out of range"),
            (Primitive::Integer, n("1.0"), "whole number"),
            (
                Primitive::Integer,
                s("1"),
                "expected a whole number, found string",
            ),
            (Primitive::PositiveInt, n("0"), "out of range"),
            (Primitive::UnsignedInt, n("-1"), "out of range"),
            (Primitive::Decimal, n("1e400"), "out of range"),
            (Primitive::String, s(""), "empty string"),
            (Primitive::Code, s(" lead"), "not a valid code"),
            (Primitive::Id, s("has space"), "not a valid id"),
            (Primitive::Id, s(&"x".repeat(65)), "not a valid id"),
            (Primitive::Uri, s("has space"), "not a valid uri"),
            (Primitive::Boolean, s("true"), "expected a boolean"),
            (
                Primitive::Base64Binary,
                s("abc"),
                "not a valid base64Binary",
            ),
        ];
        for (kind, value, expected) in cases {
            let err = check(*kind, value).expect_err(&format!("{kind:?} {value:?}"));
            assert!(err.contains(expected), "{kind:?} {value:?}: {err}");
        }
        let huge = s(&"x".repeat(MAX_STRING_BYTES + 1));
        assert!(
            check(Primitive::String, &huge)
                .unwrap_err()
                .contains("1 MB")
        );
    }
}
