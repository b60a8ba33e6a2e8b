//! Property tests: nothing a producer sends makes the decoder or the engine panic, and
//! every message gets exactly one counted outcome.

use pipewatch::config::Settings;
use pipewatch::decode::{
    decode, decode_with_serde, scan, DecodeLimits, MAX_NAME_LEN, MAX_UPSTREAM,
};
use pipewatch::engine::{Engine, Outcome, Outputs, ScoreRows};
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
        field(
            prop::collection::vec(name(), 0..4)
                .prop_map(Value::Array)
                .boxed(),
        ),
        prop::collection::vec(any::<bool>(), 10),
    )
        .prop_map(|(p, s, t, rin, rout, err, dur, q, id, up, present)| {
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
                ("upstream", up),
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
                prop_assert!(e.upstream.len() <= MAX_UPSTREAM);
                prop_assert_eq!(e.upstream.is_empty(), e.upstream.names().next().is_none());
                for n in e.upstream.names() {
                    prop_assert!(!n.is_empty() && n.chars().count() <= MAX_NAME_LEN, "{:?}", n);
                }
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
        let mut engine = Engine::new(&Settings::defaults(), ScoreRows::All);
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

// The fast path (`decode::scan`) against the serde path it stands in front of. Texts are
// built as text, not through serde_json, so that they have what serializers never write:
// whitespace anywhere, escapes, numbers in every form, invalid JSON, duplicate keys.

/// Whitespace between tokens: usually none, as producers write it.
fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => Just(""), 1 => Just(" "), 1 => Just("\n\t"), 1 => Just("\r\n  ")]
}

/// A JSON number as text, valid or not: signs, leading zeros, fractions, exponents,
/// integers beyond u64, values beyond f64 and beyond 2^53.
fn number_text() -> impl Strategy<Value = String> {
    let int = prop_oneof![
        3 => "[1-9][0-9]{0,5}",
        2 => Just("0".to_string()),
        2 => "[1-9][0-9]{12,24}",
        1 => "0[0-9]{1,3}",
        1 => Just(String::new()),
    ];
    let formed = (
        prop_oneof![4 => Just(""), 1 => Just("-"), 1 => Just("+")],
        int,
        prop_oneof![3 => Just(String::new()), 3 => "\\.[0-9]{1,8}", 1 => "\\.[0-9]{9,25}", 1 => Just(".".to_string())],
        prop_oneof![6 => Just(String::new()), 1 => "[eE][+-]?[0-9]{1,3}", 1 => "[eE][+-]?[0-9]{0,6}"],
    )
        .prop_map(|(sign, int, frac, exp)| format!("{sign}{int}{frac}{exp}"));
    prop_oneof![
        8 => formed,
        1 => prop::sample::select(vec![
            "-0", "-0.0", "0e5", "1e22", "1e23", "9007199254740992.0", "9007199254740993.0",
            "18446744073709551615", "18446744073709551616", "1e999", "-1e999", "1e-400",
            "0.1e-22", "123456789012345678.9", "1793491200000", "1793491200000.0",
            "1793491200000e0", "4.9e-324", "1.7976931348623157e308", "1e15", "1000000000000.5",
        ])
        .prop_map(String::from),
        2 => any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| x.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// A JSON string as text: plain, escaped, non-ASCII, control characters, invalid escapes,
/// empty, or too long.
fn string_text() -> impl Strategy<Value = String> {
    let content = prop_oneof![
        40 => "[a-z_0-9-]{1,12}",
        1 => Just(String::new()),
        1 => "[a-z]{0,4}(\\\\[\"\\\\/bfnrt]|\\\\u00e9|\\\\u0041|\\\\q|\\\\u12)[a-z]{0,4}",
        1 => "[a-zé€😀]{1,6}",
        1 => "[a-z]{0,3}[\u{1}\u{1f}\t][a-z]{0,3}",
        1 => "[a-z]{127,130}",
        1 => "[é]{100,130}",
    ];
    content.prop_map(|c| format!("\"{c}\""))
}

/// A number that is usually valid JSON and converts exactly, in any of its forms.
fn decimal_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,7})?([eE][+-]?[0-9]{1,2})?",
        1 => number_text(),
    ]
}

