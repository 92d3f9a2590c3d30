//! The R4 element definitions the validator walks: every element of every resource and complex
//! datatype, reduced from the official StructureDefinition snapshots by
//! `scripts/gen-fhir-profiles.py` into `fhir-profiles/r4-elements.json` and compiled into the
//! binary, so a server needs no files beside it.
//!
//! An *owner* is a type name (`HumanName`) or the path of an inline structure
//! (`Patient.contact`); it lists its child elements. Each child maps every JSON key it may
//! appear under (a choice element `value[x]` has one key per type: `valueQuantity`, ...) to its
//! concrete type, so the validator does one lookup per key.
//!
//! Must not touch resources themselves: this is a read-only table.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

const ELEMENTS_JSON: &str = include_str!("../../fhir-profiles/r4-elements.json");

/// The primitive datatypes of R4, each with its own lexical rules (see `primitives`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Primitive {
    fn from_code(code: &str) -> Option<Primitive> {
        Some(match code {
            "base64Binary" => Primitive::Base64Binary,
            "boolean" => Primitive::Boolean,
            "canonical" => Primitive::Canonical,
            "code" => Primitive::Code,
            "date" => Primitive::Date,
            "dateTime" => Primitive::DateTime,
            "decimal" => Primitive::Decimal,
            "id" => Primitive::Id,
            "instant" => Primitive::Instant,
            "integer" => Primitive::Integer,
            "markdown" => Primitive::Markdown,
            "oid" => Primitive::Oid,
            "positiveInt" => Primitive::PositiveInt,
            "string" => Primitive::String,
            "time" => Primitive::Time,
            "unsignedInt" => Primitive::UnsignedInt,
            "uri" => Primitive::Uri,
            "url" => Primitive::Url,
            "uuid" => Primitive::Uuid,
            "xhtml" => Primitive::Xhtml,
            _ => return None,
        })
    }
}

/// What a JSON key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElementType {
    Primitive(Primitive),
    /// A complex datatype or an inline structure, named by its owner key.
    Complex(String),
    /// A whole resource (`contained`, `Bundle.entry.resource`): its `resourceType` decides.
    Resource,
}

/// One child element of an owner.
#[derive(Debug)]
pub struct Element {
    /// The element name without `[x]`, as FHIRPath names it.
    pub name: String,
    /// Minimum cardinality: a required element is present under one of its keys.
    pub min: u32,
    /// Whether the element repeats, which in JSON means an array.
    pub many: bool,
    /// The JSON keys this element may appear under (one, or one per type of a choice).
    pub keys: Vec<String>,
    /// Whether it is part of the resource's summary (`_summary=true`).
    pub summary: bool,
}

/// The children of one type or inline structure.
#[derive(Debug, Default)]
pub struct Owner {
    pub elements: Vec<Element>,
    /// JSON key → (index into `elements`, the type that key carries).
    by_key: HashMap<String, (usize, ElementType)>,
}

impl Owner {
    pub fn lookup(&self, key: &str) -> Option<(&Element, &ElementType)> {
        self.by_key
            .get(key)
            .map(|(index, ty)| (&self.elements[*index], ty))
    }
}

/// All of R4's structure, loaded once.
#[derive(Debug)]
pub struct Definitions {
    /// Every concrete resource type of R4, sorted (includes `Parameters`).
    pub resource_types: Vec<String>,
    owners: HashMap<String, Owner>,
    /// Every JSON key some choice element of R4 appears under (`valueQuantity`), to the
    /// element's name (`value`).
    choice_keys: HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawTable {
    resources: Vec<String>,
    owners: HashMap<String, HashMap<String, RawElement>>,
}

#[derive(Deserialize)]
struct RawElement {
    types: Vec<String>,
    min: u32,
    many: bool,
    #[serde(default)]
    summary: bool,
}

impl Definitions {
    /// The table compiled into the binary.
    pub fn r4() -> &'static Definitions {
        static TABLE: OnceLock<Definitions> = OnceLock::new();
        TABLE.get_or_init(|| {
            let raw: RawTable = serde_json::from_str(ELEMENTS_JSON)
                .expect("fhir-profiles/r4-elements.json is generated and compiled in");
            Definitions::from_raw(raw)
        })
    }

