//! The stored form of a version's search entries: a compact binary encoding, grouped by
//! parameter, that a search decodes only for the parameters it tests.
//!
//! Why not JSON: every candidate of a search is decoded, and a typical Observation has some
//! thirty entries; decoding them all as JSON (a tagged, flattened enum) was most of the time
//! a search spent per candidate. Here a parameter the search does not use is skipped by its
//! length, without allocating.
//!
//! Layout: the byte `FORMAT`, then for each parameter (in the order extraction produced
//! them): its code (length-prefixed), the length of its values' bytes, and its values. A value
//! is a tag byte and its fields: strings length-prefixed (LEB128), optional strings a 0/1 byte
//! first, numbers as 8 little-endian bytes. Entries stored before this format (JSON arrays,
//! which begin with `[`) are still read.
//!
//! Must not touch storage: it maps entries to bytes and back.

use super::entries::{SearchEntry, Value};

/// The first byte of this format (never `[`, which begins the older JSON form).
const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("unreadable search entries: {0}")]
pub struct CodecError(String);

/// Encodes `entries` (their order within each parameter is kept).
pub fn encode(entries: &[SearchEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 24 + 1);
    out.push(FORMAT);
    let mut start = 0;
    while start < entries.len() {
        let param = &entries[start].param;
        let end = start
            + entries[start..]
                .iter()
                .take_while(|e| &e.param == param)
                .count();
        let mut values = Vec::new();
        for entry in &entries[start..end] {
            put_value(&mut values, &entry.value);
        }
        put_str(&mut out, param);
        put_len(&mut out, values.len());
        out.extend_from_slice(&values);
        start = end;
    }
    out
}

/// Decodes the entries of the parameters `wanted` accepts (all of them: `|_| true`).
pub fn decode(bytes: &[u8], wanted: impl Fn(&str) -> bool) -> Result<Vec<SearchEntry>, CodecError> {
    match bytes.first() {
        None => Ok(Vec::new()),
        Some(b'[') => {
            let all: Vec<SearchEntry> =
                serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string()))?;
            Ok(all.into_iter().filter(|e| wanted(&e.param)).collect())
        }
        Some(&FORMAT) => {
            let mut reader = Reader { bytes: &bytes[1..] };
            let mut out = Vec::new();
            while !reader.bytes.is_empty() {
                let param = reader.str()?;
                let len = reader.len()?;
                let values = reader.take(len)?;
                if !wanted(param) {
                    continue;
                }
                let mut values = Reader { bytes: values };
                while !values.bytes.is_empty() {
                    out.push(SearchEntry {
                        param: param.to_owned(),
                        value: values.value(0)?,
                    });
                }
            }
            Ok(out)
        }
        Some(other) => Err(CodecError(format!("unknown format {other}"))),
    }
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, text: &Option<String>) {
    match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_str(out, text);
        }
    }
}

fn put_f64(out: &mut Vec<u8>, n: f64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str { n, x } => {
            out.push(b's');
            put_str(out, n);
            put_str(out, x);
        }
        Value::Token { s, c } => {
            out.push(b't');
            put_opt(out, s);
            put_opt(out, c);
        }
        Value::Text { n } => {
            out.push(b'x');
            put_str(out, n);
        }
        Value::OfType { s, c, v } => {
            out.push(b'o');
            put_str(out, s);
            put_str(out, c);
            put_str(out, v);
        }
        Value::Ref { r, t } => {
            out.push(b'r');
            put_str(out, r);
            put_opt(out, t);
        }
        Value::RefIdentifier { s, v } => {
            out.push(b'i');
            put_opt(out, s);
            put_str(out, v);
        }
        Value::Range { lo, hi } => {
            out.push(b'n');
            put_f64(out, *lo);
            put_f64(out, *hi);
        }
        Value::Quantity { lo, hi, s, c, u } => {
            out.push(b'q');
            put_f64(out, *lo);
            put_f64(out, *hi);
            put_opt(out, s);
            put_opt(out, c);
            put_opt(out, u);
        }
        Value::Uri { u } => {
            out.push(b'u');
            put_str(out, u);
        }
        Value::Composite { parts } => {
            out.push(b'c');
            put_len(out, parts.len());
            for part in parts {
                put_len(out, part.len());
                for value in part {
                    put_value(out, value);
                }
            }
        }
    }
}

