//! Resource bodies on their way in: parsing against a URL, stamping and validating in both
//! handling modes must never panic, whatever the body. (The fuzz build leaves out the
//! validator's fhir-sdk pass, which is third-party serde code, to keep the build small.)
#![no_main]

use intellihealth::fhir::resource::{self, ResourceType};
use intellihealth::fhir::validate::{Handling, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the type in the URL, so bodies meet every type's definition.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let types: Vec<ResourceType> = ResourceType::all().collect();
    let url_type = types[pick as usize % types.len()];
    for url_id in [None, Some("fuzz-id")] {
        if let Ok(mut parsed) = resource::parse_body(body, url_type, url_id) {
            resource::stamp(&mut parsed, url_id.unwrap_or("fuzz"), 1, 1_700_000_000_000);
            let _ = validate(&parsed, Handling::Strict);
            let _ = validate(&parsed, Handling::Lenient);
        }
    }
});
