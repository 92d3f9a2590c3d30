//! Conditional request headers: which ones each interaction implements, and a clear refusal of
//! the others. A conditional header silently ignored is worse than a refusal: a client that
//! sends `If-None-Exist` believes its create cannot duplicate, and one that sends
//! `If-Unmodified-Since` believes its update cannot overwrite a newer version.

use axum::http::HeaderMap;

use super::outcome::ApiError;

/// The interactions that read conditional headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Vread,
    Update,
    Delete,
    History,
    Search,
}

/// Each conditional header and the interactions that implement it.
const IMPLEMENTED: &[(&str, &[Interaction])] = &[
    ("if-match", &[Interaction::Update, Interaction::Delete]),
    // A read answers 304; an update or a patch is refused (412) when it matches; a create
    // always makes a new resource, so `*` holds trivially (a version tag is refused there).
    (
        "if-none-match",
        &[Interaction::Read, Interaction::Update, Interaction::Create],
    ),
    ("if-modified-since", &[Interaction::Read]),
    ("if-none-exist", &[Interaction::Create]),
    ("if-unmodified-since", &[]),
];

/// Refuses (400, not-supported) a conditional header `interaction` does not implement.
pub fn refuse_unimplemented(headers: &HeaderMap, interaction: Interaction) -> Result<(), ApiError> {
    for (name, implemented_by) in IMPLEMENTED {
        if headers.contains_key(*name) && !implemented_by.contains(&interaction) {
            let why = match *name {
                "if-none-exist" => format!(
                    "If-None-Exist belongs to a create (POST); it is not supported on a {}; \
                     nothing was done",
                    describe(interaction)
                ),
                other => format!(
                    "the {other} header is not supported on a {} here; nothing was done",
                    describe(interaction)
                ),
            };
            return Err(ApiError::NotSupported(why));
        }
    }
    Ok(())
}

fn describe(interaction: Interaction) -> &'static str {
    match interaction {
        Interaction::Create => "create",
        Interaction::Read => "read",
        Interaction::Vread => "version read",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
        Interaction::History => "history",
        Interaction::Search => "search",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(header: &'static str, interaction: Interaction, accepted: bool) {
        let mut headers = HeaderMap::new();
        headers.insert(header, HeaderValue::from_static("x"));
        assert_eq!(
            refuse_unimplemented(&headers, interaction).is_ok(),
            accepted,
            "{header} on {interaction:?}"
        );
    }

    #[test]
    fn refuses_what_an_interaction_does_not_implement() {
        use Interaction::*;
        check("if-none-exist", Create, true);
        check("if-none-exist", Update, false);
        check("if-match", Create, false);
        check("if-match", Update, true);
        check("if-match", Delete, true);
        check("if-match", Read, false);
        check("if-none-match", Read, true);
        check("if-none-match", Update, true);
        check("if-none-match", Create, true);
        check("if-none-match", Delete, false);
        check("if-none-match", Vread, false);
        check("if-modified-since", Read, true);
        check("if-modified-since", History, false);
        check("if-unmodified-since", Update, false);
        assert!(refuse_unimplemented(&HeaderMap::new(), Create).is_ok());
    }
}
