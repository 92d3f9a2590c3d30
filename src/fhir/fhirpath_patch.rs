//! FHIRPath Patch (FHIR R4, "FHIRPath Patch"): a `Parameters` resource whose `operation`
//! parameters each add, insert, delete, replace or move one element, located by a FHIRPath
//! expression (`path`, the locator). Owns reading the Parameters into operations, shaping the
//! values they carry (a `value[x]`, or a complex value given as nested parts), and applying
//! them to a resource as stored.
//!
//! All or nothing, like JSON Patch (`patch`): the operations work on a copy, so one that fails
//! leaves the resource as it was. A path that selects more than one node is an error (except
//! that a delete of nothing does nothing, as the specification says), and so is one outside
//! the supported subset: nothing is ever half-applied. Whether the result is a valid resource
//! is the caller's check.
//!
//! Primitives carry their `_element` companion (id and extensions) along: deleting, moving or
//! replacing `Patient.name.given[1]` does the same to `_given[1]`, and a value given with
//! `_valueString` brings its extensions. Numbers keep the text the client wrote (`1.50`).

mod path;
#[cfg(test)]
mod tests;

use self::path::{Located, Path, Seg, get, get_mut, owner_of, preview};
use super::definitions::{Definitions, Element, ElementType, Owner};
use super::json::{Json, Object};
use super::patch::PatchError;

/// A parsed FHIRPath Patch: its operations in order.
#[derive(Debug)]
pub struct FhirPathPatch {
    operations: Vec<Operation>,
}

#[derive(Debug)]
enum Operation {
    Add {
        path: Path,
        name: String,
        value: Value,
    },
    Insert {
        path: Path,
        value: Value,
        index: usize,
    },
    Delete {
        path: Path,
    },
    Replace {
        path: Path,
        value: Value,
    },
    Move {
        path: Path,
        source: usize,
        destination: usize,
    },
}

impl Operation {
    fn kind(&self) -> &'static str {
        match self {
            Operation::Add { .. } => "add",
            Operation::Insert { .. } => "insert",
            Operation::Delete { .. } => "delete",
            Operation::Replace { .. } => "replace",
            Operation::Move { .. } => "move",
        }
    }
}

/// A value an operation carries, as the Parameters gave it.
#[derive(Debug)]
enum Value {
    /// A `value[x]` (or a `resource`): its JSON, the `_value[x]` of a primitive, and the type
    /// its key names (`Quantity` of `valueQuantity`; none for a resource).
    Typed {
        json: Json,
        companion: Option<Json>,
        type_name: Option<String>,
    },
    /// A complex value as parts: each an element name and its value.
    Parts(Vec<(String, Value)>),
}

/// A value shaped for the element it goes into.
struct Shaped {
    json: Json,
    companion: Option<Json>,
    type_name: Option<String>,
}