fn timestamp_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (1_700_000_000_000i64..1_900_000_000_000).prop_map(|n| n.to_string()),
        4 => (2000u32..2200, 1u32..13, 1u32..32, 0u32..24, 0u32..60, 0u32..61, "(\\.[0-9]{1,10})?", prop_oneof![8 => Just("Z"), 1 => Just("z"), 1 => Just("+02:00"), 1 => Just("-00:30"), 1 => Just("")])
            .prop_map(|(y, mo, d, h, mi, s, frac, z)| {
                format!("\"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{z}\"")
            }),
        1 => Just("\"2026-11-17T10:00:00Z\"".to_string()),
        1 => number_text(),
        1 => string_text(),
    ]
}

/// A container value as text, from the value strategy given.
fn array_text(item: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    (prop::collection::vec(item, 0..4), ws())
        .prop_map(|(items, ws)| format!("[{ws}{}{ws}]", items.join(&format!("{ws},{ws}"))))
}

fn object_text(
    key: BoxedStrategy<String>,
    value: BoxedStrategy<String>,
) -> impl Strategy<Value = String> {
    (prop::collection::vec((key, value), 0..4), ws()).prop_map(|(entries, ws)| {
        let entries: Vec<String> = entries
            .into_iter()
            .map(|(k, v)| format!("{k}{ws}:{ws}{v}"))
            .collect();
        format!("{{{ws}{}{ws}}}", entries.join(&format!("{ws},{ws}")))
    })
}

/// Any value as text, for a field to get the wrong kind.
fn any_value_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("nul".to_string()),
        number_text(),
        string_text(),
        array_text(string_text().boxed()),
        object_text(string_text().boxed(), number_text().boxed()),
    ]
    .boxed()
}

/// The value of field `key` as text, always valid for it (`clean`) or usually.
fn field_text(key: &'static str, clean: bool) -> BoxedStrategy<String> {
    if clean {
        return clean_field_text(key);
    }
    let right: BoxedStrategy<String> = match key {
        "timestamp" => timestamp_text().boxed(),
        "status" => prop_oneof![
            4 => prop::sample::select(vec!["\"success\"", "\"failure\"", "\"retry\"", "\"skipped\""]).prop_map(String::from),
            1 => string_text(),
        ]
        .boxed(),
        "records_in" | "records_out" | "records_rejected" | "bytes" | "errors" => prop_oneof![
            6 => (0u64..1_000_000).prop_map(|n| n.to_string()),
            1 => number_text(),
        ]
        .boxed(),
        "duration_ms" => prop_oneof![
            2 => (0.0f64..1e4).prop_map(|x| x.to_string()),
            2 => (0u32..100_000, 0u32..10).prop_map(|(a, b)| format!("{a}.{b}")),
            3 => decimal_text(),
        ]
        .boxed(),
        "quality" => object_text(
            prop_oneof![8 => "\"[a-z_]{1,12}\"", 2 => Just("\"null_rate\"".to_string()), 1 => string_text()].boxed(),
            prop_oneof![
                6 => (0.0f64..1.0).prop_map(|x| x.to_string()),
                2 => (0u32..1000).prop_map(|n| n.to_string()),
                6 => decimal_text(),
                1 => any_value_text(),
            ]
            .boxed(),
        )
        .boxed(),
        "upstream" => array_text(prop_oneof![20 => string_text(), 1 => any_value_text()].boxed()).boxed(),
        "attributes" => object_text(string_text().boxed(), prop_oneof![20 => string_text(), 1 => any_value_text()].boxed()).boxed(),
        _ => string_text().boxed(),
    };
    prop_oneof![40 => right, 1 => Just("null".to_string()), 1 => any_value_text()].boxed()
}

