//! Fuzzing by property tests (cargo-fuzz needs a nightly toolchain this
//! project does not use): arbitrary input into every parser a client or a
//! config reaches — job specs from the wire, cron expressions and time
//! zones, page tokens, log lines to cut — must give a value or a clear
//! error, never a panic. Each property also replays the corpus in
//! `fuzz-corpus/` (inputs that once broke a parser, or sit on an edge).
//! `PROPTEST_CASES=100000 cargo test -p jobq-server fuzz` runs longer.

use proptest::prelude::*;

use crate::domain::{CronSchedule, Defaults, Limits, QueueError};
use crate::grpc::convert;
use jobq_proto::v1 as pb;

/// Lines of a corpus file.
fn corpus(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Any text, tilted toward what breaks parsers: control and invisible
/// characters, multi-byte ones, long runs.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[\\x00-\\x1f\\u{200b}\\u{202e}\\u{feff}a-z0-9 _.:/-]{0,200}",
        "[\\u{80}-\\u{10ffff}]{0,60}",
        Just(String::new()),
        "[a-z]{1,200}",
    ]
}

/// Any protobuf `Value`, nested up to past the depth limit.
fn value() -> impl Strategy<Value = prost_types::Value> {
    use prost_types::value::Kind;
    let leaf = prop_oneof![
        Just(Kind::NullValue(0)),
        any::<i32>().prop_map(Kind::NullValue),
        any::<f64>().prop_map(Kind::NumberValue),
        text().prop_map(Kind::StringValue),
        any::<bool>().prop_map(Kind::BoolValue),
    ]
    .prop_map(|kind| prop_oneof_kind(Some(kind)));
    leaf.prop_recursive(40, 200, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|values| prop_oneof_kind(Some(
                Kind::ListValue(prost_types::ListValue { values })
            ))),
            prop::collection::btree_map(text(), inner, 0..4).prop_map(|fields| {
                prop_oneof_kind(Some(Kind::StructValue(prost_types::Struct { fields })))
            }),
            Just(prop_oneof_kind(None)),
        ]
    })
}

fn prop_oneof_kind(kind: Option<prost_types::value::Kind>) -> prost_types::Value {
    prost_types::Value { kind }
}

fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    prop::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

/// Any job spec a client could send.
fn job_spec() -> impl Strategy<Value = pb::JobSpec> {
    (
        (
            text(),
            text(),
            prop::option::of(value()),
            any::<i32>(),
            any::<i32>(),
        ),
        (timestamp(), duration(), duration(), text(), text()),
        (
            prop::collection::vec(text(), 0..40),
            prop::collection::vec(text(), 0..3),
            text(),
            any::<i32>(),
            prop::option::of((duration(), duration())),
        ),
    )
        .prop_map(
            |(
                (job_type, queue, payload, priority, max_attempts),
                (run_at, delay, timeout, unique_key, traceparent),
                (tags, depends_on, concurrency_key, concurrency_limit, retry),
            )| pb::JobSpec {
                r#type: job_type,
                queue,
                payload,
                priority,
                max_attempts,
                run_at,
                delay,
                timeout,
                unique_key,
                traceparent,
                tags,
                depends_on,
                concurrency_key,
                concurrency_limit,
                retry_policy: retry.map(|(base_backoff, max_backoff)| pb::RetryPolicy {
                    base_backoff,
                    max_backoff,
                }),
                ..pb::JobSpec::default()
            },
        )
}

// 256 cases each by default (a short run in CI); PROPTEST_CASES sets more.
proptest! {
    #[test]
    fn any_job_spec_converts_or_names_the_field(spec in job_spec()) {
        let limits = Limits::default();
        match convert::job_spec(spec, &Defaults::default(), &limits) {
            Ok(spec) => {
                prop_assert!(!spec.job_type.is_empty() && spec.job_type.len() <= 128);
                prop_assert!((-1000..=1000).contains(&spec.priority));
                prop_assert!(spec.payload_bytes as usize <= limits.max_payload_bytes);
            }
            Err(QueueError::InvalidArgument { field, reason }) => {
                prop_assert!(!field.is_empty() && !reason.is_empty());
            }
            Err(other) => prop_assert!(false, "not INVALID_ARGUMENT: {other}"),
        }
    }

    #[test]
    fn any_cron_expression_parses_or_is_refused(
        expression in prop_oneof![text(), "[0-9*/,\\-LW#?A-Z@ ]{0,40}"],
        zone in prop_oneof![text(), "[A-Za-z_/+-]{0,30}"],
        after in any::<i64>(),
    ) {
        check_cron(&expression, &zone, after)?;
    }

    #[test]
    fn any_page_token_is_ours_or_refused(token in prop_oneof![text(), "[0-9a-f]{48}"]) {
        crate::grpc::fuzz_page_token(&token)?;
    }

    #[test]
    fn any_log_line_is_cut_on_a_boundary(message in text(), max in 0usize..300) {
        crate::logs::fuzz_cut(message, max)?;
    }
}

fn check_cron(expression: &str, zone: &str, after: i64) -> Result<(), TestCaseError> {
    match CronSchedule::parse(expression, zone) {
        Ok(schedule) => {
            if let Some(next) = schedule.next_after(after) {
                prop_assert!(
                    next > after,
                    "{expression:?} in {zone:?}: {next} after {after}"
                );
            }
        }
        Err(QueueError::InvalidArgument { reason, .. }) => prop_assert!(!reason.is_empty()),
        Err(other) => prop_assert!(false, "not INVALID_ARGUMENT: {other}"),
    }
    Ok(())
}

#[test]
fn the_corpus_parses_or_is_refused() {
    let zones = corpus("time-zones.txt");
    for expression in corpus("cron.txt") {
        for zone in &zones {
            for after in [
                i64::MIN,
                -1,
                0,
                1_764_547_200_000,
                253_402_300_799_999,
                i64::MAX,
            ] {
                if let Err(error) = check_cron(&expression, zone, after) {
                    panic!("{expression:?} in {zone:?} after {after}: {error}");
                }
            }
        }
    }
    for token in corpus("page-tokens.txt") {
        if let Err(error) = crate::grpc::fuzz_page_token(&token) {
            panic!("{token:?}: {error}");
        }
    }
}