impl FhirPathPatch {
    /// Reads a `Parameters` resource of `operation` parameters.
    pub fn parse(parameters: &Json) -> Result<FhirPathPatch, PatchError> {
        let malformed = |why: String| PatchError::MalformedFhirPath(why);
        let kind = parameters.get("resourceType").and_then(Json::as_str);
        if kind != Some("Parameters") {
            return Err(malformed(format!(
                "the body is {}, not a Parameters resource (a JSON Patch is sent as \
                 application/json-patch+json)",
                kind.map_or_else(
                    || format!("a JSON {}", parameters.kind()),
                    |kind| format!("a {}", preview(kind))
                )
            )));
        }
        let parameters = match parameters.get("parameter") {
            None => &[][..],
            Some(Json::Array(items)) => items.as_slice(),
            Some(_) => return Err(malformed("parameter must be an array".into())),
        };
        let operations = parameters
            .iter()
            .enumerate()
            .map(|(n, parameter)| {
                operation(parameter).map_err(|why| malformed(format!("operation {n}: {why}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(FhirPathPatch { operations })
    }

    /// Applies the operations in order to a copy of `resource`.
    pub fn apply(&self, resource: &Json) -> Result<Json, PatchError> {
        let mut result = resource.clone();
        for (index, operation) in self.operations.iter().enumerate() {
            apply_one(&mut result, operation).map_err(|why| PatchError::Failed {
                index,
                op: operation.kind().to_owned(),
                why,
            })?;
        }
        Ok(result)
    }
}

/// One `operation` parameter.
fn operation(parameter: &Json) -> Result<Operation, String> {
    if parameter.get("name").and_then(Json::as_str) != Some("operation") {
        return Err("every parameter of a FHIRPath Patch is named operation".into());
    }
    let mut parts = Parts::default();
    for part in parameter
        .get("part")
        .and_then(Json::as_array)
        .unwrap_or_default()
    {
        let name = part
            .get("name")
            .and_then(Json::as_str)
            .ok_or("a part has no name")?;
        let slot = match name {
            "type" => &mut parts.kind,
            "path" => &mut parts.path,
            "name" => &mut parts.name,
            "value" => &mut parts.value,
            "index" => &mut parts.index,
            "source" => &mut parts.source,
            "destination" => &mut parts.destination,
            other => {
                return Err(format!(
                    "a part named {} is not one of FHIRPath Patch's (type, path, name, value, \
                     index, source, destination)",
                    preview(other)
                ));
            }
        };
        if slot.replace(part).is_some() {
            return Err(format!("the part {name} is given twice"));
        }
    }
    let kind = parts.text("type")?;
    let path = path::compile(&parts.text("path")?).map_err(|why| format!("path: {why}"))?;
    Ok(match kind.as_str() {
        "add" => Operation::Add {
            path,
            name: parts.text("name")?,
            value: parts.value()?,
        },
        "insert" => Operation::Insert {
            path,
            value: parts.value()?,
            index: parts.number("index")?,
        },
        "delete" => Operation::Delete { path },
        "replace" => Operation::Replace {
            path,
            value: parts.value()?,
        },
        "move" => Operation::Move {
            path,
            source: parts.number("source")?,
            destination: parts.number("destination")?,
        },
        other => {
            return Err(format!(
                "the type {} is not one of add, insert, delete, replace, move",
                preview(other)
            ));
        }
    })
}

/// The parts of one operation, by name.
#[derive(Default)]
struct Parts<'a> {
    kind: Option<&'a Json>,
    path: Option<&'a Json>,
    name: Option<&'a Json>,
    value: Option<&'a Json>,
    index: Option<&'a Json>,
    source: Option<&'a Json>,
    destination: Option<&'a Json>,
}

impl Parts<'_> {
    fn get(&self, name: &str) -> Result<&Json, String> {
        let part = match name {
            "type" => self.kind,
            "path" => self.path,
            "name" => self.name,
            "index" => self.index,
            "source" => self.source,
            "destination" => self.destination,
            "value" => self.value,
            _ => None,
        };
        part.ok_or_else(|| format!("the part {name} is missing"))
    }

    /// A part given as a string-like `value[x]` (`valueString`, `valueCode`, ...).
    fn text(&self, name: &str) -> Result<String, String> {
        let part = self.get(name)?.as_object().ok_or("a part is an object")?;
        part.iter()
            .find(|(key, _)| key.starts_with("value"))
            .and_then(|(_, value)| value.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("the part {name} needs a text value (valueString or valueCode)"))
    }

    /// A part given as `valueInteger` (or another integer type), not negative.
    fn number(&self, name: &str) -> Result<usize, String> {
        let part = self.get(name)?;
        ["valueInteger", "valueUnsignedInt", "valuePositiveInt"]
            .iter()
            .find_map(|key| part.get(key))
            .and_then(|value| match value {
                Json::Number(text) => text.parse().ok(),
                _ => None,
            })
            .ok_or_else(|| format!("the part {name} needs a valueInteger of 0 or more"))
    }

    fn value(&self) -> Result<Value, String> {
        value_of(self.get("value")?, 0)
    }
}

/// Deepest nesting of parts in a value (the JSON parser bounds the body's depth already; this
/// keeps the shaping's recursion within the same bound).
const MAX_PART_DEPTH: usize = 64;

/// The value of a part: its `value[x]`, its `resource`, or its nested parts.
fn value_of(part: &Json, depth: usize) -> Result<Value, String> {
    if depth > MAX_PART_DEPTH {
        return Err("the value's parts nest too deeply".into());
    }
    let object = part.as_object().ok_or("a part is an object")?;
    let mut typed = None;
    for (key, json) in object.iter() {
        let type_name = match key {
            "resource" => None,
            _ => match key.strip_prefix("value") {
                Some(suffix) if suffix.starts_with(|c: char| c.is_ascii_uppercase()) => {
                    Some(suffix.to_owned())
                }
                _ => continue,
            },
        };
        if typed.is_some() {
            return Err("a part has more than one value[x]".into());
        }
        let companion = object.get(&format!("_{key}")).cloned();
        typed = Some(Value::Typed {
            json: json.clone(),
            companion,
            type_name,
        });
    }
    let parts = object.get("part").and_then(Json::as_array);
    match (typed, parts) {
        (Some(value), None) => Ok(value),
        (None, Some(parts)) => parts
            .iter()
            .map(|part| {
                let name = part
                    .get("name")
                    .and_then(Json::as_str)
                    .ok_or("a part of a value has no name")?;
                Ok((name.to_owned(), value_of(part, depth + 1)?))
            })
            .collect::<Result<_, String>>()
            .map(Value::Parts),
        (Some(_), Some(_)) => Err("a part has both a value[x] and parts".into()),
        (None, None) => Err("a value is a value[x], a resource or parts".into()),
    }
}

/// Shapes `value` for an element of type `ty`: a value given as parts becomes an object with
/// the element names as keys, repeating elements as arrays, choices keyed by their type.
fn shape(value: &Value, ty: Option<&ElementType>) -> Result<Shaped, String> {
    let parts = match value {
        Value::Typed {
            json,
            companion,
            type_name,
        } => {
            return Ok(Shaped {
                json: json.clone(),
                companion: companion.clone(),
                type_name: type_name.clone(),
            });
        }
        Value::Parts(parts) => parts,
    };
    let owner = match ty {
        Some(ElementType::Resource) => {
            return Err("a resource is given whole (the part's resource), not as parts".into());
        }
        Some(ElementType::Primitive(_)) => {
            return Err("a primitive value is a value[x], not parts".into());
        }
        Some(ElementType::Complex(name)) => Definitions::r4().owner(name),
        None => None,
    };
    // Each key once, in the order first given, with its values (and primitives' companions).
    let mut members: Vec<Member> = Vec::new();
    for (name, part) in parts {
        let (key, many, child_ty) = match owner {
            Some(owner) => {
                let element = element_named(owner, name)?;
                let type_name = match part {
                    Value::Typed { type_name, .. } => type_name.as_deref(),
                    Value::Parts(_) => None,
                };
                let (key, ty) = key_for(owner, element, type_name)?;
                (key, element.many, Some(ty))
            }
            None => (name.clone(), false, None),
        };
        let shaped = shape(part, child_ty.as_ref())?;
        match members.iter_mut().find(|m| m.key == key) {
            // Without definitions a repeated name is taken as a list.
            Some(member) if member.repeats || owner.is_none() => {
                member.values.push((shaped.json, shaped.companion));
            }
            Some(_) => {
                return Err(format!(
                    "{} is given twice but does not repeat",
                    preview(name)
                ));
            }
            None => members.push(Member {
                key,
                repeats: many,
                values: vec![(shaped.json, shaped.companion)],
            }),
        }
    }
    let mut object = Object::new();
    for Member {
        key,
        repeats: many,
        values,
    } in members
    {
        if many || values.len() > 1 {
            let companions: Vec<Json> = values
                .iter()
                .map(|(_, c)| c.clone().unwrap_or(Json::Null))
                .collect();
            object.insert(
                &key,
                Json::Array(values.iter().map(|(v, _)| v.clone()).collect()),
            );
            if companions.iter().any(|c| *c != Json::Null) {
                object.insert(&format!("_{key}"), Json::Array(companions));
            }
        } else if let Some((json, companion)) = values.into_iter().next() {
            object.insert(&key, json);
            if let Some(companion) = companion {
                object.insert(&format!("_{key}"), companion);
            }
        }
    }
    Ok(Shaped {
        json: Json::Object(object),
        companion: None,
        type_name: None,
    })
}

/// One key of an object built from parts: whether its element repeats, and its values, each
/// with a primitive's companion (`_given`).
struct Member {
    key: String,
    repeats: bool,
    values: Vec<(Json, Option<Json>)>,
}

fn element_named<'o>(owner: &'o Owner, name: &str) -> Result<&'o Element, String> {
    owner
        .elements
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| format!("there is no element {} here", preview(name)))
}

