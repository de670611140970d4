//! Time rules: weekly schedules in the site's time zone, exception dates from the signed
//! `calendar` list, the daily anti-passback reset, and whether the clock can be trusted.
//!
//! Pure: `now` (Unix ms, UTC) comes in; the time zone turns it into the site's wall time.
//! Converting UTC to local time is always unambiguous, so daylight-saving changes need no
//! special case in the schedules. Only the reset time (a local wall time turned into an
//! instant) has to choose, and takes the earliest instant a wall time names, or the first one
//! after a skipped hour.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use chrono_tz::Tz;

use crate::UnixMs;

/// Minutes in a day; a span may end at 24:00.
pub const DAY_MINUTES: u16 = 24 * 60;

/// Local wall-clock minutes `[start, end)`, within one day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u16,
    pub end: u16,
}

impl Span {
    /// Parses `HH:MM-HH:MM` (end after start, at most `24:00`). A span over midnight is two
    /// spans: `22:00-24:00` on one day, `00:00-06:00` on the next.
    pub fn parse(s: &str) -> Result<Span, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not HH:MM-HH:MM"))?;
        let (start, end) = (minute_of_day(a.trim())?, minute_of_day(b.trim())?);
        if end <= start {
            return Err(format!(
                "`{s}` ends before it starts; a span over midnight is written as two spans, \
                 `22:00-24:00` and `00:00-06:00` on the next day"
            ));
        }
        Ok(Span { start, end })
    }

    pub fn contains(&self, minute: u16) -> bool {
        self.start <= minute && minute < self.end
    }
}

/// Parses `HH:MM` into minutes after midnight; `24:00` is the end of the day.
pub fn minute_of_day(s: &str) -> Result<u16, String> {
    let bad = || format!("`{s}` is not a time HH:MM (00:00..=24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// A named weekly schedule: open spans per weekday, Monday first.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Schedule {
    pub week: [Vec<Span>; 7],
    /// Whether the calendar's exception dates replace this schedule's hours on those dates.
    /// A 24/7 guard schedule sets this to false: holidays do not close it.
    pub calendar: bool,
}

/// Exception dates from the signed `calendar` list.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Calendar {
    pub days: BTreeMap<NaiveDate, Exception>,
}

/// One exception date: the hours that replace the weekly hours of the schedules it applies to.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Exception {
    /// None = closed all day.
    pub hours: Vec<Span>,
    /// The schedules the date overrides, by name; `None` = every schedule that follows the
    /// calendar. A holiday of the office must not cut the night shift at midnight, and a
    /// short day must not open it at 09:00. A name the gate does not know is ignored: one
    /// calendar serves every gate of the site, and each knows only its own schedules.
    pub schedules: Option<BTreeSet<String>>,
}

impl Exception {
    /// A date that overrides every schedule following the calendar.
    pub fn all(hours: Vec<Span>) -> Exception {
        Exception {
            hours,
            schedules: None,
        }
    }

    fn applies_to(&self, schedule: &str) -> bool {
        self.schedules.as_ref().is_none_or(|s| s.contains(schedule))
    }
}

/// The site's wall time at `now`.
pub fn local(tz: Tz, now: UnixMs) -> NaiveDateTime {
    // Out-of-range instants (beyond year ±262,000) cannot come from a real clock; they read
    // as the epoch, which no schedule treats specially.
    let utc = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
    utc.with_timezone(&tz).naive_local()
}

impl Schedule {
    /// Whether the schedule, called `name` in the config, is open at local time `at`. A date
    /// of the calendar overrides it only if the schedule follows the calendar and the date
    /// applies to it: `calendar = false` in the gate's config is never overridden by a list.
    pub fn open_at(&self, name: &str, calendar: &Calendar, at: NaiveDateTime) -> bool {
        let minute = (at.hour() * 60 + at.minute()) as u16;
        let spans = match calendar.days.get(&at.date()) {
            Some(exception) if self.calendar && exception.applies_to(name) => &exception.hours,
            _ => &self.week[at.weekday().num_days_from_monday() as usize],
        };
        spans.iter().any(|s| s.contains(minute))
    }
}

