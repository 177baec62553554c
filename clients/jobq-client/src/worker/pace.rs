//! How many jobs a worker leases ahead of its free slots.
//!
//! A slot that frees up waits a whole LeaseJobs round trip for its next job
//! unless that job was leased already. By Little's law, the jobs that end
//! during one round trip are `slots × round trip ÷ run time`: leasing that
//! many ahead keeps every slot fed. Short jobs (milliseconds) get up to the
//! configured most; long jobs (seconds and up) get none, so a worker never
//! sits on a job that another worker could start now.

use std::time::Duration;

/// Weight of the newest sample in the moving averages.
const SMOOTHING: f64 = 0.2;
/// A long poll that waited for work says nothing about the round trip.
const LONGEST_ROUND_TRIP: Duration = Duration::from_millis(250);

/// Moving averages of how long jobs run and how long a lease takes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pace {
    run_secs: Option<f64>,
    round_trip_secs: Option<f64>,
}

fn smooth(average: &mut Option<f64>, sample: f64) {
    *average = Some(match *average {
        Some(old) => old + SMOOTHING * (sample - old),
        None => sample,
    });
}

impl Pace {
    /// A job held its slot for `took`.
    pub fn job_ran(&mut self, took: Duration) {
        smooth(&mut self.run_secs, took.as_secs_f64());
    }

    /// A LeaseJobs call that found work answered after `took`.
    pub fn lease_answered(&mut self, took: Duration) {
        if took <= LONGEST_ROUND_TRIP {
            smooth(&mut self.round_trip_secs, took.as_secs_f64());
        }
    }

    /// A job leased ahead waited `waited` without getting one of `slots`:
    /// the jobs running now take at least `slots × waited` between them.
    pub fn held_too_long(&mut self, waited: Duration, slots: usize) {
        let at_least = waited.as_secs_f64() * slots as f64;
        self.run_secs = Some(self.run_secs.map_or(at_least, |run| run.max(at_least)));
    }

    /// Jobs to hold beyond `slots` running ones, at most `most`; none until
    /// both a job and a lease have been timed.
    pub fn ahead(&self, slots: usize, most: usize) -> usize {
        let (Some(run), Some(round_trip)) = (self.run_secs, self.round_trip_secs) else {
            return 0;
        };
        let ending_per_round_trip = slots as f64 * round_trip / run.max(1e-6);
        // Rounded: a fraction of a job per round trip is not worth holding one.
        (ending_per_round_trip.round() as usize).min(most)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(run: Duration, round_trip: Duration) -> Pace {
        let mut pace = Pace::default();
        pace.job_ran(run);
        pace.lease_answered(round_trip);
        pace
    }

    #[test]
    fn nothing_ahead_before_anything_was_timed() {
        assert_eq!(Pace::default().ahead(32, 32), 0);
        let mut only_jobs = Pace::default();
        only_jobs.job_ran(Duration::from_micros(10));
        assert_eq!(only_jobs.ahead(32, 32), 0);
    }

    #[test]
    fn short_jobs_fill_the_slots_ending_during_a_round_trip() {
        // 4 slots, 1 ms jobs, 2 ms leases: 8 jobs end per round trip.
        let pace = timed(Duration::from_millis(1), Duration::from_millis(2));
        assert_eq!(pace.ahead(4, 100), 8);
        // Never more than the most allowed.
        assert_eq!(pace.ahead(4, 5), 5);
        assert_eq!(pace.ahead(4, 0), 0);
    }

    #[test]
    fn long_jobs_hold_none_ahead() {
        // 32 slots, 10 s jobs, 2 ms leases: 0.0064 jobs end per round trip.
        let pace = timed(Duration::from_secs(10), Duration::from_millis(2));
        assert_eq!(pace.ahead(32, 32), 0);
        let pace = timed(Duration::from_secs(600), Duration::from_millis(1));
        assert_eq!(pace.ahead(1, 32), 0);
    }

    #[test]
    fn a_long_poll_that_waited_is_not_a_round_trip() {
        let mut pace = timed(Duration::from_millis(1), Duration::from_millis(1));
        pace.lease_answered(Duration::from_secs(20));
        assert_eq!(pace.ahead(2, 100), 2);
    }

    #[test]
    fn a_job_held_too_long_stops_leasing_ahead() {
        let mut pace = timed(Duration::from_millis(1), Duration::from_millis(2));
        assert_eq!(pace.ahead(4, 100), 8);
        pace.held_too_long(Duration::from_secs(1), 4);
        assert_eq!(pace.ahead(4, 100), 0);
        // Short jobs again bring it back.
        for _ in 0..60 {
            pace.job_ran(Duration::from_millis(1));
        }
        assert_eq!(pace.ahead(4, 100), 8);
    }

    #[test]
    fn the_averages_follow_a_change_of_job_length() {
        let mut pace = timed(Duration::from_millis(1), Duration::from_millis(2));
        assert_eq!(pace.ahead(10, 100), 20);
        for _ in 0..50 {
            pace.job_ran(Duration::from_secs(5));
        }
        assert_eq!(pace.ahead(10, 100), 0);
    }
}