fn is_choice(element: &Element) -> bool {
    element.keys.first() != Some(&element.name)
}

/// The JSON key and type of `element` holding a value of `type_name` (a choice is keyed by
/// its type: `value` holding a Quantity is `valueQuantity`).
fn key_for(
    owner: &Owner,
    element: &Element,
    type_name: Option<&str>,
) -> Result<(String, ElementType), String> {
    let key = if is_choice(element) {
        let type_name = type_name.ok_or_else(|| {
            format!(
                "{}[x] is a choice: give its value as a typed value[x], not as parts",
                element.name
            )
        })?;
        format!("{}{type_name}", element.name)
    } else {
        element.name.clone()
    };
    match owner.lookup(&key) {
        Some((_, ty)) => Ok((key, ty.clone())),
        None => Err(format!(
            "{}[x] cannot hold a {}",
            element.name,
            preview(type_name.unwrap_or_default())
        )),
    }
}

fn apply_one(resource: &mut Json, operation: &Operation) -> Result<(), String> {
    match operation {
        Operation::Replace { path, value } => {
            let node = one(path.select(resource)?, "replace")?;
            replace(resource, &node, value)
        }
        Operation::Delete { path } => match path.select(resource)?.as_slice() {
            [] => Ok(()),
            [node] => delete(resource, node),
            many => Err(matches(many.len(), "a delete removes one element")),
        },
        Operation::Add { path, name, value } => {
            let node = one(path.select(resource)?, "add to")?;
            add(resource, &node, name, value)
        }
        Operation::Insert { path, value, index } => {
            let list = List::open(resource, path)?;
            let shaped = shape(value, list.ty.as_ref())?;
            list.insert(resource, *index, shaped)
        }
        Operation::Move {
            path,
            source,
            destination,
        } => {
            let list = List::open(resource, path)?;
            list.move_item(resource, *source, *destination)
        }
    }
}

