//! Time as FHIR writes it: `meta.lastUpdated` instants (millisecond precision, UTC) and the
//! period a partial dateTime denotes (`2024-05` is all of May 2024), for `_since` and `_at`.
//!
//! Must not touch anything but text and numbers.

use std::fmt::Write as _;

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::definitions::Primitive;
use super::json::Json;
use super::primitives;

/// The server's clock, in whole milliseconds: the precision of `meta.lastUpdated`.
pub fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `meta.lastUpdated` text for a millisecond timestamp (`2024-05-01T12:34:56.789Z`).
pub fn format_instant(millis: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let whole = at.replace_nanosecond(0).unwrap_or(at);
    let mut text = whole.format(&Rfc3339).unwrap_or_default();
    // RFC 3339 output ends in `Z` with no fraction for whole seconds; FHIR reads better fixed.
    text.pop();
    let _ = write!(text, ".{:03}Z", millis.rem_euclid(1000));
    text
}

/// The period, in milliseconds (inclusive), that a FHIR date or dateTime denotes. A value
/// without a zone is read as UTC. `None` if the text is not a valid date/dateTime.
pub fn period(text: &str) -> Option<(i64, i64)> {
    primitives::check(Primitive::DateTime, &Json::String(text.to_owned())).ok()?;
    let year: i32 = text.get(0..4)?.parse().ok()?;
    if text.len() == 4 {
        let start = at(
            Date::from_calendar_date(year, Month::January, 1).ok()?,
            Time::MIDNIGHT,
        );
        let end = at(
            Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
            Time::MIDNIGHT,
        );
        return Some((start, end - 1));
    }
    let month = Month::try_from(text.get(5..7)?.parse::<u8>().ok()?).ok()?;
    if text.len() == 7 {
        let first = Date::from_calendar_date(year, month, 1).ok()?;
        let next = if month == Month::December {
            Date::from_calendar_date(year + 1, Month::January, 1).ok()?
        } else {
            Date::from_calendar_date(year, month.next(), 1).ok()?
        };
        return Some((at(first, Time::MIDNIGHT), at(next, Time::MIDNIGHT) - 1));
    }
    let day: u8 = text.get(8..10)?.parse().ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    if text.len() == 10 {
        let start = at(date, Time::MIDNIGHT);
        return Some((start, start + 86_400_000 - 1));
    }
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let millis = (parsed.unix_timestamp_nanos() / 1_000_000) as i64;
    // A time given to the second covers that whole second; with a fraction, that instant.
    let width = if text[11..].contains('.') { 0 } else { 999 };
    Some((millis, millis + width))
}

fn at(date: Date, time: Time) -> i64 {
    let utc = PrimitiveDateTime::new(date, time).assume_utc();
    (utc.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_millisecond_instants() {
        assert_eq!(
            format_instant(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_instant(1_700_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
    }

    #[test]
    fn partial_datetimes_denote_periods() {
        let may = period("2024-05").unwrap();
        assert_eq!(format_instant(may.0), "2024-05-01T00:00:00.000Z");
        assert_eq!(format_instant(may.1), "2024-05-31T23:59:59.999Z");
        let year = period("2024").unwrap();
        assert_eq!(format_instant(year.1), "2024-12-31T23:59:59.999Z");
        let second = period("2024-05-01T10:00:00+02:00").unwrap();
        assert_eq!(format_instant(second.0), "2024-05-01T08:00:00.000Z");
        assert_eq!(second.1 - second.0, 999);
        let exact = period("2024-05-01T10:00:00.250Z").unwrap();
        assert_eq!(exact.0, exact.1);
        assert!(period("2024-02-30").is_none());
        assert!(period("yesterday").is_none());
    }
}