/// Composites nest composites no deeper than this (the official ones do not nest at all).
const MAX_DEPTH: usize = 4;

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn short() -> CodecError {
        CodecError("truncated".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.bytes.len() {
            return Err(Reader::short());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self) -> Result<usize, CodecError> {
        let mut n: usize = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            n |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(CodecError("a length past 64 bits".into()))
    }

    fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| CodecError(e.to_string()))
    }

    fn string(&mut self) -> Result<String, CodecError> {
        self.str().map(str::to_owned)
    }

    fn opt(&mut self) -> Result<Option<String>, CodecError> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            other => Err(CodecError(format!("an option marked {other}"))),
        }
    }

    fn f64(&mut self) -> Result<f64, CodecError> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| Reader::short())?;
        Ok(f64::from_le_bytes(bytes))
    }

    fn value(&mut self, depth: usize) -> Result<Value, CodecError> {
        Ok(match self.byte()? {
            b's' => Value::Str {
                n: self.string()?,
                x: self.string()?,
            },
            b't' => Value::Token {
                s: self.opt()?,
                c: self.opt()?,
            },
            b'x' => Value::Text { n: self.string()? },
            b'o' => Value::OfType {
                s: self.string()?,
                c: self.string()?,
                v: self.string()?,
            },
            b'r' => Value::Ref {
                r: self.string()?,
                t: self.opt()?,
            },
            b'i' => Value::RefIdentifier {
                s: self.opt()?,
                v: self.string()?,
            },
            b'n' => Value::Range {
                lo: self.f64()?,
                hi: self.f64()?,
            },
            b'q' => Value::Quantity {
                lo: self.f64()?,
                hi: self.f64()?,
                s: self.opt()?,
                c: self.opt()?,
                u: self.opt()?,
            },
            b'u' => Value::Uri { u: self.string()? },
            b'c' if depth < MAX_DEPTH => {
                let count = self.len()?;
                let mut parts = Vec::new();
                for _ in 0..count {
                    let values = self.len()?;
                    let mut part = Vec::new();
                    for _ in 0..values {
                        part.push(self.value(depth + 1)?);
                    }
                    parts.push(part);
                }
                Value::Composite { parts }
            }
            other => return Err(CodecError(format!("a value tagged {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<SearchEntry> {
        let entry = |param: &str, value: Value| SearchEntry {
            param: param.into(),
            value,
        };
        vec![
            entry(
                "name",
                Value::Str {
                    n: "ménard".into(),
                    x: "Ménard".into(),
                },
            ),
            entry(
                "name",
                Value::Str {
                    n: "jo".into(),
                    x: "Jo".into(),
                },
            ),
            entry(
                "code",
                Value::Token {
                    s: Some("http://loinc.org".into()),
                    c: None,
                },
            ),
            entry(
                "code",
                Value::Text {
                    n: "glucose".into(),
                },
            ),
            entry(
                "identifier",
                Value::OfType {
                    s: "s".into(),
                    c: "MR".into(),
                    v: "1".into(),
                },
            ),
            entry(
                "subject",
                Value::Ref {
                    r: "Patient/1".into(),
                    t: Some("Patient".into()),
                },
            ),
            entry(
                "subject",
                Value::RefIdentifier {
                    s: None,
                    v: "x".into(),
                },
            ),
            entry(
                "date",
                Value::Range {
                    lo: -1.0e300,
                    hi: 1.5,
                },
            ),
            entry(
                "value-quantity",
                Value::Quantity {
                    lo: 99.5,
                    hi: 100.5,
                    s: Some("http://unitsofmeasure.org".into()),
                    c: Some("mg".into()),
                    u: None,
                },
            ),
            entry(
                "url",
                Value::Uri {
                    u: "http://x/y".into(),
                },
            ),
            entry(
                "code-value-quantity",
                Value::Composite {
                    parts: vec![
                        vec![Value::Token {
                            s: None,
                            c: Some("a".into()),
                        }],
                        vec![
                            Value::Range { lo: 1.0, hi: 2.0 },
                            Value::Uri { u: "u".into() },
                        ],
                    ],
                },
            ),
        ]
    }

    #[test]
    fn every_value_round_trips() {
        let entries = sample();
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes, |_| true).unwrap(), entries);
        assert!(decode(&encode(&[]), |_| true).unwrap().is_empty());
        assert!(decode(&[], |_| true).unwrap().is_empty());
    }

    #[test]
    fn only_wanted_parameters_are_decoded() {
        let bytes = encode(&sample());
        let subject = decode(&bytes, |p| p == "subject").unwrap();
        assert_eq!(subject.len(), 2);
        assert!(subject.iter().all(|e| e.param == "subject"));
    }

    #[test]
    fn the_json_form_is_still_read() {
        let entries = sample();
        let json = serde_json::to_vec(&entries).unwrap();
        assert_eq!(decode(&json, |_| true).unwrap(), entries);
        assert_eq!(decode(&json, |p| p == "name").unwrap().len(), 2);
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_panic() {
        let bytes = encode(&sample());
        for cut in 1..bytes.len() {
            let _ = decode(&bytes[..cut], |_| true);
        }
        assert!(decode(&[9, 1, 2], |_| true).is_err());
        assert!(decode(&bytes[..bytes.len() - 3], |_| true).is_err());
    }
}
