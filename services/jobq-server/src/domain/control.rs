//! Queue controls, the worker registry and cron schedules.

use std::str::FromStr;

use chrono::{TimeZone, Utc};

use super::admission::MissedTicks;
use super::clock::Millis;
use super::error::{QueueError, QueueResult};
use super::job::{JobId, JobSpec};

/// A queue's controls.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueControls {
    /// Queue name.
    pub name: String,
    /// Hands out no jobs while true.
    pub paused: bool,
    /// Most running at once across all workers; 0 = none.
    pub concurrency_limit: i32,
    /// Most started per second; 0 = none.
    pub rate_limit_per_second: f64,
    /// Size of the rate limit's bucket; 0 = the rate rounded up.
    pub rate_burst: f64,
}

impl QueueControls {
    /// A queue with no controls set.
    pub fn open(name: String) -> Self {
        Self {
            name,
            paused: false,
            concurrency_limit: 0,
            rate_limit_per_second: 0.0,
            rate_burst: 0.0,
        }
    }
}

/// A worker as last heard from.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    /// Worker id.
    pub worker_id: String,
    /// Its host.
    pub hostname: String,
    /// Its software version.
    pub version: String,
    /// Queues it leases from.
    pub queues: Vec<String>,
    /// Types it runs.
    pub types: Vec<String>,
    /// Lease length it asked for; `None`: the server default.
    pub lease_duration: Option<std::time::Duration>,
    /// First heard from.
    pub first_seen_at: Millis,
    /// Last heard from.
    pub last_seen_at: Millis,
}

/// A cron schedule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    /// Unique name.
    pub name: String,
    /// Cron expression (seconds field first).
    pub cron: String,
    /// IANA time zone.
    pub time_zone: String,
    /// The job each tick enqueues.
    pub template: JobSpec,
    /// Enqueues nothing while true.
    pub paused: bool,
    /// What ticks missed while no scheduler ran do.
    pub missed_ticks: MissedTicks,
    /// Next tick.
    pub next_run_at: Millis,
    /// Last tick that enqueued a job.
    pub last_run_at: Option<Millis>,
    /// The job of that tick.
    pub last_job_id: Option<JobId>,
    /// Created.
    pub created_at: Millis,
    /// Last changed.
    pub updated_at: Millis,
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    schedule: cron::Schedule,
    zone: chrono_tz::Tz,
}

impl CronSchedule {
    /// Parses `expression` (6 or 7 fields with seconds first, or the classic
    /// 5 fields, read as at second 0) in `time_zone` (empty: UTC).
    pub fn parse(expression: &str, time_zone: &str) -> QueueResult<Self> {
        let fields = expression.split_whitespace().count();
        let normalized = match fields {
            5 => format!("0 {expression}"),
            6 | 7 => expression.to_owned(),
            _ => {
                return Err(QueueError::invalid(
                    "schedule.cron",
                    format!("{expression:?} has {fields} fields; expected 5, 6 or 7"),
                ));
            }
        };
        check_cron_ranges(&normalized, fields == 5)?;
        let schedule = cron::Schedule::from_str(&normalized).map_err(|error| {
            QueueError::invalid("schedule.cron", format!("{expression:?}: {error}"))
        })?;
        let zone = match time_zone {
            "" => chrono_tz::UTC,
            name => name.parse::<chrono_tz::Tz>().map_err(|_| {
                QueueError::invalid(
                    "schedule.time_zone",
                    format!("{name:?} is not an IANA time zone"),
                )
            })?,
        };
        Ok(Self { schedule, zone })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let after = Utc
            .timestamp_millis_opt(after)
            .single()?
            .with_timezone(&self.zone);
        self.schedule
            .after(&after)
            .next()
            .map(|tick| tick.timestamp_millis())
    }
}

/// Checks the numbers in the seconds, minutes and hours fields against their
/// ranges before the cron crate sees them: its own messages for these are off
/// by one ("Minutes must be less than 59" for 60). `normalized` has a seconds
/// field; `added_seconds` says that it was added (the user wrote five).
fn check_cron_ranges(normalized: &str, added_seconds: bool) -> QueueResult<()> {
    let fields = [("seconds", 59), ("minutes", 59), ("hours", 23)];
    for (index, (field, (name, max))) in normalized.split_whitespace().zip(fields).enumerate() {
        if added_seconds && index == 0 {
            continue;
        }
        for part in field.split(',') {
            // A step (`*/N`, `a-b/N`) is not a value of the field.
            let range = part.split('/').next().unwrap_or(part);
            for value in range.split('-') {
                if let Ok(number) = value.parse::<u64>()
                    && number > max
                {
                    return Err(QueueError::invalid(
                        "schedule.cron",
                        format!("{name} field {field:?}: {number} is out of range 0-{max}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions_tick_on_time() {
        let every_minute = CronSchedule::parse("* * * * *", "").expect("valid");
        assert_eq!(every_minute.next_after(90_000), Some(120_000));
        let every_two_seconds = CronSchedule::parse("*/2 * * * * *", "UTC").expect("valid");
        assert_eq!(every_two_seconds.next_after(1_000), Some(2_000));
    }

    #[test]
    fn time_zone_shifts_the_tick() {
        // 09:00 in Berlin (UTC+1 in January) is 08:00 UTC.
        let nine_am = CronSchedule::parse("0 0 9 * * *", "Europe/Berlin").expect("valid");
        let jan_1_2026 = 1_767_225_600_000;
        assert_eq!(
            nine_am.next_after(jan_1_2026),
            Some(jan_1_2026 + 8 * 3_600_000)
        );
    }

    #[test]
    fn out_of_range_values_name_the_field_and_its_true_range() {
        let message = |expression: &str| match CronSchedule::parse(expression, "") {
            Err(QueueError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "schedule.cron");
                reason
            }
            other => panic!("{expression}: expected INVALID_ARGUMENT, got {other:?}"),
        };
        assert!(message("60 * * * *").contains("minutes field \"60\": 60 is out of range 0-59"));
        assert!(message("0 24 * * *").contains("hours field \"24\": 24 is out of range 0-23"));
        assert!(message("0 1-24 * * *").contains("24 is out of range 0-23"));
        assert!(message("60 0 * * * *").contains("seconds field"));
        // The limits themselves and steps are fine.
        for valid in [
            "59 23 * * *",
            "*/59 * * * *",
            "0/30 * * * *",
            "59 59 23 * * *",
        ] {
            CronSchedule::parse(valid, "").unwrap_or_else(|e| panic!("{valid}: {e:?}"));
        }
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        let error = CronSchedule::parse("61 * * * *", "").expect_err("bad minute");
        assert!(
            matches!(error, QueueError::InvalidArgument { ref field, .. } if field == "schedule.cron")
        );
        let error = CronSchedule::parse("* * * * *", "Mars/Olympus").expect_err("bad zone");
        assert!(
            matches!(error, QueueError::InvalidArgument { ref field, .. } if field == "schedule.time_zone")
        );
    }
}
