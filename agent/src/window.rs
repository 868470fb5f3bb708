//! When reboots may start: days of the week, a time of day (which may cross midnight), a time
//! zone (IANA names), and blackout dates. Pure: [`Window::check`] takes the time as an input,
//! so every rule is a unit test on a fake clock.

use std::collections::BTreeSet;

use jiff::Timestamp;
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;

/// Why the window is closed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Today (the day the window would have started) is not a reboot day.
    Day(Weekday),
    /// Outside the hours.
    Hours,
    /// A blackout date.
    Blackout(Date),
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Day(d) => write!(f, "outside the reboot window: {d:?} is not a reboot day"),
            Closed::Hours => write!(f, "outside the reboot window's hours"),
            Closed::Blackout(d) => write!(f, "outside the reboot window: {d} is a blackout date"),
        }
    }
}

/// A reboot window.
#[derive(Debug, Clone)]
pub struct Window {
    days: [bool; 7],
    start: Time,
    end: Time,
    tz: TimeZone,
    blackout: BTreeSet<Date>,
}

fn day_index(d: Weekday) -> usize {
    usize::from(d.to_monday_zero_offset().unsigned_abs())
}

impl Window {
    /// A window open on `days` from `start` to `end` (inclusive; `end` before `start` crosses
    /// midnight and belongs to the day it starts) in `tz`, except on `blackout` dates.
    pub fn new(days: &[Weekday], start: Time, end: Time, tz: TimeZone, blackout: &[Date]) -> Self {
        let mut set = [false; 7];
        for d in days {
            set[day_index(*d)] = true;
        }
        Self {
            days: set,
            start,
            end,
            tz,
            blackout: blackout.iter().copied().collect(),
        }
    }

    /// Whether the window is open at `now`; if not, why.
    pub fn check(&self, now: Timestamp) -> Result<(), Closed> {
        let local = now.to_zoned(self.tz.clone());
        let (date, time) = (local.date(), local.time());
        // The day the window containing `now` would have started on.
        let started = if self.start <= self.end {
            if time < self.start || time > self.end {
                return Err(Closed::Hours);
            }
            date
        } else if time >= self.start {
            date
        } else if time <= self.end {
            date.yesterday().map_err(|_| Closed::Hours)?
        } else {
            return Err(Closed::Hours);
        };
        if !self.days[day_index(started.weekday())] {
            return Err(Closed::Day(started.weekday()));
        }
        if self.blackout.contains(&started) {
            return Err(Closed::Blackout(started));
        }
        Ok(())
    }
}

/// Parses a day list such as `mon,tue,fri` or `su,mo` (kured's form) or full names.
pub fn parse_days(s: &str) -> Result<Vec<Weekday>, String> {
    let mut days = Vec::new();
    for word in s
        .split(',')
        .map(|w| w.trim().to_ascii_lowercase())
        .filter(|w| !w.is_empty())
    {
        let day = match word.as_str() {
            "mo" | "mon" | "monday" => Weekday::Monday,
            "tu" | "tue" | "tuesday" => Weekday::Tuesday,
            "we" | "wed" | "wednesday" => Weekday::Wednesday,
            "th" | "thu" | "thursday" => Weekday::Thursday,
            "fr" | "fri" | "friday" => Weekday::Friday,
            "sa" | "sat" | "saturday" => Weekday::Saturday,
            "su" | "sun" | "sunday" => Weekday::Sunday,
            other => return Err(format!("unknown day {other:?} (use mo,tu,we,th,fr,sa,su)")),
        };
        days.push(day);
    }
    if days.is_empty() {
        return Err("must name at least one day".to_owned());
    }
    Ok(days)
}

/// Parses a time of day: `HH:MM` or `HH:MM:SS`.
pub fn parse_time(s: &str) -> Result<Time, String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let num = |p: &str, max: i8| -> Result<i8, String> {
        p.parse::<i8>()
            .ok()
            .filter(|v| (0..=max).contains(v))
            .ok_or_else(|| "expected a time such as 02:00 or 23:59:59".to_owned())
    };
    let (h, m, sec) = match parts.as_slice() {
        [h, m] => (num(h, 23)?, num(m, 59)?, 0),
        [h, m, s] => (num(h, 23)?, num(m, 59)?, num(s, 59)?),
        _ => return Err("expected a time such as 02:00 or 23:59:59".to_owned()),
    };
    Time::new(h, m, sec, 0).map_err(|e| e.to_string())
}

/// Parses a time zone: an IANA name (`Europe/Berlin`), `UTC`, or `Local` (the system's).
pub fn parse_tz(s: &str) -> Result<TimeZone, String> {
    match s.trim() {
        "UTC" | "utc" => Ok(TimeZone::UTC),
        "Local" | "local" => Ok(TimeZone::system()),
        name => TimeZone::get(name).map_err(|_| {
            format!("unknown time zone {name:?} (use an IANA name such as Europe/Berlin)")
        }),
    }
}

