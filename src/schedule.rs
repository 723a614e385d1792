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

/// The first retry after a failed poll; it doubles per consecutive failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
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

    /// The delay before the first poll after start-up. Interval schedules are
    /// spread uniformly over one interval so that thousands of endpoints do
    /// not fire in the same millisecond; cron schedules fire when they say.
    pub fn first_delay(&self, now: SystemTime) -> Duration {
        match self {
            Schedule::Every(interval) => interval.mul_f64(rand::rng().random_range(0.0..1.0)),
            Schedule::Cron(_) => self.next_delay(now),
        }
    }

    /// The delay before retrying a poll that failed `consecutive_failures`
    /// times in a row: exponential with ±20 % jitter, never later than the
    /// next regular poll would be.
    pub fn retry_delay(&self, consecutive_failures: u32, now: SystemTime) -> Duration {
        let exponent = consecutive_failures.saturating_sub(1).min(20);
        let backoff = with_jitter(FIRST_BACKOFF * 2u32.pow(exponent), 0.2);
        backoff.min(self.next_delay(now))
    }
}

impl Schedule {
    /// The wait after a failed poll: the backoff, or longer when the server
    /// said when to come back (`Retry-After` on 429 and 503), but at most the
    /// longer of the schedule's next wait and an hour: a server can slow a
    /// watch down, never stop it.
    pub fn failed_delay(
        &self,
        consecutive_failures: u32,
        retry_after: Option<Duration>,
        now: SystemTime,
    ) -> Duration {
        let backoff = self.retry_delay(consecutive_failures, now);
        let Some(asked) = retry_after else {
            return backoff;
        };
        let longest = self.next_delay(now).max(LONGEST_RETRY_AFTER);
        backoff.max(asked.min(longest))
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
    fn failed_polls_back_off_up_to_the_interval() {
        let schedule = Schedule::Every(Duration::from_secs(60));
        let now = SystemTime::now();
        let first = schedule.retry_delay(1, now);
        assert!(
            first >= Duration::from_millis(800) && first <= Duration::from_millis(1200),
            "{first:?}"
        );
        let fourth = schedule.retry_delay(4, now);
        assert!(
            fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600),
            "{fourth:?}"
        );
        assert_eq!(schedule.retry_delay(30, now), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_is_honoured_up_to_an_hour_or_the_interval() {
        let now = SystemTime::now();
        let minute = Schedule::Every(Duration::from_secs(60));
        // After 30 failures the backoff is the interval; after 1, a second.
        let check = |schedule: &Schedule, failures, asked: Option<u64>, expected: u64| {
            let delay = schedule.failed_delay(failures, asked.map(Duration::from_secs), now);
            assert_eq!(
                delay,
                Duration::from_secs(expected),
                "{schedule} asked {asked:?}"
            );
        };
        check(&minute, 30, None, 60);
        check(&minute, 30, Some(10), 60);
        check(&minute, 1, Some(5), 5);
        check(&minute, 1, Some(120), 120);
        check(&minute, 1, Some(u64::MAX), 3600);
        let daily = Schedule::Every(Duration::from_secs(86_400));
        check(&daily, 1, Some(7200), 7200);
        check(&daily, 1, Some(u64::MAX), 86_400);
    }

    #[test]
    fn cron_waits_for_the_next_tick() {
        let schedule = Schedule::Cron(Box::new("*/5 * * * *".parse().unwrap()));
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:02:30Z").unwrap();
        let delay = schedule.next_delay(at.into());
        assert_eq!(delay, Duration::from_secs(150));
    }
}
