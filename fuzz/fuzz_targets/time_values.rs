//! FHIR date, dateTime and instant text, as it arrives in bodies and in `_since`/`_at`: the
//! period a value covers must be computed without panicking, start never after end.
#![no_main]

use intellihealth::fhir::instant;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((start, end)) = instant::period(text) {
        assert!(start <= end, "{text}: {start} > {end}");
    }
});