/// Parses blackout dates: `YYYY-MM-DD[,YYYY-MM-DD...]` (empty: none).
pub fn parse_dates(s: &str) -> Result<Vec<Date>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.parse::<Date>()
                .map_err(|_| format!("{w:?} is not a date such as 2026-12-24"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn all() -> Vec<Weekday> {
        parse_days("mo,tu,we,th,fr,sa,su").unwrap()
    }

    #[test]
    fn the_default_window_is_always_open() {
        let w = Window::new(
            &all(),
            parse_time("0:00").unwrap(),
            parse_time("23:59:59").unwrap(),
            TimeZone::UTC,
            &[],
        );
        for t in [
            "2026-11-26T00:00:00Z",
            "2026-11-26T12:34:56Z",
            "2026-11-29T23:59:59Z",
        ] {
            assert_eq!(w.check(at(t)), Ok(()), "{t}");
        }
    }

    #[test]
    fn days_and_hours_close_the_window() {
        // 2026-11-26 is a Thursday.
        let w = Window::new(
            &parse_days("mon,thu").unwrap(),
            parse_time("02:00").unwrap(),
            parse_time("04:00").unwrap(),
            TimeZone::UTC,
            &[],
        );
        assert_eq!(w.check(at("2026-11-26T02:00:00Z")), Ok(()));
        assert_eq!(w.check(at("2026-11-26T04:00:00Z")), Ok(()));
        assert_eq!(w.check(at("2026-11-26T04:00:01Z")), Err(Closed::Hours));
        assert_eq!(w.check(at("2026-11-26T01:59:59Z")), Err(Closed::Hours));
        assert_eq!(
            w.check(at("2026-11-27T03:00:00Z")),
            Err(Closed::Day(Weekday::Friday))
        );
    }

    #[test]
    fn a_window_crossing_midnight_belongs_to_the_day_it_starts() {
        let w = Window::new(
            &parse_days("fr").unwrap(),
            parse_time("22:00").unwrap(),
            parse_time("02:00").unwrap(),
            TimeZone::UTC,
            &[],
        );
        // Friday 2026-11-27 22:00 to Saturday 02:00.
        assert_eq!(w.check(at("2026-11-27T23:30:00Z")), Ok(()));
        assert_eq!(w.check(at("2026-11-28T01:59:00Z")), Ok(()));
        assert_eq!(w.check(at("2026-11-28T02:00:01Z")), Err(Closed::Hours));
        assert_eq!(
            w.check(at("2026-11-28T23:00:00Z")),
            Err(Closed::Day(Weekday::Saturday))
        );
        // Friday early morning belongs to Thursday's window.
        assert_eq!(
            w.check(at("2026-11-27T01:00:00Z")),
            Err(Closed::Day(Weekday::Thursday))
        );
    }

    #[test]
    fn the_time_zone_decides_the_local_day_and_hour() {
        let berlin = parse_tz("Europe/Berlin").unwrap();
        let w = Window::new(
            &parse_days("fr").unwrap(),
            parse_time("00:30").unwrap(),
            parse_time("01:30").unwrap(),
            berlin,
            &[],
        );
        // 23:45 UTC on Thursday is 00:45 on Friday in Berlin (CET, UTC+1).
        assert_eq!(w.check(at("2026-11-26T23:45:00Z")), Ok(()));
        assert_eq!(w.check(at("2026-11-27T00:45:00Z")), Err(Closed::Hours));
        assert!(
            parse_tz("Mars/Olympus_Mons")
                .unwrap_err()
                .contains("Mars/Olympus_Mons")
        );
    }

    #[test]
    fn blackout_dates_close_the_whole_day() {
        let w = Window::new(
            &all(),
            parse_time("00:00").unwrap(),
            parse_time("23:59:59").unwrap(),
            TimeZone::UTC,
            &parse_dates("2026-12-24, 2026-12-31").unwrap(),
        );
        let xmas: Date = "2026-12-24".parse().unwrap();
        assert_eq!(
            w.check(at("2026-12-24T10:00:00Z")),
            Err(Closed::Blackout(xmas))
        );
        assert_eq!(w.check(at("2026-12-25T10:00:00Z")), Ok(()));
        assert!(parse_dates("2026-13-01").is_err());
        assert_eq!(parse_dates("").unwrap(), []);
    }

    #[test]
    fn bad_days_and_times_say_what_is_expected() {
        assert!(parse_days("mo,xx").unwrap_err().contains("xx"));
        assert!(parse_days("").is_err());
        assert!(parse_time("25:00").is_err());
        assert!(parse_time("noon").is_err());
        assert_eq!(parse_time("7:05").unwrap(), Time::new(7, 5, 0, 0).unwrap());
    }
}
