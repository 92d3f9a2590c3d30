//! The search parser and planner on arbitrary query strings, for any resource type: parsing,
//! planning and judging a resource's entries by the plan must never panic, whatever a client
//! puts in a URL.
#![no_main]

use intellihealth::fhir::json;
use intellihealth::fhir::resource::ResourceType;
use intellihealth::search::entries::extract;
use intellihealth::search::params::Registry;
use intellihealth::search::plan::plan;
use intellihealth::search::query::{Strictness, parse};
use libfuzzer_sys::fuzz_target;

const RESOURCE: &[u8] = br##"{"resourceType":"Observation","id":"o","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}],"text":"Heart rate"},"subject":{"reference":"Patient/p"},"effectiveDateTime":"2020-01-01T10:00:00Z","valueQuantity":{"value":72,"unit":"beats/min","system":"http://unitsofmeasure.org","code":"/min"},"component":[{"code":{"text":"x"},"valueQuantity":{"value":1}}]}"##;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, query)) = data.split_first() else {
        return;
    };
    let types: Vec<ResourceType> = ResourceType::all().collect();
    let resource_type = types[pick as usize % types.len()];
    let pairs: Vec<(String, String)> = form_urlencoded_pairs(query);
    for strictness in [Strictness::Strict, Strictness::Lenient] {
        if let Ok(request) = parse(Registry::r4(), Some(resource_type), &pairs, strictness)
            && let Ok(planned) = plan(&request.criteria, "http://fuzz.example/fhir")
        {
            let resource = json::parse(RESOURCE).expect("the fixture parses");
            let entries = extract(Registry::r4(), "Observation", &resource);
            let _ = planned.passes(&entries);
            let _ = planned.narrowing();
        }
    }
});

/// `a=b&c=d`, split without decoding (the bytes are what a server would have decoded).
fn form_urlencoded_pairs(query: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(query)
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (pair.to_owned(), String::new()),
        })
        .collect()
}
