//! Cron schedules: a 5-field expression (6 with seconds first) in an IANA
//! time zone. Next-fire times come from `croner` evaluated in the zone
//! (`chrono-tz`), so a daylight-saving change is handled as the zone
//! says: a wall-clock time skipped by the change does not fire, a
//! repeated one fires once.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses an expression and a zone name; the error names which is
    /// wrong and why.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, String> {
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) && !expression.trim_start().starts_with('@') {
            return Err(format!(
                "invalid cron expression {expression:?}: 5 fields (minute hour day month weekday), or 6 with seconds first; it has {fields}"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| format!("invalid cron expression {expression:?}: {e}"))?;
        let zone: Tz = timezone.parse().map_err(|_| {
            format!("unknown time zone {timezone:?}: use an IANA name such as UTC or Europe/Paris")
        })?;
        Ok(Self { cron, zone })
    }

    /// The first tick strictly after `after_ms` (unix milliseconds).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after = Utc.timestamp_millis_opt(after_ms).single()?;
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc).timestamp_millis())
    }

    /// The last tick at or before `at_ms`, if any after `after_ms`.
    pub fn last_between(&self, after_ms: i64, at_ms: i64) -> Option<i64> {
        let at = Utc.timestamp_millis_opt(at_ms).single()?;
        let t = self
            .cron
            .find_previous_occurrence(&at.with_timezone(&self.zone), true)
            .ok()?
            .with_timezone(&Utc)
            .timestamp_millis();
        (t > after_ms).then_some(t)
    }
}

/// A tick's instant as the CloudEvent `time`.
pub fn instant(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn five_and_six_fields_in_a_zone() {
        let s = Schedule::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(ms("2026-12-03T10:02:00Z")),
            Some(ms("2026-12-03T10:05:00Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-12-03T10:05:00Z")),
            Some(ms("2026-12-03T10:10:00Z")),
            "strictly after"
        );
        let secs = Schedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            secs.next_after(ms("2026-12-03T10:00:01Z")),
            Some(ms("2026-12-03T10:00:10Z"))
        );
        // 09:00 in Paris is 08:00 UTC in winter.
        let paris = Schedule::parse("0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            paris.next_after(ms("2026-12-03T00:00:00Z")),
            Some(ms("2026-12-03T08:00:00Z"))
        );
        // ... and 07:00 UTC in summer.
        assert_eq!(
            paris.next_after(ms("2026-07-01T00:00:00Z")),
            Some(ms("2026-07-01T07:00:00Z"))
        );
        assert_eq!(
            paris.last_between(ms("2026-12-01T00:00:00Z"), ms("2026-12-03T12:00:00Z")),
            Some(ms("2026-12-03T08:00:00Z"))
        );
        assert_eq!(
            paris.last_between(ms("2026-12-03T08:00:00Z"), ms("2026-12-03T12:00:00Z")),
            None
        );
    }

    #[test]
    fn a_skipped_wall_clock_time_does_not_fire_twice_or_early() {
        // Europe/Paris springs forward at 02:00 on 2026-03-29: 02:30 does
        // not exist that day. The next 02:30 tick after midnight is never
        // two ticks in one day.
        let s = Schedule::parse("30 2 * * *", "Europe/Paris").unwrap();
        let first = s.next_after(ms("2026-03-28T23:00:00Z")).unwrap();
        let second = s.next_after(first).unwrap();
        assert!(second - first >= 23 * 3_600_000, "{first} {second}");
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let e = Schedule::parse("* * *", "UTC").unwrap_err();
        assert!(e.contains("5 fields"), "{e}");
        let e = Schedule::parse("61 * * * *", "UTC").unwrap_err();
        assert!(e.contains("invalid cron expression"), "{e}");
        let e = Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("unknown time zone"), "{e}");
    }
}