/// A value event decoding accepts for field `key`, in any of the forms JSON allows; the
/// fast path declines some (escapes, non-ASCII, exponents beyond 1e22), never wrongly.
fn clean_field_text(key: &'static str) -> BoxedStrategy<String> {
    let plain = || {
        prop_oneof![
            30 => "\"[a-z_0-9-]{1,12}\"",
            1 => "\"[a-z]{0,4}(\\\\[\"\\\\/bfnrt]|\\\\u00e9)[a-z]{0,4}\"",
            1 => "\"[a-zé€😀]{1,6}\"",
        ]
    };
    // Non-negative, with fractions and exponents; negative ones sometimes.
    let decimal = || {
        prop_oneof![
            8 => "(0|[1-9][0-9]{0,5})(\\.[0-9]{1,7})?([eE][+-]?[0-9])?",
            1 => "-(0|[1-9][0-9]{0,5})(\\.[0-9]{1,7})?([eE][+-]?[0-9]{1,2})?",
        ]
    };
    match key {
        "timestamp" => prop_oneof![
            (1_700_000_000_000i64..1_900_000_000_000).prop_map(|n| n.to_string()),
            (
                2000u32..2200,
                1u32..13,
                1u32..29,
                0u32..24,
                0u32..60,
                0u32..60,
                "(\\.[0-9]{1,9})?",
                prop_oneof![8 => Just("Z"), 1 => Just("+02:00")]
            )
                .prop_map(|(y, mo, d, h, mi, s, frac, z)| {
                    format!("\"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{z}\"")
                }),
        ]
        .boxed(),
        "status" => prop::sample::select(vec![
            "\"success\"",
            "\"failure\"",
            "\"retry\"",
            "\"skipped\"",
            "null",
        ])
        .prop_map(String::from)
        .boxed(),
        "records_in" | "records_out" | "records_rejected" | "bytes" | "errors" => prop_oneof![
            8 => (0u64..1_000_000).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => Just("null".to_string()),
        ]
        .boxed(),
        "duration_ms" => prop_oneof![8 => decimal(), 1 => "[0-9]{1,6}"].boxed(),
        "quality" => object_text(
            prop_oneof![20 => "\"[a-z_]{1,12}\"", 1 => Just("\"null_rate\"".to_string())].boxed(),
            prop_oneof![4 => decimal(), 1 => "[0-9]{1,6}"].boxed(),
        )
        .boxed(),
        "upstream" => array_text(plain().boxed()).boxed(),
        "attributes" => object_text(plain().boxed(), plain().boxed()).boxed(),
        _ => plain().boxed(),
    }
}

const KEYS: [&str; 15] = [
    "pipeline",
    "stage",
    "timestamp",
    "event_id",
    "correlation_id",
    "status",
    "records_in",
    "records_out",
    "records_rejected",
    "bytes",
    "duration_ms",
    "errors",
    "quality",
    "upstream",
    "attributes",
];

/// An event-shaped text: the known fields in the schema's order or shuffled, some
/// missing, some twice, unknown and escaped keys among them, whitespace anywhere.
fn event_text() -> impl Strategy<Value = String> {
    any::<bool>().prop_flat_map(event_text_of)
}

fn event_text_of(clean: bool) -> impl Strategy<Value = String> {
    let fields: Vec<BoxedStrategy<(String, String)>> = KEYS
        .iter()
        .map(|&k| {
            field_text(k, clean)
                .prop_map(move |v| (format!("\"{k}\""), v))
                .boxed()
        })
        .collect();
    let extra = (
        prop_oneof![
            Just("\"extra\"".to_string()),
            Just("\"pipelin\\u0065\"".to_string()),
            Just("\"Stage\"".to_string()),
            Just("\"\"".to_string()),
            prop::sample::select(KEYS.to_vec()).prop_map(|k| format!("\"{k}\"")),
        ],
        any_value_text(),
    );
    (
        fields,
        prop::collection::vec(prop::bool::weighted(0.9), KEYS.len()),
        prop::collection::vec(extra, 0..if clean { 1 } else { 3 }),
        any::<bool>(),
        any::<prop::sample::Index>(),
        ws(),
        ws(),
    )
        .prop_flat_map(|(fields, keep, extra, shuffle, at, ws, edge)| {
            let mut entries: Vec<(String, String)> = fields
                .into_iter()
                .zip(keep)
                .filter_map(|(f, k)| k.then_some(f))
                .collect();
            for e in extra {
                entries.insert(at.index(entries.len() + 1), e);
            }
            let entries = if shuffle {
                Just(entries).prop_shuffle().boxed()
            } else {
                Just(entries).boxed()
            };
            entries.prop_map(move |entries| {
                let members: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{k}{ws}:{ws}{v}"))
                    .collect();
                format!(
                    "{edge}{{{ws}{}{ws}}}{edge}",
                    members.join(&format!("{ws},{ws}"))
                )
            })
        })
}

/// The fast path may decline anything, but what it accepts it must decode exactly as the
/// serde path does (compared through `Debug`, which tells -0.0 from 0.0), and `decode`
/// must answer exactly as the serde path alone does.
fn same_as_serde(text: &str) -> Result<(), TestCaseError> {
    let bytes = text.as_bytes();
    let unlimited = DecodeLimits::new(usize::MAX, i64::MAX, 0);
    if let Some(fast) = std::str::from_utf8(bytes).ok().and_then(scan::event) {
        match decode_with_serde(bytes, &unlimited) {
            Ok(slow) => {
                prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{}", text);
                // The two paths hold upstream names differently (the text, a list):
                // equal all the same, name by name.
                prop_assert_eq!(&fast.upstream, &slow.upstream, "{}", text);
                prop_assert_eq!(
                    fast.upstream.names().collect::<Vec<_>>(),
                    slow.upstream.names().collect::<Vec<_>>()
                );
                prop_assert_eq!(fast.upstream.len(), slow.upstream.len());
            }
            Err(r) => prop_assert!(false, "fast path accepted what serde refuses ({r}): {text}"),
        }
    }
    for limits in [limits(), unlimited] {
        let (fast, slow) = (decode(bytes, &limits), decode_with_serde(bytes, &limits));
        prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{}", text);
    }
    Ok(())
}