/// The latest daily reset at or before `now`: local time `at_minute` of today, or of
/// yesterday if today's is still to come.
pub fn last_reset(tz: Tz, at_minute: u16, now: UnixMs) -> UnixMs {
    let today = local(tz, now).date();
    let instant = |date: NaiveDate| -> UnixMs {
        let wall = date.and_hms_opt(0, 0, 0).unwrap_or_default()
            + chrono::Duration::minutes(i64::from(at_minute));
        // A wall time in a skipped hour (spring forward) names no instant: step to the first
        // minute that exists after it.
        (0..=180)
            .find_map(|skip| {
                tz.from_local_datetime(&(wall + chrono::Duration::minutes(skip)))
                    .earliest()
            })
            .map_or(i64::MIN, |t| t.timestamp_millis())
    };
    let t = instant(today);
    if t <= now {
        t
    } else {
        instant(today.pred_opt().unwrap_or(today))
    }
}

// ---- clock trust ---------------------------------------------------------------------------

/// What the shell observed of the system clock. The default (no sync required, no jump) is
/// what a store opened without the daemon's clock watcher assumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockSense {
    /// Whether time sync says the clock is synchronized; `None` when no sync is required
    /// (a box with a battery-backed clock).
    pub synced: Option<bool>,
    /// The clock jumped by more than the configured limit, and time sync has not confirmed
    /// it since.
    pub jumped: bool,
}

/// Why the clock is not trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untrust {
    /// Time sync has not synchronized the clock (yet).
    NotSynced,
    /// The clock jumped; it is trusted again once time sync confirms it.
    Jumped,
    /// The clock reads earlier than an event this gate already recorded.
    BeforeLastEvent,
    /// The clock reads earlier than this gated was built: it reset (a Pi has no RTC).
    BeforeBuild,
}

impl Untrust {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSynced => "not_synced",
            Self::Jumped => "jumped",
            Self::BeforeLastEvent => "before_last_event",
            Self::BeforeBuild => "before_build",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockState {
    /// Time sync says synchronized, and nothing contradicts it.
    Synced,
    /// No sync is required, and nothing contradicts the clock.
    FreeRunning,
    Untrusted(Untrust),
}

impl ClockState {
    pub fn trusted(self) -> bool {
        !matches!(self, Self::Untrusted(_))
    }

    /// As status shows it: `synced`, `free_running` or `untrusted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::FreeRunning => "free_running",
            Self::Untrusted(_) => "untrusted",
        }
    }
}

/// How far behind the latest trusted event a clock may read and still be trusted.
pub const FLOOR_SLACK_MS: i64 = 10_000;

