//! The FHIRPath compiler on arbitrary text, and what it compiles evaluated on a resource: it
//! must refuse what it does not support, never panic or loop.
#![no_main]

use intellihealth::fhir::json;
use intellihealth::search::fhirpath;
use libfuzzer_sys::fuzz_target;

const RESOURCE: &[u8] = br##"{"resourceType":"Observation","id":"o","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}],"text":"Heart rate"},"subject":{"reference":"Patient/p"},"effectiveDateTime":"2020-01-01T10:00:00Z","valueQuantity":{"value":72,"unit":"beats/min","system":"http://unitsofmeasure.org","code":"/min"},"component":[{"code":{"text":"x"},"valueString":"y"}],"performer":[{"reference":"Practitioner/d"},{"reference":"#c"}]}"##;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(expression) = fhirpath::compile(text) {
        let resource = json::parse(RESOURCE).expect("the fixture parses");
        let _ = expression.evaluate(&resource);
    }
});
