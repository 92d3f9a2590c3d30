//! FHIR JSON exactly as the client wrote it.
//!
//! Owns the strict parser and the serialiser for resource bodies. The server stores what the
//! client sent, normalised (insignificant whitespace removed, escapes canonical), never a
//! re-serialisation of a typed model. That rules out `serde_json::Value` for storage: it turns
//! `1.50` into `1.5`, and its `arbitrary_precision` feature would break fhir-sdk's `flatten`ed
//! models across the whole build. So numbers keep the literal text the client sent.
//!
//! The parser is also the first line of defence against hostile bodies: it rejects duplicate
//! keys (which `serde_json` silently resolves to the last one), caps nesting depth, and refuses
//! lone surrogates and unescaped control characters. It never panics and never recurses past
//! [`MAX_DEPTH`].
//!
//! Must not know about resources or HTTP: it is pure data.

use std::fmt;

/// Deepest nesting accepted. Real resources stay far below it (a deep Questionnaire reaches
/// ~20); a 1,000-level body is an attack or a bug and is refused before it can exhaust a stack.
pub const MAX_DEPTH: usize = 128;

/// One JSON value, order-preserving, with numbers as their original literal.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number literal as sent, already checked against the JSON number grammar.
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Object),
}

/// Objects with at most this many members are checked for duplicates by a linear scan: real
/// resources' objects are this small, and for them a scan beats hashing.
const LINEAR_SCAN_MEMBERS: usize = 32;

/// The member names of the object being parsed, for the duplicate check. Past
/// [`LINEAR_SCAN_MEMBERS`] they move into a set, so a hostile object with a million keys costs
/// a million lookups rather than half a trillion comparisons.
#[derive(Default)]
struct SeenKeys(Option<std::collections::HashSet<String>>);

impl SeenKeys {
    /// Whether `key` is already among `members`; remembers it if not.
    fn is_duplicate(&mut self, members: &[(String, Json)], key: &str) -> bool {
        if let Some(set) = &mut self.0 {
            return !set.insert(key.to_owned());
        }
        if members.iter().any(|(k, _)| k == key) {
            return true;
        }
        if members.len() >= LINEAR_SCAN_MEMBERS {
            let mut set: std::collections::HashSet<String> =
                members.iter().map(|(k, _)| k.clone()).collect();
            set.insert(key.to_owned());
            self.0 = Some(set);
        }
        false
    }
}

/// A JSON object: members in the order the client wrote them, keys unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object {
    members: Vec<(String, Json)>,
}

impl Object {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        self.members
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Sets `key`, keeping its position if present, appending otherwise.
    pub fn insert(&mut self, key: &str, value: Json) {
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.members.push((key.to_owned(), value)),
        }
    }

    /// Sets `key` at position `index` (or keeps its position if it already exists).
    pub fn insert_at(&mut self, index: usize, key: &str, value: Json) {
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                let index = index.min(self.members.len());
                self.members.insert(index, (key.to_owned(), value));
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Json> {
        let position = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(position).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json)> {
        self.members.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl FromIterator<(String, Json)> for Object {
    fn from_iter<I: IntoIterator<Item = (String, Json)>>(iter: I) -> Self {
        let mut object = Object::new();
        for (k, v) in iter {
            object.insert(&k, v);
        }
        object
    }
}

impl Json {
    pub fn str(value: impl Into<String>) -> Json {
        Json::String(value.into())
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_object_mut(&mut self) -> Option<&mut Object> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Member `key` of an object; `None` for anything else.
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.as_object().and_then(|o| o.get(key))
    }

    /// Human name of the JSON kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }

    /// Compact serialisation: the normalised form that is sealed and stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        write_value(&mut out, self, None, 0);
        out
    }

    /// Serialisation with two-space indentation, for `_pretty=true`.
    pub fn to_pretty_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        write_value(&mut out, self, Some(2), 0);
        out.push(b'\n');
        out
    }
}

/// Builds an object from literal members, in order: `object([("a", Json::Bool(true))])`.
pub fn object<const N: usize>(members: [(&str, Json); N]) -> Json {
    Json::Object(Object {
        members: members
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    })
}