/// Judges the clock at `now`. `floor` is the latest event time this gate recorded, `built`
/// when this gated was built. A clock before either has certainly reset, whatever time sync
/// says; otherwise time sync and jumps decide.
pub fn judge_clock(
    now: UnixMs,
    floor: Option<UnixMs>,
    built: UnixMs,
    sense: ClockSense,
) -> ClockState {
    if now < built {
        return ClockState::Untrusted(Untrust::BeforeBuild);
    }
    // Lanes read the clock before their passes queue for the store, and time sync slews or
    // steps by fractions of a second: a few seconds behind the floor is normal.
    if floor.is_some_and(|f| now < f.saturating_sub(FLOOR_SLACK_MS)) {
        return ClockState::Untrusted(Untrust::BeforeLastEvent);
    }
    if sense.jumped {
        return ClockState::Untrusted(Untrust::Jumped);
    }
    match sense.synced {
        Some(true) => ClockState::Synced,
        Some(false) => ClockState::Untrusted(Untrust::NotSynced),
        None => ClockState::FreeRunning,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ms(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> UnixMs {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .map(|t| t.timestamp_millis())
            .unwrap_or_default()
    }

    /// Weekdays 08:00-18:00, closed at weekends; follows the calendar.
    pub(crate) fn office() -> Schedule {
        let day = vec![Span {
            start: 8 * 60,
            end: 18 * 60,
        }];
        let mut week: [Vec<Span>; 7] = Default::default();
        week[..5].fill(day);
        Schedule {
            week,
            calendar: true,
        }
    }

    #[test]
    fn spans_parse_and_refuse() {
        assert_eq!(
            Span::parse("08:00-24:00"),
            Ok(Span {
                start: 480,
                end: 1440
            })
        );
        for bad in [
            "8:00-9:00",
            "18:00-08:00",
            "08:00",
            "08:60-09:00",
            "24:01-24:02",
            "a-b",
        ] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules_follow_the_site_time_zone() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap_or(Tz::UTC);
        let s = office();
        let cal = Calendar::default();
        // Monday 2026-11-23 08:00 in Shanghai is 00:00 UTC.
        let open = ms(tz, 2026, 11, 23, 8, 0);
        assert!(s.open_at("office", &cal, local(tz, open)));
        assert!(!s.open_at("office", &cal, local(tz, open - 1)));
        assert!(!s.open_at("office", &cal, local(tz, ms(tz, 2026, 11, 23, 18, 0))));
        // Saturday.
        assert!(!s.open_at("office", &cal, local(tz, ms(tz, 2026, 11, 28, 12, 0))));
    }

    #[test]
    fn calendar_exceptions_replace_the_day() {
        let tz = Tz::UTC;
        let mut s = office();
        let mut cal = Calendar::default();
        let holiday = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default();
        cal.days.insert(holiday, Exception::all(vec![]));
        let noon = local(tz, ms(tz, 2026, 11, 23, 12, 0));
        assert!(!s.open_at("office", &cal, noon));
        s.calendar = false;
        assert!(s.open_at("office", &cal, noon));
        s.calendar = true;
        cal.days.insert(
            holiday,
            Exception::all(vec![Span {
                start: 600,
                end: 780,
            }]),
        );
        assert!(s.open_at("office", &cal, noon));
        assert!(!s.open_at("office", &cal, local(tz, ms(tz, 2026, 11, 23, 13, 0))));
    }

    /// Every day 20:00-24:00 and 00:00-06:00; follows the calendar.
    fn night() -> Schedule {
        let day = vec![
            Span {
                start: 0,
                end: 6 * 60,
            },
            Span {
                start: 20 * 60,
                end: DAY_MINUTES,
            },
        ];
        Schedule {
            week: std::array::from_fn(|_| day.clone()),
            calendar: true,
        }
    }

    #[test]
    fn a_date_that_names_schedules_overrides_only_those() {
        let tz = Tz::UTC;
        let (office, night) = (office(), night());
        let holiday = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default();
        let short = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap_or_default();
        let only_office = Some(BTreeSet::from(["office".to_string()]));
        let mut cal = Calendar::default();
        cal.days.insert(
            holiday,
            Exception {
                hours: vec![],
                schedules: only_office.clone(),
            },
        );
        cal.days.insert(
            short,
            Exception {
                hours: vec![Span {
                    start: 9 * 60,
                    end: 12 * 60,
                }],
                schedules: only_office,
            },
        );
        let at = |d: u32, h: u32| local(tz, ms(tz, 2026, 11, d, h, 0));
        // The office holiday closes the office...
        assert!(!office.open_at("office", &cal, at(23, 12)));
        // ...and the night shift works through it, over midnight.
        assert!(night.open_at("night", &cal, at(23, 1)));
        assert!(night.open_at("night", &cal, at(23, 23)));
        // The short office day opens the office at 09:00, not the night shift.
        assert!(office.open_at("office", &cal, at(24, 9)));
        assert!(!office.open_at("office", &cal, at(24, 13)));
        assert!(!night.open_at("night", &cal, at(24, 9)));
        assert!(night.open_at("night", &cal, at(24, 22)));
        // Without names, the date overrides both, as before.
        cal.days.insert(holiday, Exception::all(vec![]));
        assert!(!night.open_at("night", &cal, at(23, 1)));
        assert!(!night.open_at("night", &cal, at(23, 23)));
        // A schedule that does not follow the calendar is never overridden, even by name.
        let guard = Schedule {
            calendar: false,
            ..night.clone()
        };
        cal.days.insert(
            holiday,
            Exception {
                hours: vec![],
                schedules: Some(BTreeSet::from(["guard".to_string()])),
            },
        );
        assert!(guard.open_at("guard", &cal, at(23, 23)));
    }

    proptest::proptest! {
        /// A date that names other schedules changes nothing for this one, and the schedule it
        /// names is open exactly in the date's hours.
        #[test]
        fn a_date_overrides_exactly_the_schedules_it_names(
            minute in 0i64..7 * 24 * 60,
            raw in proptest::collection::vec((0u16..DAY_MINUTES, 1u16..=DAY_MINUTES), 0..3),
        ) {
            let tz = Tz::UTC;
            let at = local(tz, ms(tz, 2026, 11, 23, 0, 0) + minute * 60_000);
            let hours: Vec<Span> = raw
                .into_iter()
                .map(|(start, len)| Span { start, end: (start + len).min(DAY_MINUTES) })
                .collect();
            let mut cal = Calendar::default();
            cal.days.insert(
                at.date(),
                Exception {
                    hours: hours.clone(),
                    schedules: Some(BTreeSet::from(["office".to_string()])),
                },
            );
            let night = night();
            proptest::prop_assert_eq!(
                night.open_at("night", &cal, at),
                night.open_at("night", &Calendar::default(), at)
            );
            let minute_of_day = (at.hour() * 60 + at.minute()) as u16;
            proptest::prop_assert_eq!(
                office().open_at("office", &cal, at),
                hours.iter().any(|s| s.contains(minute_of_day))
            );
        }
    }

    #[test]
    fn the_reset_is_the_last_local_time_passed() {
        let tz: Tz = "Europe/Berlin".parse().unwrap_or(Tz::UTC);
        let four = 4 * 60;
        let at = ms(tz, 2026, 11, 23, 4, 0);
        assert_eq!(last_reset(tz, four, at), at);
        assert_eq!(last_reset(tz, four, at + 3_600_000), at);
        assert_eq!(last_reset(tz, four, at - 1), ms(tz, 2026, 11, 22, 4, 0));
        // 02:30 does not exist on 2026-03-29 in Berlin: the reset is at 03:00 local.
        let skipped = last_reset(tz, 150, ms(tz, 2026, 3, 29, 12, 0));
        assert_eq!(skipped, ms(tz, 2026, 3, 29, 3, 0));
    }

    #[test]
    fn clock_judgement() {
        let sense = ClockSense {
            synced: Some(true),
            jumped: false,
        };
        assert_eq!(judge_clock(100, Some(50), 10, sense), ClockState::Synced);
        assert_eq!(
            judge_clock(5, None, 10, sense),
            ClockState::Untrusted(Untrust::BeforeBuild)
        );
        assert_eq!(
            judge_clock(40, Some(50 + FLOOR_SLACK_MS), 10, sense),
            ClockState::Untrusted(Untrust::BeforeLastEvent)
        );
        assert_eq!(
            judge_clock(40, Some(50), 10, sense),
            ClockState::Synced,
            "within the slack"
        );
        let jumped = ClockSense {
            jumped: true,
            ..sense
        };
        assert_eq!(
            judge_clock(100, None, 10, jumped),
            ClockState::Untrusted(Untrust::Jumped)
        );
        let unsynced = ClockSense {
            synced: Some(false),
            jumped: false,
        };
        assert_eq!(
            judge_clock(100, None, 10, unsynced),
            ClockState::Untrusted(Untrust::NotSynced)
        );
        assert_eq!(
            judge_clock(100, None, 10, ClockSense::default()),
            ClockState::FreeRunning
        );
    }
}
