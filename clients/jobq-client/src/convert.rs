//! Conversions between protobuf time types and std ones.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A protobuf duration of `duration` (saturating at `i64::MAX` seconds).
pub fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf timestamp of `time` (times before 1970 are clamped to the epoch).
pub fn proto_timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    }
}

/// The std time of a protobuf timestamp; `None` when it is out of range.
pub fn system_time(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(timestamp.seconds).ok()?;
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// How far in the future `timestamp` is; zero when it has passed.
pub(crate) fn until(timestamp: &prost_types::Timestamp) -> Option<Duration> {
    let at = system_time(timestamp)?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 123_000_000);
        assert_eq!(system_time(&proto_timestamp(time)), Some(time));
    }

    #[test]
    fn negative_timestamps_are_out_of_range() {
        let timestamp = prost_types::Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(system_time(&timestamp), None);
    }

    #[test]
    fn durations_keep_their_nanos() {
        let duration = proto_duration(Duration::from_millis(1500));
        assert_eq!((duration.seconds, duration.nanos), (1, 500_000_000));
    }
}