/// Why a body is not acceptable JSON, with the byte offset where the parser stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

impl std::error::Error for JsonError {}

/// Parses one JSON document (RFC 8259), strictly: one value, nothing after it.
pub fn parse(input: &[u8]) -> Result<Json, JsonError> {
    let text = match std::str::from_utf8(input) {
        Ok(t) => t,
        Err(e) => {
            let parser = Parser {
                bytes: input,
                pos: e.valid_up_to(),
            };
            return Err(parser.error("body is not valid UTF-8"));
        }
    };
    let mut parser = Parser {
        bytes: text.as_bytes(),
        pos: 0,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos != parser.bytes.len() {
        return Err(parser.error("unexpected content after the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> JsonError {
        let consumed = &self.bytes[..self.pos.min(self.bytes.len())];
        let line = consumed.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = consumed.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        JsonError {
            message: message.to_owned(),
            line,
            column,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &str, value: Json) -> Result<Json, JsonError> {
        if self.bytes[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(value)
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth >= MAX_DEPTH {
            return Err(self.error(&format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        match self.peek() {
            None => Err(self.error("unexpected end of input")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.expect_literal("true", Json::Bool(true)),
            Some(b'f') => self.expect_literal("false", Json::Bool(false)),
            Some(b'n') => self.expect_literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a JSON value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.pos += 1;
        let mut members: Vec<(String, Json)> = Vec::new();
        let mut seen = SeenKeys::default();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(Object { members }));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name in double quotes"));
            }
            let key_start = self.pos;
            let key = self.string()?;
            if seen.is_duplicate(&members, &key) {
                self.pos = key_start;
                return Err(self.error(&format!("duplicate member \"{key}\"")));
            }
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after a member name"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(Object { members }));
                }
                None => return Err(self.error("unexpected end of input inside an object")),
                Some(_) => return Err(self.error("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                None => return Err(self.error("unexpected end of input inside an array")),
                Some(_) => return Err(self.error("expected ',' or ']' in an array")),
            }
        }
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: digits expected after '.'"));
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: digits expected in the exponent"));
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
        }
        // The slice is ASCII by construction.
        let literal = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or_default();
        Ok(Json::Number(literal.to_owned()))
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // Input was validated as UTF-8 and runs stop only at ASCII bytes.
            out.push_str(std::str::from_utf8(&self.bytes[run_start..self.pos]).unwrap_or_default());
            match self.peek() {
                None => return Err(self.error("unexpected end of input inside a string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => return Err(self.error("unescaped control character in a string")),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let c = self
            .peek()
            .ok_or_else(|| self.error("unexpected end of input in an escape"))?;
        self.pos += 1;
        match c {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let first = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&first) {
                    if !self.bytes[self.pos..].starts_with(b"\\u") {
                        return Err(self.error("lone high surrogate in a string"));
                    }
                    self.pos += 2;
                    let second = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return Err(self.error("invalid low surrogate in a string"));
                    }
                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                } else if (0xDC00..0xE000).contains(&first) {
                    return Err(self.error("lone low surrogate in a string"));
                } else {
                    first
                };
                out.push(char::from_u32(code).ok_or_else(|| self.error("invalid code point"))?);
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("invalid escape in a string"));
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("unexpected end of input in a \\u escape"))?;
        let mut value = 0u32;
        for &d in digits {
            let nibble = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid \\u escape"))?;
            value = value * 16 + nibble;
        }
        self.pos += 4;
        Ok(value)
    }
}

fn write_value(out: &mut Vec<u8>, value: &Json, indent: Option<usize>, level: usize) {
    match value {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Number(n) => out.extend_from_slice(n.as_bytes()),
        Json::String(s) => write_string(out, s),
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                newline(out, indent, level + 1);
                write_value(out, item, indent, level + 1);
            }
            if !items.is_empty() {
                newline(out, indent, level);
            }
            out.push(b']');
        }
        Json::Object(object) => {
            out.push(b'{');
            for (i, (key, item)) in object.members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                newline(out, indent, level + 1);
                write_string(out, key);
                out.push(b':');
                if indent.is_some() {
                    out.push(b' ');
                }
                write_value(out, item, indent, level + 1);
            }
            if !object.is_empty() {
                newline(out, indent, level);
            }
            out.push(b'}');
        }
    }
}

fn newline(out: &mut Vec<u8>, indent: Option<usize>, level: usize) {
    if let Some(width) = indent {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', width * level));
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input`, serialises it compactly and compares with `expected` (or the error text).
    fn check(input: &str, expected: &str) {
        let got = match parse(input.as_bytes()) {
            Ok(v) => String::from_utf8(v.to_bytes()).unwrap(),
            Err(e) => format!("error: {}", e.message),
        };
        assert_eq!(got, expected, "input: {input:?}");
    }

    #[test]
    fn normalises_and_keeps_what_was_sent() {
        check(
            " { \"b\" : 1.50 , \"a\":[true,false,null] } ",
            r#"{"b":1.50,"a":[true,false,null]}"#,
        );
        check(r#"{"n":-0.000e+10}"#, r#"{"n":-0.000e+10}"#);
        check(r#""\u00e9\/\ud83d\ude00\u0001""#, "\"é/😀\\u0001\"");
        check(r#"["tab\there","q\"uote"]"#, r#"["tab\there","q\"uote"]"#);
        check("{}", "{}");
        check("[]", "[]");
    }

    #[test]
    fn rejects_what_fhir_json_forbids() {
        check(r#"{"a":1,"a":2}"#, "error: duplicate member \"a\"");
        check(
            r#"{"a":1"#,
            "error: unexpected end of input inside an object",
        );
        check(r#"{"a":01}"#, "error: expected ',' or '}' in an object");
        check(
            r#"{"a":1.}"#,
            "error: invalid number: digits expected after '.'",
        );
        check(
            r#"{"a":"x"} x"#,
            "error: unexpected content after the JSON value",
        );
        check("\"\\ud800\"", "error: lone high surrogate in a string");
        check(
            "\"a\u{1}\"",
            "error: unescaped control character in a string",
        );
        check("{'a':1}", "error: expected a member name in double quotes");
        check("nul", "error: invalid literal");
        check("", "error: unexpected end of input");
        check(r#"{"a":NaN}"#, "error: expected a JSON value");
    }

    #[test]
    fn finds_duplicates_in_large_objects_too() {
        let members = |n: usize| (0..n).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>();
        let mut wide = members(1000);
        assert!(parse(format!("{{{}}}", wide.join(",")).as_bytes()).is_ok());
        // Duplicates on either side of the switch from scanning to the set.
        wide.push("\"k5\":0".into());
        check(
            &format!("{{{}}}", wide.join(",")),
            "error: duplicate member \"k5\"",
        );
        let mut small = members(LINEAR_SCAN_MEMBERS);
        small.push(format!("\"k{}\":0", LINEAR_SCAN_MEMBERS - 1));
        check(
            &format!("{{{}}}", small.join(",")),
            &format!("error: duplicate member \"k{}\"", LINEAR_SCAN_MEMBERS - 1),
        );
    }

    #[test]
    fn refuses_deep_nesting_without_recursing_further() {
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        check(&deep, "error: nesting deeper than 128 levels");
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn reports_position_and_utf8_errors() {
        let err = parse(b"{\n  \"a\": tru\n}").unwrap_err();
        assert_eq!((err.line, err.column), (2, 8));
        assert_eq!(
            parse(b"\"\xff\"").unwrap_err().message,
            "body is not valid UTF-8"
        );
    }

    #[test]
    fn pretty_output_reparses_to_the_same_value() {
        let v = parse(br#"{"a":[1,{"b":"c"}],"d":{}}"#).unwrap();
        let pretty = v.to_pretty_bytes();
        assert_eq!(parse(&pretty).unwrap(), v);
        assert!(
            String::from_utf8(pretty)
                .unwrap()
                .contains("\n  \"a\": [\n")
        );
    }
}