/// The one node of `found`, for an operation that acts on exactly one.
fn one(mut found: Vec<Located>, what: &str) -> Result<Located, String> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("the path matches nothing to {what}")),
        n => Err(matches(
            n,
            &format!("the path must match one element to {what}"),
        )),
    }
}

fn matches(n: usize, rule: &str) -> String {
    format!("the path matches {n} elements; {rule} (narrow it with where() or [n])")
}

fn object_at<'a>(resource: &'a mut Json, at: &[Seg]) -> Result<&'a mut Object, String> {
    get_mut(resource, at)
        .and_then(Json::as_object_mut)
        .ok_or_else(|| "the element is not one that has elements".to_owned())
}

fn replace(resource: &mut Json, node: &Located, value: &Value) -> Result<(), String> {
    let Some((key, item)) = node.key() else {
        return Err("the whole resource cannot be replaced by a patch".into());
    };
    let key = key.to_owned();
    let shaped = shape(value, node.ty.as_ref())?;
    let parent = object_at(resource, node.parent())?;
    match item {
        Some(i) => {
            if let Some(Json::Array(items)) = parent.get_mut(&key)
                && let Some(slot) = items.get_mut(i)
            {
                *slot = shaped.json;
            }
            set_companion(parent, &key, i, shaped.companion);
        }
        None => {
            // A choice holding a value of another type changes its key
            // (`valueQuantity` → `valueString`), in the same place.
            let name = node.name.as_deref().unwrap_or(&key);
            let new_key = match (&shaped.type_name, name != key) {
                (Some(type_name), true) => format!("{name}{type_name}"),
                _ => key.clone(),
            };
            let position = parent.iter().position(|(k, _)| k == key).unwrap_or(0);
            parent.remove(&key);
            parent.remove(&format!("_{key}"));
            parent.insert_at(position, &new_key, shaped.json);
            if let Some(companion) = shaped.companion {
                parent.insert_at(position + 1, &format!("_{new_key}"), companion);
            }
        }
    }
    Ok(())
}

