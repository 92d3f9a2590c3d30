//! A PATCH body as a document of either kind, and JSON Patch (RFC 6902) applied to a resource
//! as stored: `add`, `remove`, `replace`, `move`, `copy` and `test`, with JSON Pointers
//! (RFC 6901). FHIRPath Patch is `fhirpath_patch`; `PatchDocument` is the one thing the
//! repository applies, whichever kind the client sent. All or nothing: a patch works on a
//! copy, so a failing operation leaves the resource as it was. What the result must be (a
//! valid resource of the same type and id) is the caller's check.

use super::fhirpath_patch::FhirPathPatch;
use super::json::Json;

/// Why a patch cannot be applied (either kind): the repository answers 422, nothing changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the patch is not JSON: {0}")]
    NotJson(String),
    #[error("the patch is not a JSON Patch document: {0}")]
    Malformed(String),
    #[error("the patch is not a FHIRPath Patch (a Parameters resource of operations): {0}")]
    MalformedFhirPath(String),
    #[error("operation {index} ({op}) failed: {why}")]
    Failed {
        index: usize,
        op: String,
        why: String,
    },
}

/// Which kind of patch a body is (its Content-Type says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchFormat {
    /// `application/json-patch+json`: RFC 6902.
    JsonPatch,
    /// `application/fhir+json` (or `application/json`): a FHIRPath Patch `Parameters`.
    FhirPath,
}

/// A patch read from its body, ready to apply to any version.
#[derive(Debug)]
pub enum PatchDocument {
    JsonPatch(Json),
    FhirPath(FhirPathPatch),
}

impl PatchDocument {
    /// Reads a body of `format`: JSON, and for a FHIRPath Patch its operations (so a malformed
    /// one is refused before any resource is read).
    pub fn parse(format: PatchFormat, body: &[u8]) -> Result<PatchDocument, PatchError> {
        let json = super::json::parse(body).map_err(|e| PatchError::NotJson(e.to_string()))?;
        Ok(match format {
            PatchFormat::JsonPatch => PatchDocument::JsonPatch(json),
            PatchFormat::FhirPath => PatchDocument::FhirPath(FhirPathPatch::parse(&json)?),
        })
    }

    /// The patched copy of `resource`.
    pub fn apply(&self, resource: &Json) -> Result<Json, PatchError> {
        match self {
            PatchDocument::JsonPatch(operations) => apply(resource, operations),
            PatchDocument::FhirPath(patch) => patch.apply(resource),
        }
    }
}

/// Applies `patch` (a JSON array of operations) to `document`.
pub fn apply(document: &Json, patch: &Json) -> Result<Json, PatchError> {
    let operations = patch
        .as_array()
        .ok_or_else(|| PatchError::Malformed("it must be an array of operations".into()))?;
    let mut result = document.clone();
    for (index, operation) in operations.iter().enumerate() {
        let op = operation
            .get("op")
            .and_then(Json::as_str)
            .ok_or_else(|| PatchError::Malformed(format!("operation {index} has no op")))?;
        let fail = |why: String| PatchError::Failed {
            index,
            op: op.to_owned(),
            why,
        };
        let pointer = |name: &str| -> Result<Vec<String>, PatchError> {
            let text = operation.get(name).and_then(Json::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("operation {index} ({op}) has no {name}"))
            })?;
            parse_pointer(text).map_err(PatchError::Malformed)
        };
        let value = || -> Result<Json, PatchError> {
            operation.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("operation {index} ({op}) has no value"))
            })
        };
        match op {
            "add" => add(&mut result, &pointer("path")?, value()?).map_err(fail)?,
            "remove" => {
                remove(&mut result, &pointer("path")?).map_err(fail)?;
            }
            "replace" => {
                let path = pointer("path")?;
                remove(&mut result, &path).map_err(fail)?;
                add(&mut result, &path, value()?).map_err(fail)?;
            }
            "move" => {
                let from = pointer("from")?;
                let path = pointer("path")?;
                if path.len() > from.len() && path[..from.len()] == from[..] {
                    return Err(fail("a value cannot be moved into itself".into()));
                }
                let moved = remove(&mut result, &from).map_err(fail)?;
                add(&mut result, &path, moved).map_err(fail)?;
            }
            "copy" => {
                let copied = get(&result, &pointer("from")?)
                    .cloned()
                    .ok_or_else(|| fail("from names nothing".into()))?;
                add(&mut result, &pointer("path")?, copied).map_err(fail)?;
            }
            "test" => {
                let expected = value()?;
                let found = get(&result, &pointer("path")?);
                if found != Some(&expected) {
                    return Err(fail("the value at path is not the one given".into()));
                }
            }
            other => {
                return Err(PatchError::Malformed(format!(
                    "operation {index} has an unknown op {}",
                    other.chars().take(20).collect::<String>()
                )));
            }
        }
    }
    Ok(result)
}

