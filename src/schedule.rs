//! When to poll: pure functions from a schedule and a time to a delay, and
//! the cron expressions schedules are written in.
//!
//! The timer wheel in `daemon` does the waiting; this module only decides.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rand::RngExt as _;
use serde::{Deserialize, Deserializer, de};

/// How often an endpoint is polled.
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<CronExpr>),
}

/// The first quick retry after a failed poll; it doubles per retry.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Quick retries per scheduled poll: a blip (a restart, a dropped
/// connection) is retried within seconds; an outage waits for the schedule.
pub const QUICK_RETRIES: u32 = 3;
/// Overdue endpoints poll within this long after a start.
const OVERDUE_SPREAD: Duration = Duration::from_secs(60);
/// The longest a server's `Retry-After` holds an endpoint back, unless its
/// schedule waits longer anyway.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl Schedule {
    /// How long from `now` until the next regular poll.
    pub fn next_delay(&self, now: SystemTime) -> Duration {
        match self {
            Schedule::Every(interval) => *interval,
            Schedule::Cron(cron) => {
                let now = chrono::DateTime::<chrono::Utc>::from(now);
                cron.schedule
                    .after(&now)
                    .next()
                    .and_then(|next| (next - now).to_std().ok())
                    // An expression with no future time (a past year) never fires again.
                    .unwrap_or(Duration::MAX)
            }
        }
    }

    /// The time between two regular polls: the interval, or for cron the
    /// gap between its next two times.
    pub fn interval(&self, now: SystemTime) -> Duration {
        match self {
            Schedule::Every(interval) => *interval,
            Schedule::Cron(_) => {
                let first = self.next_delay(now);
                let second = now
                    .checked_add(first)
                    .map_or(Duration::MAX, |next| self.next_delay(next));
                // From just after a tick, the next one is the gap itself.
                if second == Duration::ZERO {
                    first
                } else {
                    second
                }
            }
        }
    }

    /// The delay before the first poll after start-up. Interval schedules are
    /// spread uniformly over one interval so that thousands of endpoints do
    /// not fire in the same millisecond; cron schedules fire when they say.
    pub fn first_delay(&self, now: SystemTime) -> Duration {
        match self {
            Schedule::Every(interval) => interval.mul_f64(rand::rng().random_range(0.0..1.0)),
            Schedule::Cron(_) => self.next_delay(now),
        }
    }

    /// The delay before the first poll of an endpoint that last polled at
    /// `last` (as far as the store knows): an interval schedule resumes its
    /// grid, so one polled 5 minutes ago with `every = "1h"` waits 55; one
    /// overdue polls within the next minute (or interval), spread so that
    /// thousands do not fire at once. Without a last poll (or one in the
    /// future: the clock went back), as [`Schedule::first_delay`].
    pub fn resume_delay(&self, last: Option<SystemTime>, now: SystemTime) -> Duration {
        let (Schedule::Every(interval), Some(last)) = (self, last) else {
            return self.first_delay(now);
        };
        let Ok(since) = now.duration_since(last) else {
            return self.first_delay(now);
        };
        match interval.checked_sub(since) {
            Some(remaining) if !remaining.is_zero() => remaining,
            _ => Schedule::Every((*interval).min(OVERDUE_SPREAD)).first_delay(now),
        }
    }

    /// The wait before quick retry number `retries + 1` of a failed
    /// scheduled poll (1 s, 2 s, 4 s, ±20 %, or longer if the server's
    /// `Retry-After` says so), or `None` when it gets no more: after
    /// [`QUICK_RETRIES`], or when the retry would come in the later half of
    /// the wait for the next regular poll anyway.
    pub fn quick_retry(
        &self,
        retries: u32,
        retry_after: Option<Duration>,
        now: SystemTime,
    ) -> Option<Duration> {
        if retries >= QUICK_RETRIES {
            return None;
        }
        let backoff = with_jitter(FIRST_BACKOFF * 2u32.pow(retries), 0.2);
        let wait = retry_after.map_or(backoff, |asked| asked.max(backoff));
        (wait < self.next_delay(now) / 2).then_some(wait)
    }

    /// How long a server's `Retry-After` (on 429 and 503) may hold the
    /// next poll back: what it asks, but at most the longer of the
    /// schedule's next wait and an hour: a server can slow a watch down,
    /// never stop it.
    pub fn held_back(&self, asked: Duration, now: SystemTime) -> Duration {
        asked.min(self.next_delay(now).max(LONGEST_RETRY_AFTER))
    }
}

