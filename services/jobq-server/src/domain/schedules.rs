//! Cron schedules: each tick enqueues one job from the schedule's template,
//! exactly once however many replicas run the scheduler.

use super::admission::{MissedTicks, tick_missed};
use super::clock::Millis;
use super::control::{CronSchedule, ScheduleRecord};
use super::error::{QueueError, QueueResult};
use super::job::{Job, JobSpec};
use super::queue::{JobQueue, new_job};

/// A schedule as a client defines it.
#[derive(Debug, Clone)]
pub struct ScheduleDefinition {
    /// Unique name.
    pub name: String,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone; empty: UTC.
    pub time_zone: String,
    /// The job each tick enqueues.
    pub template: JobSpec,
    /// Starts paused.
    pub paused: bool,
    /// What ticks missed while no scheduler ran do.
    pub missed_ticks: MissedTicks,
}

impl JobQueue {
    /// Creates or replaces a schedule; its next tick is counted from now.
    pub async fn put_schedule(
        &self,
        definition: ScheduleDefinition,
    ) -> QueueResult<ScheduleRecord> {
        let cron = CronSchedule::parse(&definition.cron, &definition.time_zone)?;
        if !definition.template.depends_on.is_empty() {
            return Err(QueueError::invalid(
                "schedule.job.depends_on",
                "a scheduled job cannot depend on other jobs",
            ));
        }
        let now = self.now();
        let next_run_at = cron
            .next_after(now)
            .ok_or_else(|| QueueError::invalid("schedule.cron", "never fires again"))?;
        let existing = self.store.schedule(&definition.name).await?;
        let record = ScheduleRecord {
            name: definition.name,
            cron: definition.cron,
            time_zone: definition.time_zone,
            template: definition.template,
            paused: definition.paused,
            missed_ticks: definition.missed_ticks,
            next_run_at,
            last_run_at: existing.as_ref().and_then(|old| old.last_run_at),
            last_job_id: existing.as_ref().and_then(|old| old.last_job_id.clone()),
            created_at: existing.as_ref().map_or(now, |old| old.created_at),
            updated_at: now,
        };
        self.store.put_schedule(&record).await?;
        Ok(record)
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> QueueResult<Vec<ScheduleRecord>> {
        self.store.schedules().await
    }

    /// Pauses or resumes a schedule. A resumed schedule's next tick is counted from now.
    pub async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> QueueResult<ScheduleRecord> {
        let mut record = self
            .store
            .schedule(name)
            .await?
            .ok_or_else(|| QueueError::ScheduleNotFound(name.to_owned()))?;
        let now = self.now();
        if record.paused && !paused {
            let cron = CronSchedule::parse(&record.cron, &record.time_zone)?;
            record.next_run_at = cron.next_after(now).unwrap_or(record.next_run_at);
        }
        record.paused = paused;
        record.updated_at = now;
        self.store.put_schedule(&record).await?;
        Ok(record)
    }

    /// Deletes a schedule.
    pub async fn delete_schedule(&self, name: &str) -> QueueResult<()> {
        if self.store.delete_schedule(name).await? {
            Ok(())
        } else {
            Err(QueueError::ScheduleNotFound(name.to_owned()))
        }
    }

    /// The scheduler's pass: fires every due schedule once. Returns the jobs enqueued.
    pub async fn fire_due_schedules(&self) -> QueueResult<Vec<Job>> {
        let now = self.now();
        let started_at = self.started_at;
        let mut fired = Vec::new();
        for name in self.store.due_schedules(now).await? {
            let fire = Box::new(
                move |record: &ScheduleRecord| -> QueueResult<(Option<Job>, Millis)> {
                    let cron = CronSchedule::parse(&record.cron, &record.time_zone)?;
                    // However many ticks passed, the next one is after now.
                    let next = cron.next_after(now).unwrap_or(i64::MAX);
                    if record.missed_ticks == MissedTicks::Skip
                        && tick_missed(record.next_run_at, now, started_at)
                    {
                        return Ok((None, next));
                    }
                    let mut spec = record.template.clone();
                    spec.schedule_name = Some(record.name.clone());
                    spec.run_at = None;
                    Ok((Some(new_job(spec, now)), next))
                },
            );
            match self.store.fire_schedule(&name, now, fire).await {
                Ok(Some(job)) => {
                    self.after_created(&[&job]).await;
                    fired.push(job);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, schedule = %name, "schedule tick failed"),
            }
        }
        Ok(fired)
    }
}