/// Sets item `i` of a primitive list's companion (`_given`), made or removed as needed.
fn set_companion(parent: &mut Object, key: &str, i: usize, companion: Option<Json>) {
    let companion_key = format!("_{key}");
    let len = match parent.get(key) {
        Some(Json::Array(items)) => items.len(),
        _ => 0,
    };
    match (parent.get_mut(&companion_key), companion) {
        (Some(Json::Array(companions)), companion) => {
            companions.resize(len, Json::Null);
            if let Some(slot) = companions.get_mut(i) {
                *slot = companion.unwrap_or(Json::Null);
            }
        }
        (_, Some(companion)) => {
            let mut companions = vec![Json::Null; len];
            if let Some(slot) = companions.get_mut(i) {
                *slot = companion;
            }
            parent.insert(&companion_key, Json::Array(companions));
        }
        (_, None) => {}
    }
    tidy_companion(parent, key);
}

/// Removes a companion list with nothing in it.
fn tidy_companion(parent: &mut Object, key: &str) {
    let companion_key = format!("_{key}");
    if let Some(Json::Array(companions)) = parent.get(&companion_key)
        && companions.iter().all(|c| *c == Json::Null)
    {
        parent.remove(&companion_key);
    }
}

/// Removes the node, and the elements it leaves empty (FHIR has no empty elements: removing a
/// name's only `family` removes the name).
fn delete(resource: &mut Json, node: &Located) -> Result<(), String> {
    if node.at.is_empty() {
        return Err("the whole resource cannot be deleted by a patch".into());
    }
    let mut at = node.at.clone();
    while let Some((key, item)) = split_key(&at) {
        let parent_at = match item {
            Some(_) => &at[..at.len() - 2],
            None => &at[..at.len() - 1],
        };
        let parent = object_at(resource, parent_at)?;
        match item {
            Some(i) => {
                if let Some(Json::Array(items)) = parent.get_mut(&key)
                    && i < items.len()
                {
                    items.remove(i);
                }
                if let Some(Json::Array(companions)) = parent.get_mut(&format!("_{key}"))
                    && i < companions.len()
                {
                    companions.remove(i);
                }
                tidy_companion(parent, &key);
                if matches!(parent.get(&key), Some(Json::Array(items)) if items.is_empty()) {
                    parent.remove(&key);
                    parent.remove(&format!("_{key}"));
                }
            }
            None => {
                parent.remove(&key);
                parent.remove(&format!("_{key}"));
            }
        }
        // Go up only while the parent was left empty, and never past the resource.
        let emptied = parent.is_empty() && !parent_at.is_empty();
        if !emptied {
            break;
        }
        at.truncate(parent_at.len());
    }
    Ok(())
}

fn split_key(at: &[Seg]) -> Option<(String, Option<usize>)> {
    match at {
        [.., Seg::Key(key), Seg::Item(i)] => Some((key.clone(), Some(*i))),
        [.., Seg::Key(key)] => Some((key.clone(), None)),
        _ => None,
    }
}