/// `duration` scaled by a random factor in `[1 - fraction, 1 + fraction]`.
pub fn with_jitter(duration: Duration, fraction: f64) -> Duration {
    let factor = rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction));
    duration.mul_f64(factor)
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(interval) => {
                write!(f, "every {}", humantime::format_duration(*interval))
            }
            Schedule::Cron(cron) => write!(f, "cron `{}`", cron.source),
        }
    }
}

/// A cron expression: the 5-field crontab users write (`*/5 * * * *`), or the
/// 6/7-field form with seconds (and years) that the `cron` crate reads.
#[derive(Clone)]
pub struct CronExpr {
    pub source: String,
    pub schedule: cron::Schedule,
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.source)
    }
}

impl FromStr for CronExpr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = |err: String| format!("invalid cron expression `{text}`: {err}");
        let fields: Vec<&str> = text.split_whitespace().collect();
        let expression = match fields.as_slice() {
            [minute, hour, day_of_month, month, day_of_week] => {
                // Checked here: the `cron` crate's messages name its own
                // 6-field form and get the ranges wrong.
                for (field, (name, low, high)) in fields.iter().zip(CRONTAB_FIELDS) {
                    check_crontab_field(field, name, low, high).map_err(invalid)?;
                }
                let day_of_week = crontab_day_of_week(day_of_week).map_err(invalid)?;
                format!("0 {minute} {hour} {day_of_month} {month} {day_of_week}")
            }
            [_, _, _, _, _, _] | [_, _, _, _, _, _, _] => fields.join(" "),
            [single] if single.starts_with('@') => single.to_string(),
            _ => {
                return Err(format!(
                    "invalid cron expression `{text}`: expected 5 fields (`min hour day month weekday`), or 6/7 with seconds and year"
                ));
            }
        };
        let schedule = cron::Schedule::from_str(&expression).map_err(|err| {
            // Its message draws a caret under its own form of the expression
            // over several lines; the last says what is wrong.
            let err = err.to_string();
            invalid(err.lines().last().unwrap_or_default().trim().to_string())
        })?;
        Ok(CronExpr {
            source: text.to_string(),
            schedule,
        })
    }
}

const WEEKDAYS: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// The five crontab fields: name and range.
const CRONTAB_FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

/// Checks the numbers of one crontab field (`*/15`, `1-5`, `0,30`) against
/// its range; names (`MON`, `JAN`) are left to the `cron` crate.
fn check_crontab_field(field: &str, name: &str, low: u32, high: u32) -> Result<(), String> {
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(step) if (1..=high.max(1)).contains(&step) => {}
                _ => {
                    return Err(format!(
                        "the {name} step `{step}` must be a number from 1 to {}",
                        high.max(1)
                    ));
                }
            }
        }
        for value in range.split('-').filter(|value| *value != "*") {
            if value.is_empty() {
                return Err(format!("the {name} field `{field}` has an empty value"));
            }
            if !value.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            match value.parse::<u32>() {
                Ok(number) if (low..=high).contains(&number) => {}
                _ => {
                    return Err(format!("the {name} `{value}` is out of range {low}-{high}"));
                }
            }
        }
    }
    Ok(())
}