/// An upstream name as JSON text, and the name it stands for: usually plain, sometimes
/// with characters escaped (`\"`, `\\`, `\/`, or `\u` escapes, surrogate pairs beyond
/// the BMP).
fn upstream_name() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![6 => "[a-z_0-9-]{1,12}", 1 => "[a-zé€😀\"\\\\/ ]{1,8}"],
        prop_oneof![3 => Just(0u64), 1 => any::<u64>()],
        any::<u64>(),
    )
        .prop_map(|(name, escape, short)| {
            let mut text = String::from("\"");
            for (i, c) in name.chars().enumerate() {
                let bit = |bits: u64| bits >> (i % 64) & 1 == 1;
                if !(c == '"' || c == '\\' || bit(escape)) {
                    text.push(c);
                } else if matches!(c, '"' | '\\' | '/') && bit(short) {
                    text.push('\\');
                    text.push(c);
                } else {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        text.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
            text.push('"');
            (text, name)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    /// Upstream names absent, `null`, `[]` or listed, escaped or not, in the schema's
    /// place or first: both paths give back exactly the names written, in order.
    #[test]
    fn upstream_names_come_back_as_written(
        names in prop::collection::vec(upstream_name(), 0..6),
        form in prop::sample::select(vec!["absent", "null", "array"]),
        first in any::<bool>(),
        ws in ws(),
    ) {
        let items: Vec<&str> = names.iter().map(|(text, _)| text.as_str()).collect();
        let value = match form {
            "absent" => None,
            "null" => Some("null".to_string()),
            _ => Some(format!("[{ws}{}{ws}]", items.join(&format!("{ws},{ws}")))),
        };
        let base = r#""pipeline":"p","stage":"s","timestamp":1793491200000"#;
        let text = match (&value, first) {
            (None, _) => format!("{{{base}}}"),
            (Some(v), true) => format!(r#"{{"upstream":{ws}{v},{base}}}"#),
            (Some(v), false) => format!(r#"{{{base},"upstream":{ws}{v}}}"#),
        };
        let expected: Vec<&str> = match form {
            "array" => names.iter().map(|(_, name)| name.as_str()).collect(),
            _ => Vec::new(),
        };
        for e in [decode(text.as_bytes(), &limits()), decode_with_serde(text.as_bytes(), &limits())] {
            let e = e.map_err(|r| TestCaseError::fail(format!("{r}: {text}")))?;
            prop_assert_eq!(e.upstream.names().collect::<Vec<_>>(), expected.clone(), "{}", text);
            prop_assert_eq!(e.upstream.len(), expected.len());
            prop_assert_eq!(e.upstream.is_empty(), expected.is_empty());
        }
        // Without escapes, this is the plain shape the fast path is for.
        if !text.contains('\\') {
            prop_assert!(scan::event(&text).is_some(), "the fast path declined {}", text);
        }
        same_as_serde(&text)?;
    }

    #[test]
    fn fast_path_agrees_on_event_texts(text in event_text()) {
        same_as_serde(&text)?;
    }

    #[test]
    fn fast_path_agrees_on_serialized_events(value in event_like()) {
        same_as_serde(&serde_json::to_string(&value).unwrap())?;
        same_as_serde(&serde_json::to_string_pretty(&value).unwrap())?;
    }

    #[test]
    fn fast_path_agrees_on_any_json(value in any_json()) {
        same_as_serde(&serde_json::to_string(&value).unwrap())?;
    }

    #[test]
    fn fast_path_agrees_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let unlimited = DecodeLimits::new(usize::MAX, i64::MAX, 0);
        let (fast, slow) = (decode(&bytes, &unlimited), decode_with_serde(&bytes, &unlimited));
        prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
    }
}

#[test]
fn fast_path_takes_the_simulated_events() {
    let mut sim = pipewatch::simulate::Simulation::new(pipewatch::simulate::SimOptions::default())
        .expect("default options are valid");
    for bytes in sim.events().take(20_000) {
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(scan::event(text).is_some(), "declined {text}");
        same_as_serde(text).unwrap();
    }
}

/// Each limit, just within and just beyond, and each field's `null`.
#[test]
fn fast_path_agrees_at_the_limits() {
    let base = r#""pipeline":"p","stage":"s""#;
    let mut texts = Vec::new();
    for ts in [
        "946684799999",
        "946684800000",
        "7258118399999",
        "7258118400000",
        "\"1999-12-31T23:59:59.999Z\"",
        "\"2000-01-01T00:00:00Z\"",
        "\"2199-12-31T23:59:59.999999999Z\"",
        "\"2200-01-01T00:00:00Z\"",
        "9223372036854775807",
        "9223372036854775808",
        // The scanner's own reading of the two common shapes, and near misses of them.
        "\"2026-11-24T03:00:00.250Z\"",
        "\"2026-11-24T03:00:00Z\"",
        "\"2026-02-30T03:00:00Z\"",
        "\"2024-02-29T23:59:59.999Z\"",
        "\"2026-11-24T03:00:00.250z\"",
        "\"2026-11-24T03:00:00.2Z\"",
        "\"2026-11-24T03:00:00.2500Z\"",
        "\"2026-11-24T03:00:00.25\\u005a\"",
        "\"2026-11-24T03:00:00+01:00\"",
        "\"2026-11-24T03:00:00.250Z",
        "\"2026-11-24T03:00:00Z",
        "\"2026-11-24 03:00:00.250Z\"",
        "\"2026-11-24T03:0a:00.250Z\"",
    ] {
        texts.push(format!(r#"{{{base},"timestamp":{ts}}}"#));
    }
    let with = |field: &str, value: String| {
        format!(r#"{{{base},"timestamp":1793491200000,"{field}":{value}}}"#)
    };
    for (field, limit) in [
        ("event_id", 128),
        ("correlation_id", 256),
        ("status", 7),
        ("upstream", 128),
    ] {
        for n in [limit, limit + 1] {
            let s = format!("\"{}\"", "x".repeat(n));
            texts.push(with(
                field,
                if field == "upstream" {
                    format!("[{s}]")
                } else {
                    s
                },
            ));
        }
    }
    for n in [128, 129] {
        texts.push(format!(
            r#"{{"pipeline":"{}","stage":"s","timestamp":1793491200000}}"#,
            "x".repeat(n)
        ));
        texts.push(with("quality", format!(r#"{{"{}":1}}"#, "q".repeat(n))));
        texts.push(with(
            "attributes",
            format!(r#"{{"{}":"v"}}"#, "k".repeat(n)),
        ));
    }
    for n in [1024, 1025] {
        texts.push(with(
            "attributes",
            format!(r#"{{"k":"{}"}}"#, "v".repeat(n)),
        ));
    }
    for n in [64, 65] {
        let list = |item: &dyn Fn(usize) -> String| (0..n).map(item).collect::<Vec<_>>().join(",");
        texts.push(with(
            "quality",
            format!("{{{}}}", list(&|i| format!(r#""q{i}":{i}"#))),
        ));
        texts.push(with(
            "upstream",
            format!("[{}]", list(&|i| format!(r#""s{i}""#))),
        ));
        texts.push(with(
            "attributes",
            format!("{{{}}}", list(&|i| format!(r#""a{i}":"v""#))),
        ));
    }
    for x in ["1e12", "1000000000000.5", "1000000000001", "-0.0", "0"] {
        texts.push(with("duration_ms", x.to_string()));
    }
    for x in [
        "1e15",
        "-1e15",
        "1000000000000000.5",
        "1000000000000001",
        "-0e0",
    ] {
        texts.push(with("quality", format!(r#"{{"q":{x}}}"#)));
    }
    // Counts the scanner reads as plain integers, and the near misses it leaves to the
    // general number reader.
    for x in [
        "0",
        "00",
        "01",
        "-0",
        "-1",
        "1.0",
        "1e2",
        "1E2",
        "12 ",
        "9999999999999999999",
        "10000000000000000000",
        "18446744073709551615",
        "18446744073709551616",
    ] {
        texts.push(with("records_in", x.to_string()));
        texts.push(with("errors", x.to_string()));
    }
    for field in KEYS {
        texts.push(with(field, "null".to_string()));
    }
    for text in &texts {
        same_as_serde(text).unwrap_or_else(|e| panic!("{e}"));
    }
}
