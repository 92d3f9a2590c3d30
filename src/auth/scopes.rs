//! SMART on FHIR scopes, v1 and v2, and what they permit.
//!
//! A resource scope is `context/Type.permissions[?query]`:
//! - context `patient` (only the launch patient's compartment), `user` (what the user may
//!   see) or `system` (a backend service);
//! - `Type` a resource type or `*`;
//! - permissions in v2 as letters `c r u d s` (`patient/Observation.rs`), in v1 as `read`,
//!   `write` (= c, u, d) or `*` (all);
//! - v2 only: a query restricting the scope to resources matching it
//!   (`patient/Observation.rs?category=laboratory`).
//!
//! Anything else (`openid`, `fhirUser`, `launch`, `launch/patient`, `offline_access`, …) is a
//! non-resource scope and permits no interaction by itself.
//!
//! Must not touch storage or HTTP: it answers "may this interaction happen?".

use std::fmt;

/// Who a resource scope speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Context {
    Patient,
    User,
    System,
}

/// One permission letter of SMART v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    /// The v2 letter of this permission (`c r u d s`).
    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }
}

/// A parsed resource scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    /// Permission letters, in `cruds` order.
    pub permissions: String,
    /// v2 query restrictions: (parameter, value) pairs, all of which must hold.
    pub query: Vec<(String, String)>,
}

impl ResourceScope {
    pub fn permits(&self, permission: Permission, resource_type: &str) -> bool {
        self.permissions.contains(permission.letter())
            && self
                .resource_type
                .as_deref()
                .is_none_or(|t| t == resource_type)
    }
}

/// A granted scope string, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Every scope as granted, in order (for the token's `scope` claim).
    pub granted: Vec<String>,
    pub resources: Vec<ResourceScope>,
}

impl Scopes {
    pub fn parse(text: &str) -> Scopes {
        let granted: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        let resources = granted
            .iter()
            .filter_map(|s| parse_resource_scope(s))
            .collect();
        Scopes { granted, resources }
    }

    /// Whether some resource scope permits `permission` on any type at all.
    pub fn permit_any(&self, permission: Permission) -> bool {
        self.resources
            .iter()
            .any(|s| s.permissions.contains(permission.letter()))
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.granted.iter().any(|s| s == scope)
    }

    /// The resource scopes that permit `permission` on `resource_type`.
    pub fn permitting<'a>(
        &'a self,
        permission: Permission,
        resource_type: &'a str,
    ) -> impl Iterator<Item = &'a ResourceScope> + 'a {
        self.resources
            .iter()
            .filter(move |s| s.permits(permission, resource_type))
    }

    /// Whether every scope of `requested` is covered by these (for refresh: no escalation).
    pub fn covers(&self, requested: &Scopes) -> bool {
        requested.granted.iter().all(|scope| {
            self.contains(scope)
                || parse_resource_scope(scope).is_some_and(|wanted| {
                    self.resources.iter().any(|have| {
                        have.context == wanted.context
                            && (have.resource_type.is_none()
                                || have.resource_type == wanted.resource_type)
                            && wanted
                                .permissions
                                .chars()
                                .all(|p| have.permissions.contains(p))
                            && have.query.iter().all(|q| wanted.query.contains(q))
                    })
                })
        })
    }

    /// The subset of `requested` these scopes allow (what a client may be granted).
    pub fn intersect(&self, requested: &Scopes) -> Scopes {
        let kept: Vec<String> = requested
            .granted
            .iter()
            .filter(|scope| self.covers(&Scopes::parse(scope)))
            .cloned()
            .collect();
        Scopes::parse(&kept.join(" "))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.granted.join(" "))
    }
}

fn parse_resource_scope(scope: &str) -> Option<ResourceScope> {
    let (context, rest) = scope.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (resource_type, permissions) = rest.split_once('.')?;
    let valid_type = resource_type == "*"
        || (resource_type.starts_with(|c: char| c.is_ascii_uppercase())
            && resource_type.bytes().all(|b| b.is_ascii_alphabetic()));
    if !valid_type {
        return None;
    }
    let permissions = match permissions {
        "read" => "rs".to_owned(),
        "write" => "cud".to_owned(),
        "*" => "cruds".to_owned(),
        letters => {
            // v2: a subset of `cruds`, in that order, each at most once.
            let mut expected = "cruds".chars();
            let ordered =
                !letters.is_empty() && letters.chars().all(|c| expected.by_ref().any(|e| e == c));
            if !ordered {
                return None;
            }
            letters.to_owned()
        }
    };
    let query = match query {
        None => Vec::new(),
        Some(query) => form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    };
    Some(ResourceScope {
        context,
        resource_type: (resource_type != "*").then(|| resource_type.to_owned()),
        permissions,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permits(scopes: &str, permission: Permission, resource_type: &str) -> bool {
        Scopes::parse(scopes)
            .permitting(permission, resource_type)
            .next()
            .is_some()
    }

    #[test]
    fn reads_v1_and_v2_scopes() {
        use Permission::*;
        let cases: &[(&str, Permission, &str, bool)] = &[
            ("patient/Observation.read", Read, "Observation", true),
            ("patient/Observation.read", Search, "Observation", true),
            ("patient/Observation.read", Create, "Observation", false),
            ("patient/Observation.read", Read, "Patient", false),
            ("user/*.write", Create, "Encounter", true),
            ("user/*.write", Read, "Encounter", false),
            ("system/*.*", Delete, "Patient", true),
            ("patient/Observation.rs", Read, "Observation", true),
            ("patient/Observation.rs", Update, "Observation", false),
            ("user/*.cruds", Update, "Condition", true),
            (
                "patient/Observation.rs?category=laboratory",
                Read,
                "Observation",
                true,
            ),
            ("patient/Observation.sr", Read, "Observation", false),
            ("patient/Observation.rr", Read, "Observation", false),
            ("patient/observation.read", Read, "observation", false),
            ("openid fhirUser launch/patient", Read, "Patient", false),
        ];
        for (scopes, permission, ty, expected) in cases {
            assert_eq!(
                permits(scopes, *permission, ty),
                *expected,
                "{scopes} {permission:?} {ty}"
            );
        }
        let granular = Scopes::parse("patient/Observation.rs?category=laboratory");
        assert_eq!(
            granular.resources[0].query,
            [("category".to_owned(), "laboratory".to_owned())]
        );
        assert_eq!(granular.resources[0].context, Context::Patient);
    }

    #[test]
    fn refresh_may_narrow_but_never_widen() {
        let granted =
            Scopes::parse("patient/Observation.rs patient/Patient.r openid offline_access");
        assert!(granted.covers(&Scopes::parse("patient/Observation.r openid")));
        assert!(granted.covers(&Scopes::parse(
            "patient/Observation.rs?category=vital-signs"
        )));
        assert!(!granted.covers(&Scopes::parse("patient/Observation.rsu")));
        assert!(!granted.covers(&Scopes::parse("user/Observation.r")));
        assert!(!granted.covers(&Scopes::parse("patient/*.r")));
        assert!(!granted.covers(&Scopes::parse("fhirUser")));
        let allowed = Scopes::parse("system/*.rs");
        assert_eq!(
            allowed
                .intersect(&Scopes::parse("system/Patient.r system/Patient.cruds"))
                .to_string(),
            "system/Patient.r"
        );
    }
}
