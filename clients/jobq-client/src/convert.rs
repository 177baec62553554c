//! Conversions between protobuf types and std and serde_json ones.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::value::Kind;

/// A JSON value as a protobuf `Value` (what payloads and results are on the wire).
pub fn proto_value(json: serde_json::Value) -> prost_types::Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(proto_value).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(proto_struct(fields)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct` (log line fields).
pub fn proto_struct(fields: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .into_iter()
            .map(|(key, value)| (key, proto_value(value)))
            .collect(),
    }
}

/// A protobuf `Value` as JSON. Whole numbers come back as integers; numbers
/// JSON cannot hold (NaN, infinities) as null.
pub fn json_value(value: &prost_types::Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 => {
            serde_json::Value::from(*n as i64)
        }
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(json_value).collect())
        }
        Some(Kind::StructValue(object)) => json_object(object),
    }
}

/// A protobuf `Struct` as a JSON object.
pub fn json_object(object: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        object
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), json_value(value)))
            .collect(),
    )
}

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
    fn json_round_trips_through_protobuf_values() {
        let json = serde_json::json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}});
        assert_eq!(json_value(&proto_value(json.clone())), json);
    }

    #[test]
    fn durations_keep_their_nanos() {
        let duration = proto_duration(Duration::from_millis(1500));
        assert_eq!((duration.seconds, duration.nanos), (1, 500_000_000));
    }
}