    fn from_raw(raw: RawTable) -> Definitions {
        let mut choice_keys = HashMap::new();
        let owners = raw
            .owners
            .into_iter()
            .map(|(owner_name, children)| {
                let mut owner = Owner::default();
                let mut children: Vec<_> = children.into_iter().collect();
                children.sort_by(|a, b| a.0.cmp(&b.0));
                for (raw_name, element) in children {
                    let index = owner.elements.len();
                    let (name, is_choice) = match raw_name.strip_suffix("[x]") {
                        Some(stem) => (stem.to_owned(), true),
                        None => (raw_name.clone(), false),
                    };
                    let mut keys = Vec::new();
                    for code in &element.types {
                        let ty = element_type(code);
                        let key = if is_choice {
                            format!("{name}{}", capitalise(code))
                        } else {
                            name.clone()
                        };
                        if is_choice {
                            choice_keys.insert(key.clone(), name.clone());
                        }
                        keys.push(key.clone());
                        owner.by_key.insert(key, (index, ty));
                    }
                    owner.elements.push(Element {
                        name,
                        min: element.min,
                        many: element.many,
                        keys,
                        summary: element.summary,
                    });
                }
                (owner_name, owner)
            })
            .collect();
        Definitions {
            resource_types: raw.resources,
            owners,
            choice_keys,
        }
    }

    /// Whether `key` is how the R4 choice element `name` appears in JSON: `valueQuantity` is
    /// one of `value`; `statusReason` (an element of its own) is not one of `status`, nor
    /// `statusReasonReference` (a choice of `statusReason`).
    pub fn is_choice_of(&self, key: &str, name: &str) -> bool {
        self.choice_keys.get(key).is_some_and(|stem| stem == name)
    }

    pub fn owner(&self, name: &str) -> Option<&Owner> {
        self.owners.get(name)
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types
            .binary_search_by(|t| t.as_str().cmp(name))
            .is_ok()
    }
}

fn element_type(code: &str) -> ElementType {
    if let Some(path) = code.strip_prefix('@') {
        return ElementType::Complex(path.to_owned());
    }
    if code == "Resource" {
        return ElementType::Resource;
    }
    match Primitive::from_code(code) {
        Some(p) => ElementType::Primitive(p),
        None => ElementType::Complex(code.to_owned()),
    }
}

fn capitalise(code: &str) -> String {
    let mut chars = code.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_every_r4_resource_and_their_elements() {
        let defs = Definitions::r4();
        assert_eq!(
            defs.resource_types.len(),
            146,
            "145 storable types plus Parameters"
        );
        assert!(defs.is_resource_type("MedicinalProduct"));
        assert!(
            !defs.is_resource_type("Citation"),
            "Citation is R4B, not R4"
        );

        let observation = defs.owner("Observation").unwrap();
        let (element, ty) = observation.lookup("valueQuantity").unwrap();
        assert_eq!(element.name, "value");
        assert_eq!(*ty, ElementType::Complex("Quantity".into()));
        let (status, _) = observation.lookup("status").unwrap();
        assert_eq!((status.min, status.many), (1, false));
        assert!(
            observation.lookup("value").is_none(),
            "a choice has no bare key"
        );

        let item = defs.owner("Questionnaire.item").unwrap();
        let (_, nested) = item.lookup("item").unwrap();
        assert_eq!(*nested, ElementType::Complex("Questionnaire.item".into()));
        let (_, contained) = defs.owner("Patient").unwrap().lookup("contained").unwrap();
        assert_eq!(*contained, ElementType::Resource);
    }
}