/// `/a/b~1c/0` → `["a", "b/c", "0"]`.
fn parse_pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!(
            "the JSON Pointer {} does not start with /",
            text.chars().take(60).collect::<String>()
        ));
    };
    Ok(rest
        .split('/')
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn get<'a>(document: &'a Json, path: &[String]) -> Option<&'a Json> {
    let mut at = document;
    for token in path {
        at = match at {
            Json::Object(object) => object.get(token)?,
            Json::Array(items) => items.get(array_index(token, items.len(), false).ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// The container of the last token, and the token.
fn parent<'a>(
    document: &'a mut Json,
    path: &'a [String],
) -> Result<(&'a mut Json, &'a str), String> {
    let Some((last, ancestors)) = path.split_last() else {
        return Err("the whole resource cannot be added or removed".into());
    };
    let mut at = document;
    for token in ancestors {
        at = match at {
            Json::Object(object) => object
                .get_mut(token)
                .ok_or_else(|| format!("the path has no member {}", preview(token)))?,
            Json::Array(items) => {
                let len = items.len();
                items
                    .get_mut(array_index(token, len, false)?)
                    .ok_or_else(|| "the path's index is past the end".to_owned())?
            }
            _ => return Err("the path goes through a value that is not a container".into()),
        };
    }
    Ok((at, last.as_str()))
}

fn add(document: &mut Json, path: &[String], value: Json) -> Result<(), String> {
    let (container, token) = parent(document, path)?;
    match container {
        Json::Object(object) => {
            object.insert(token, value);
            Ok(())
        }
        Json::Array(items) => {
            let at = array_index(token, items.len(), true)?;
            items.insert(at, value);
            Ok(())
        }
        _ => Err("the path's parent is not an object or array".into()),
    }
}

fn remove(document: &mut Json, path: &[String]) -> Result<Json, String> {
    let (container, token) = parent(document, path)?;
    match container {
        Json::Object(object) => object
            .remove(token)
            .ok_or_else(|| format!("there is no member {} to remove", preview(token))),
        Json::Array(items) => {
            let at = array_index(token, items.len(), false)?;
            Ok(items.remove(at))
        }
        _ => Err("the path's parent is not an object or array".into()),
    }
}

/// An array index token: digits without leading zeros, below `len` (or `len` itself, or `-`,
/// when adding).
fn array_index(token: &str, len: usize, adding: bool) -> Result<usize, String> {
    if adding && token == "-" {
        return Ok(len);
    }
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    let index: usize = valid
        .then(|| token.parse().ok())
        .flatten()
        .ok_or_else(|| format!("{} is not an array index", preview(token)))?;
    let limit = if adding { len } else { len.saturating_sub(1) };
    if index > limit || (!adding && len == 0) {
        return Err(format!("index {index} is past the end of the array"));
    }
    Ok(index)
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::json::parse;

    fn run(document: &str, patch: &str) -> Result<String, PatchError> {
        let document = parse(document.as_bytes()).unwrap();
        let patch = parse(patch.as_bytes()).unwrap();
        apply(&document, &patch).map(|r| String::from_utf8(r.to_bytes()).unwrap())
    }

    #[test]
    fn applies_each_operation() {
        let doc = r#"{"a":{"b":[1,2]},"c":"x"}"#;
        assert_eq!(
            run(doc, r#"[{"op":"add","path":"/a/b/1","value":9}]"#).unwrap(),
            r#"{"a":{"b":[1,9,2]},"c":"x"}"#
        );
        assert_eq!(
            run(doc, r#"[{"op":"add","path":"/a/b/-","value":3}]"#).unwrap(),
            r#"{"a":{"b":[1,2,3]},"c":"x"}"#
        );
        assert_eq!(
            run(doc, r#"[{"op":"remove","path":"/a/b/0"}]"#).unwrap(),
            r#"{"a":{"b":[2]},"c":"x"}"#
        );
        assert_eq!(
            run(doc, r#"[{"op":"replace","path":"/c","value":"y"}]"#).unwrap(),
            r#"{"a":{"b":[1,2]},"c":"y"}"#
        );
        assert_eq!(
            run(doc, r#"[{"op":"move","from":"/c","path":"/d"}]"#).unwrap(),
            r#"{"a":{"b":[1,2]},"d":"x"}"#
        );
        assert_eq!(
            run(doc, r#"[{"op":"copy","from":"/a/b","path":"/e"}]"#).unwrap(),
            r#"{"a":{"b":[1,2]},"c":"x","e":[1,2]}"#
        );
        assert!(run(doc, r#"[{"op":"test","path":"/c","value":"x"}]"#).is_ok());
    }

    #[test]
    fn fails_whole_and_clearly() {
        let doc = r#"{"a":[1]}"#;
        // A failing test after a change leaves nothing changed (the caller keeps the original).
        let failed = run(
            doc,
            r#"[{"op":"add","path":"/b","value":1},{"op":"test","path":"/a/0","value":2}]"#,
        );
        assert!(matches!(failed, Err(PatchError::Failed { index: 1, .. })));
        assert!(run(doc, r#"[{"op":"remove","path":"/zz"}]"#).is_err());
        assert!(run(doc, r#"[{"op":"remove","path":"/a/1"}]"#).is_err());
        assert!(run(doc, r#"[{"op":"remove","path":"/a/01"}]"#).is_err());
        assert!(run(doc, r#"[{"op":"replace","path":"a","value":1}]"#).is_err());
        assert!(run(doc, r#"[{"op":"frobnicate","path":"/a"}]"#).is_err());
        assert!(run(doc, r#"{"op":"add"}"#).is_err());
        assert!(run(doc, r#"[{"op":"move","from":"/a","path":"/a/0"}]"#).is_err());
        assert_eq!(
            run(
                r#"{"a/b":{"~":1}}"#,
                r#"[{"op":"remove","path":"/a~1b/~0"}]"#
            )
            .unwrap(),
            r#"{"a/b":{}}"#
        );
    }
}