fn add(resource: &mut Json, node: &Located, name: &str, value: &Value) -> Result<(), String> {
    let container = get(resource, &node.at).unwrap_or(&Json::Null);
    if !matches!(container, Json::Object(_)) {
        return Err(format!(
            "the path selects a primitive value; {} cannot be added to it here",
            preview(name)
        ));
    }
    let owner = owner_of(node.ty.as_ref(), container);
    let (key, many, ty) = match owner {
        Some(owner) => {
            let element = element_named(owner, name)?;
            let type_name = match value {
                Value::Typed { type_name, .. } => type_name.as_deref(),
                Value::Parts(_) => None,
            };
            let (key, ty) = key_for(owner, element, type_name)?;
            if !element.many && element.keys.iter().any(|k| container.get(k).is_some()) {
                return Err(format!(
                    "{} is already there and does not repeat: replace it instead",
                    element.name
                ));
            }
            (key, element.many, Some(ty))
        }
        None => (name.to_owned(), false, None),
    };
    let shaped = shape(value, ty.as_ref())?;
    let object = object_at(resource, &node.at)?;
    match object.get_mut(&key) {
        Some(Json::Array(items)) => {
            items.push(shaped.json);
            let last = items.len() - 1;
            set_companion(object, &key, last, shaped.companion);
        }
        Some(_) => {
            return Err(format!(
                "{} is already there: replace it instead",
                preview(name)
            ));
        }
        None if many => {
            object.insert(&key, Json::Array(vec![shaped.json]));
            set_companion(object, &key, 0, shaped.companion);
        }
        None => {
            object.insert(&key, shaped.json);
            if let Some(companion) = shaped.companion {
                object.insert(&format!("_{key}"), companion);
            }
        }
    }
    Ok(())
}

/// The list an insert or move acts on: the one element holding it and its key.
struct List {
    holder: Vec<Seg>,
    key: String,
    ty: Option<ElementType>,
}

impl List {
    fn open(resource: &Json, path: &Path) -> Result<List, String> {
        let (holder_path, name) = path.list()?;
        let holder = one(holder_path.select(resource)?, "hold the list")?;
        let container = get(resource, &holder.at).unwrap_or(&Json::Null);
        if !matches!(container, Json::Object(_)) {
            return Err("the list's holder is a primitive value".into());
        }
        let ty = match owner_of(holder.ty.as_ref(), container) {
            Some(owner) => {
                let element = element_named(owner, name)?;
                if !element.many || is_choice(element) {
                    return Err(format!(
                        "{name} does not repeat: insert and move work on lists"
                    ));
                }
                owner.lookup(name).map(|(_, ty)| ty.clone())
            }
            None => None,
        };
        Ok(List {
            holder: holder.at,
            key: name.to_owned(),
            ty,
        })
    }

    fn insert(&self, resource: &mut Json, index: usize, shaped: Shaped) -> Result<(), String> {
        let object = object_at(resource, &self.holder)?;
        if object.get(&self.key).is_none() {
            object.insert(&self.key, Json::Array(Vec::new()));
        }
        let Some(Json::Array(items)) = object.get_mut(&self.key) else {
            return Err(format!("{} is not a list", self.key));
        };
        if index > items.len() {
            return Err(format!(
                "index {index} is past the end of the list ({} items)",
                items.len()
            ));
        }
        items.insert(index, shaped.json);
        if let Some(Json::Array(companions)) = object.get_mut(&format!("_{}", self.key))
            && index <= companions.len()
        {
            companions.insert(index, Json::Null);
        }
        set_companion(object, &self.key, index, shaped.companion);
        Ok(())
    }

    fn move_item(
        &self,
        resource: &mut Json,
        source: usize,
        destination: usize,
    ) -> Result<(), String> {
        let object = object_at(resource, &self.holder)?;
        let Some(Json::Array(items)) = object.get_mut(&self.key) else {
            return Err(format!("there is no list {} to move within", self.key));
        };
        let len = items.len();
        if source >= len || destination >= len {
            return Err(format!(
                "source {source} and destination {destination} must both be below the list's \
                 {len} items"
            ));
        }
        let moved = items.remove(source);
        items.insert(destination, moved);
        if let Some(Json::Array(companions)) = object.get_mut(&format!("_{}", self.key)) {
            companions.resize(len, Json::Null);
            let moved = companions.remove(source);
            companions.insert(destination, moved);
        }
        Ok(())
    }
}