/// Crontab numbers weekdays 0-7 with Sunday as 0 and 7; the `cron` crate
/// numbers them 1-7 from Sunday. Names mean the same in both, so numbers are
/// rewritten as names, and a range that wraps past Saturday (`5-7`) is split.
fn crontab_day_of_week(field: &str) -> Result<String, String> {
    let weekday = |text: &str| -> Result<Option<&'static str>, String> {
        if text.chars().all(|c| c.is_ascii_digit()) {
            let number: usize = text.parse().map_err(|_| format!("bad weekday `{text}`"))?;
            WEEKDAYS
                .get(number)
                .map(|name| Some(*name))
                .ok_or_else(|| format!("weekday `{text}` is out of range 0-7"))
        } else {
            Ok(None)
        }
    };
    let mut parts = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        let step_suffix = step.map(|step| format!("/{step}")).unwrap_or_default();
        match range.split_once('-') {
            Some((start, end)) => match (weekday(start)?, weekday(end)?) {
                (Some(start_name), Some(end_name)) => {
                    let start_number: usize = start.parse().unwrap_or(0);
                    let end_number: usize = end.parse().unwrap_or(0);
                    if end_number == 7 && start_number == 0 {
                        parts.push(format!("SUN-SAT{step_suffix}"));
                    } else if end_number == 7 {
                        // `5-7` is Friday to Sunday: Friday-Saturday plus Sunday.
                        if step.is_some() {
                            return Err(format!(
                                "a step on a range ending at Sunday (`{part}`) is not supported"
                            ));
                        }
                        parts.push(format!("{start_name}-SAT"));
                        parts.push("SUN".to_string());
                    } else {
                        parts.push(format!("{start_name}-{end_name}{step_suffix}"));
                    }
                }
                _ => parts.push(part.to_string()),
            },
            None => match weekday(range)? {
                Some(name) => parts.push(format!("{name}{step_suffix}")),
                None => parts.push(part.to_string()),
            },
        }
    }
    Ok(parts.join(","))
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crontab_weekdays_become_names() {
        let check = |input: &str, expected: &str| {
            assert_eq!(
                crontab_day_of_week(input).unwrap(),
                expected,
                "input {input}"
            );
        };
        check("*", "*");
        check("0", "SUN");
        check("7", "SUN");
        check("1-5", "MON-FRI");
        check("5-7", "FRI-SAT,SUN");
        check("0-7", "SUN-SAT");
        check("0-6/2", "SUN-SAT/2");
        check("mon,wed", "mon,wed");
        check("*/2", "*/2");
        assert!(crontab_day_of_week("8").is_err());
    }

    #[test]
    fn cron_accepts_crontab_and_seconds_forms() {
        for ok in [
            "*/5 * * * *",
            "0 9 * * 1-5",
            "30 */5 * * * *",
            "0 0 12 * * MON 2030",
            "@hourly",
        ] {
            assert!(ok.parse::<CronExpr>().is_ok(), "{ok}");
        }
        let cases = [
            ("* * *", "or 6/7 with seconds and year"),
            ("nonsense", "or 6/7 with seconds and year"),
            ("61 * * * *", "the minute `61` is out of range 0-59"),
            ("60 * * * *", "the minute `60` is out of range 0-59"),
            (
                "*/61 * * * *",
                "the minute step `61` must be a number from 1 to 59",
            ),
            (
                "*/0 * * * *",
                "the minute step `0` must be a number from 1 to 59",
            ),
            ("0 24 * * *", "the hour `24` is out of range 0-23"),
            ("0 0 0 * *", "the day of month `0` is out of range 1-31"),
            ("0 0 * 13 *", "the month `13` is out of range 1-12"),
            ("0 0 * * 9", "the day of week `9` is out of range 0-7"),
            (
                "0 0 * * 1-",
                "the day of week field `1-` has an empty value",
            ),
            (
                "a * * * *",
                "The 'Minutes' field does not support using names. 'a' specified.",
            ),
        ];
        for (bad, expected) in cases {
            let error = bad.parse::<CronExpr>().unwrap_err();
            assert!(!error.contains('\n'), "{bad}: {error}");
            assert!(
                error.starts_with(&format!("invalid cron expression `{bad}`: ")),
                "{error}"
            );
            assert!(error.ends_with(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn crontab_weekday_means_the_same_day() {
        use chrono::{Datelike, TimeZone, Utc, Weekday};
        let monday_only: CronExpr = "0 9 * * 1".parse().unwrap();
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        let next = monday_only.schedule.after(&start).next().unwrap();
        assert_eq!(next.weekday(), Weekday::Mon);
    }

    #[test]
    fn first_polls_are_spread_over_the_interval() {
        let schedule = Schedule::Every(Duration::from_secs(10));
        let delays: Vec<Duration> = (0..200)
            .map(|_| schedule.first_delay(SystemTime::now()))
            .collect();
        assert!(delays.iter().all(|delay| *delay < Duration::from_secs(10)));
        assert!(delays.iter().any(|delay| *delay < Duration::from_secs(3)));
        assert!(delays.iter().any(|delay| *delay > Duration::from_secs(7)));
    }

    #[test]
    fn a_failed_poll_gets_a_few_quick_retries_that_keep_clear_of_the_schedule() {
        let now = SystemTime::now();
        let hourly = Schedule::Cron(Box::new("@hourly".parse().unwrap()));
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z").unwrap();
        let waits: Vec<Duration> = (0..)
            .map_while(|retries| hourly.quick_retry(retries, None, at.into()))
            .collect();
        assert_eq!(waits.len(), QUICK_RETRIES as usize, "{waits:?}");
        for (wait, seconds) in waits.iter().zip([1.0, 2.0, 4.0]) {
            let ratio = wait.as_secs_f64() / seconds;
            assert!((0.8..=1.2).contains(&ratio), "{waits:?}");
        }
        // Every 5 s: one retry at ~1 s fits before 2.5 s, the ~2 s one may
        // not, the ~4 s one never does.
        let five = Schedule::Every(Duration::from_secs(5));
        assert!(five.quick_retry(0, None, now).is_some());
        assert_eq!(five.quick_retry(2, None, now), None);
        // A server's `Retry-After` stretches a retry, or leaves it to the schedule.
        let minute = Schedule::Every(Duration::from_secs(60));
        let asked = Duration::from_secs(10);
        assert_eq!(minute.quick_retry(0, Some(asked), now), Some(asked));
        assert_eq!(minute.quick_retry(0, Some(asked * 3), now), None);
        // Every 100 ms: the schedule itself retries sooner.
        assert_eq!(
            Schedule::Every(Duration::from_millis(100)).quick_retry(0, None, now),
            None
        );
    }

    #[test]
    fn a_restart_resumes_the_grid_from_the_last_poll() {
        let now = SystemTime::now();
        let minutes = |m: u64| Duration::from_secs(60 * m);
        let hourly = Schedule::Every(minutes(60));
        assert_eq!(
            hourly.resume_delay(Some(now - minutes(5)), now),
            minutes(55)
        );
        for _ in 0..50 {
            // Overdue (by minutes or by days): soon, spread over a minute.
            for last in [now - minutes(61), now - minutes(60 * 24 * 3)] {
                assert!(hourly.resume_delay(Some(last), now) < minutes(1));
            }
            // Overdue at every 10 s: within one interval.
            let ten = Schedule::Every(Duration::from_secs(10));
            assert!(ten.resume_delay(Some(now - minutes(1)), now) < Duration::from_secs(10));
            // Never polled, or polled "in the future": anywhere in the interval.
            assert!(hourly.resume_delay(None, now) < minutes(60));
            assert!(hourly.resume_delay(Some(now + minutes(5)), now) < minutes(60));
        }
        // Cron fires when it says.
        let cron = Schedule::Cron(Box::new("*/5 * * * *".parse().unwrap()));
        let at: SystemTime = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:02:30Z")
            .unwrap()
            .into();
        assert_eq!(
            cron.resume_delay(Some(at - minutes(1)), at),
            Duration::from_secs(150)
        );
    }

    #[test]
    fn the_interval_of_a_cron_schedule_is_the_gap_between_its_times() {
        let at: SystemTime = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:02:30Z")
            .unwrap()
            .into();
        let every_five = Schedule::Cron(Box::new("*/5 * * * *".parse().unwrap()));
        assert_eq!(every_five.interval(at), Duration::from_secs(300));
        let hourly = Schedule::Cron(Box::new("@hourly".parse().unwrap()));
        assert_eq!(hourly.interval(at), Duration::from_secs(3600));
        let minute = Schedule::Every(Duration::from_secs(60));
        assert_eq!(minute.interval(at), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_is_honoured_up_to_an_hour_or_the_interval() {
        let now = SystemTime::now();
        let minute = Schedule::Every(Duration::from_secs(60));
        let check = |schedule: &Schedule, asked: u64, expected: u64| {
            let delay = schedule.held_back(Duration::from_secs(asked), now);
            assert_eq!(
                delay,
                Duration::from_secs(expected),
                "{schedule} asked {asked}"
            );
        };
        check(&minute, 10, 10);
        check(&minute, 120, 120);
        check(&minute, u64::MAX, 3600);
        let daily = Schedule::Every(Duration::from_secs(86_400));
        check(&daily, 7200, 7200);
        check(&daily, u64::MAX, 86_400);
    }

    #[test]
    fn cron_waits_for_the_next_tick() {
        let schedule = Schedule::Cron(Box::new("*/5 * * * *".parse().unwrap()));
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:02:30Z").unwrap();
        let delay = schedule.next_delay(at.into());
        assert_eq!(delay, Duration::from_secs(150));
    }
}
