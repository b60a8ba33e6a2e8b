//! Property tests: nothing a producer sends makes the decoder or the engine panic, and
//! every message gets exactly one counted outcome.

use pipewatch::config::Settings;
use pipewatch::decode::{decode, DecodeLimits};
use pipewatch::engine::{Engine, Outcome, Outputs};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const NOW: i64 = 1_795_000_000_000;

fn limits() -> DecodeLimits {
    DecodeLimits::new(65_536, NOW, 300_000)
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN", |x| x.is_finite())
            .prop_map(|x| json!(x)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A quality figure: usually ordinary, sometimes extreme or beyond the accepted range.
fn figure() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => (0.0f64..1.0).prop_map(|x| json!(x)),
        1 => (-1e15f64..1e15).prop_map(|x| json!(x)),
        1 => prop_oneof![Just(1e200), Just(-1e300), Just(f64::MAX)].prop_map(|x| json!(x)),
    ]
}

/// An event-shaped object whose fields are sometimes right and sometimes anything.
fn event_like() -> impl Strategy<Value = Value> {
    let field = |good: BoxedStrategy<Value>| {
        prop_oneof![3 => good, 1 => any_json(), 1 => Just(Value::Null)].boxed()
    };
    let name = || "[a-z_/<>\"\\\\]{1,20}".prop_map(Value::String).boxed();
    let count = || (0u64..1_000_000).prop_map(|n| json!(n)).boxed();
    let ts = || {
        prop_oneof![
            (NOW - 86_400_000..NOW + 86_400_000).prop_map(|n| json!(n)),
            Just(json!("2026-11-17T10:00:00Z")),
            Just(json!("2026-11-17T10:00:00.123+02:00")),
        ]
        .boxed()
    };
    (
        field(name()),
        field(name()),
        field(ts()),
        field(count()),
        field(count()),
        field(count()),
        field((0.0f64..1e6).prop_map(|x| json!(x)).boxed()),
        field(
            prop::collection::btree_map("[a-z]{1,8}", figure(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed(),
        ),
        field((0u32..50).prop_map(|n| json!(format!("id-{n}"))).boxed()),
        prop::collection::vec(any::<bool>(), 9),
    )
        .prop_map(|(p, s, t, rin, rout, err, dur, q, id, present)| {
            let mut m = Map::new();
            let fields = [
                ("pipeline", p),
                ("stage", s),
                ("timestamp", t),
                ("records_in", rin),
                ("records_out", rout),
                ("errors", err),
                ("duration_ms", dur),
                ("quality", q),
                ("event_id", id),
            ];
            for ((k, v), keep) in fields.into_iter().zip(present) {
                if keep {
                    m.insert(k.to_string(), v);
                }
            }
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &limits());
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Err(r) = decode(&bytes, &limits()) {
            prop_assert!(!r.to_string().is_empty());
        }
    }

    #[test]
    fn valid_events_keep_their_invariants(value in event_like()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        match decode(&bytes, &limits()) {
            Ok(e) => {
                prop_assert!(!e.pipeline.is_empty() && e.pipeline.chars().count() <= 128);
                prop_assert!(!e.stage.is_empty());
                prop_assert!(e.timestamp_ms <= NOW + 300_000);
                prop_assert!(e.duration_ms.is_none_or(|d| d.is_finite() && d >= 0.0));
                prop_assert!(e.quality.iter().all(|(_, x)| x.is_finite()));
            }
            Err(r) => prop_assert!(r.field.is_some() || value.as_object().is_none()),
        }
    }

}

proptest! {
    // Each case runs a whole engine over up to two days of buckets: fewer cases.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_gives_every_message_one_counted_outcome(
        values in prop::collection::vec(event_like(), 1..200)
    ) {
        let mut engine = Engine::new(&Settings::defaults(), true);
        let mut out = Outputs::default();
        let (mut applied, mut late, mut dup, mut limit, mut invalid) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for v in &values {
            match engine.ingest(&serde_json::to_vec(v).unwrap(), NOW, &mut out) {
                Outcome::Applied => applied += 1,
                Outcome::Late => late += 1,
                Outcome::Duplicate => dup += 1,
                Outcome::StageLimit => limit += 1,
                Outcome::Invalid(_) => invalid += 1,
            }
        }
        engine.finish(&mut out);
        let s = engine.stats();
        prop_assert_eq!((s.applied, s.late, s.duplicate, s.stage_limit, s.invalid_total()), (applied, late, dup, limit, invalid));
        prop_assert_eq!(applied + late + dup + limit + invalid, values.len() as u64);
        // Every number pipewatch reports is finite. A forced resolution (detector
        // "none") has no observation, and says so with nulls.
        for a in out.alerts.iter().filter(|a| a.detector != "none") {
            for x in [a.value, a.expected, a.lower, a.upper, a.score] {
                prop_assert!(x.is_finite(), "{a:?}");
            }
        }
        for row in &out.scores {
            for x in [row.value, row.expected, row.lower, row.upper, row.score].into_iter().flatten() {
                prop_assert!(x.is_finite(), "{row:?}");
            }
        }
    }
}
