//! The strict JSON parser on arbitrary bytes: it must never panic, and whatever it accepts
//! must serialise (compact and pretty) to text it parses back to the same value.
#![no_main]

use intellihealth::fhir::json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = json::parse(data) {
        let compact = value.to_bytes();
        let again = json::parse(&compact).expect("the compact form parses");
        assert_eq!(again, value, "the compact form is the same value");
        let pretty = json::parse(&value.to_pretty_bytes()).expect("the pretty form parses");
        assert_eq!(pretty, value, "the pretty form is the same value");
    }
});
