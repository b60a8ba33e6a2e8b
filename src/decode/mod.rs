//! Untrusted bytes → a validated [`Event`], or a [`Rejection`] that says precisely why not.
//!
//! Every message from Kafka is untrusted. The decoder is a hand-written serde visitor so
//! that it can (a) name the field and the fault in every rejection, (b) borrow strings
//! from the input instead of allocating, and (c) validate while parsing, in one pass. It
//! never panics: serde_json bounds nesting depth, the size limit is checked before parsing,
//! and all arithmetic on input values is checked.
//!
//! In front of it runs a byte scanner ([`scan`]) that decodes the plain shape almost
//! every event has in a third of the time, and hands anything else to the visitor, so
//! there is still one place that decides what is refused and why.

pub mod scan;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Longest pipeline or stage name, quality figure name or upstream entry.
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_EVENT_ID_LEN: usize = 128;
pub const MAX_CORRELATION_ID_LEN: usize = 256;
/// Bounds on the collections an event may carry, so one message cannot cost unbounded
/// work or memory downstream.
pub const MAX_QUALITY_FIGURES: usize = 64;
pub const MAX_UPSTREAM: usize = 64;
pub const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTE_LEN: usize = 1024;

/// Largest magnitude accepted for a quality figure, and largest `duration_ms` (31 years).
/// JSON cannot carry NaN or infinity, but it can carry 1e300, whose square overflows a
/// detector's variance to infinity and blinds it for good.
pub const MAX_FIGURE: f64 = 1e15;
pub const MAX_DURATION_MS: f64 = 1e12;

/// Epoch milliseconds accepted as event time: 2000-01-01 to 2200-01-01. Anything outside
/// is a producer bug, and keeping it out keeps bucket arithmetic far from overflow.
const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
const MAX_TIMESTAMP_MS: i64 = 7_258_118_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Failure,
    Retry,
    Skipped,
}

/// A valid pipeline event. Strings borrow from the input where it has no escapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub pipeline: Cow<'a, str>,
    pub stage: Cow<'a, str>,
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
    pub event_id: Option<Cow<'a, str>>,
    pub correlation_id: Option<Cow<'a, str>>,
    pub status: Status,
    pub records_in: Option<u64>,
    pub records_out: Option<u64>,
    pub records_rejected: Option<u64>,
    pub bytes: Option<u64>,
    pub duration_ms: Option<f64>,
    pub errors: Option<u64>,
    pub quality: QualityFigures<'a>,
    /// The stages the event says feed this one; empty when it names none.
    pub upstream: Upstream<'a>,
}

/// The stage names of an event's `upstream`, in the order the event gives them: the
/// stages of the same pipeline that feed this one. Absent, `null` and `[]` are empty.
/// Each name is valid as a stage name is (1 to [`MAX_NAME_LEN`] characters), there are
/// at most [`MAX_UPSTREAM`], and they are as the event wrote them: not deduplicated, and
/// not checked against the pipeline's stages.
///
/// Read with [`Upstream::names`]. Equality and `Debug` go by the names alone, whichever
/// path decoded the event.
#[derive(Clone)]
pub struct Upstream<'a>(UpstreamNames<'a>);

/// How an [`Upstream`] holds its names. The fast path keeps the array's text rather than
/// a list, which would cost an allocation for every event that names its upstream stages
/// (in pipelines that declare them, every event but their sources').
#[derive(Clone)]
enum UpstreamNames<'a> {
    /// The text of a valid array of names without escapes, from the first name's opening
    /// quote to the last one's closing quote (empty for no names): each name stands
    /// between a pair of quotes, with only commas and whitespace between the pairs.
    Text(&'a str),
    /// Names read by the serde path, unescaped.
    List(Vec<Cow<'a, str>>),
}

impl<'a> Upstream<'a> {
    /// The names in the text of an array; see [`UpstreamNames::Text`] for what it must be.
    fn from_text(text: &'a str) -> Upstream<'a> {
        Upstream(UpstreamNames::Text(text))
    }

    /// The names, in the event's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let (mut text, list) = match &self.0 {
            UpstreamNames::Text(text) => (*text, &[][..]),
            UpstreamNames::List(list) => ("", &list[..]),
        };
        // Names without escapes hold no quote, so the quotes pair up around them.
        let from_text = std::iter::from_fn(move || {
            let (_, rest) = text.split_once('"')?;
            let (name, rest) = rest.split_once('"')?;
            text = rest;
            Some(name)
        });
        from_text.chain(list.iter().map(|name| &**name))
    }

    /// How many names there are (counted: at most [`MAX_UPSTREAM`]).
    pub fn len(&self) -> usize {
        match &self.0 {
            UpstreamNames::Text(_) => self.names().count(),
            UpstreamNames::List(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.0 {
            UpstreamNames::Text(text) => text.is_empty(),
            UpstreamNames::List(list) => list.is_empty(),
        }
    }

    /// The names as the event wrote them, where the decoder kept that text: two such
    /// texts that are equal name the same stages, which is cheaper to see than reading
    /// both. `None` for names the decoder had to unescape.
    pub fn as_written(&self) -> Option<&'a str> {
        match self.0 {
            UpstreamNames::Text(text) => Some(text),
            UpstreamNames::List(_) => None,
        }
    }
}

/// Names given as a list, as the serde path reads them.
impl<'a> FromIterator<&'a str> for Upstream<'a> {
    fn from_iter<I: IntoIterator<Item = &'a str>>(names: I) -> Self {
        Upstream(UpstreamNames::List(
            names.into_iter().map(Cow::Borrowed).collect(),
        ))
    }
}

impl Default for Upstream<'_> {
    fn default() -> Self {
        Upstream::from_text("")
    }
}

impl PartialEq for Upstream<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.names().eq(other.names())
    }
}

impl Eq for Upstream<'_> {}

impl fmt::Debug for Upstream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Why a message was refused; the label of the `invalid messages by reason` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    TooLarge,
    NotJson,
    NotObject,
    MissingField,
    DuplicateField,
    WrongType,
    NegativeCount,
    OutOfRange,
    Empty,
    TooLong,
    TooMany,
    BadTimestamp,
    TimestampInFuture,
    BadStatus,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::TooLarge,
        Reason::NotJson,
        Reason::NotObject,
        Reason::MissingField,
        Reason::DuplicateField,
        Reason::WrongType,
        Reason::NegativeCount,
        Reason::OutOfRange,
        Reason::Empty,
        Reason::TooLong,
        Reason::TooMany,
        Reason::BadTimestamp,
        Reason::TimestampInFuture,
        Reason::BadStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::NotJson => "not_json",
            Reason::NotObject => "not_object",
            Reason::MissingField => "missing_field",
            Reason::DuplicateField => "duplicate_field",
            Reason::WrongType => "wrong_type",
            Reason::NegativeCount => "negative_count",
            Reason::OutOfRange => "out_of_range",
            Reason::Empty => "empty",
            Reason::TooLong => "too_long",
            Reason::TooMany => "too_many",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::TimestampInFuture => "timestamp_in_future",
            Reason::BadStatus => "bad_status",
        }
    }

    /// Dense index, for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A refused message: the reason, the field it concerns, and a human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub field: Option<&'static str>,
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(
                f,
                "{}: field `{field}`: {}",
                self.reason.as_str(),
                self.detail
            ),
            None => write!(f, "{}: {}", self.reason.as_str(), self.detail),
        }
    }
}

impl std::error::Error for Rejection {}

fn reject(reason: Reason, field: Option<&'static str>, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        field,
        detail: detail.into(),
    }
}

/// Limits the decoder enforces that depend on configuration and the clock.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_event_bytes: usize,
    /// Events stamped after this (epoch ms) are refused; `i64::MAX` disables the check.
    pub latest_timestamp_ms: i64,
}

impl DecodeLimits {
    pub fn new(max_event_bytes: usize, now_ms: i64, max_future_skew_ms: i64) -> DecodeLimits {
        DecodeLimits {
            max_event_bytes,
            latest_timestamp_ms: now_ms.saturating_add(max_future_skew_ms),
        }
    }
}

/// Decodes and validates one message.
pub fn decode<'a>(bytes: &'a [u8], limits: &DecodeLimits) -> Result<Event<'a>, Rejection> {
    decode_hinting(bytes, limits, |_| {})
}

/// [`decode`], calling `identified` as soon as the event's pipeline, stage and event id
/// are read, when they come first as usual: before most of the message is decoded. The
/// engine uses the moment to start fetching its duplicate filter's slot for the event,
/// which is then in the cache when the event is applied. A hint only: the event is not
/// validated yet, and an event read another way is decoded without the call.
pub fn decode_hinting<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
    identified: impl FnOnce(&Event<'a>),
) -> Result<Event<'a>, Rejection> {
    decode_with(bytes, limits, |bytes, event| {
        scan::read(bytes, event, identified)
    })
}

/// [`decode`] without the fast path: the reference it is tested against.
pub fn decode_with_serde<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
) -> Result<Event<'a>, Rejection> {
    decode_with(bytes, limits, |_, _| None)
}

/// Decodes with `fast` if it accepts the message (filling in an empty event), else with
/// the serde visitor; the size and clock checks are common to both. `fast` accepts only
/// UTF-8, so the encoding is checked here only for what it declines.
fn decode_with<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
    fast: impl FnOnce(&'a [u8], &mut Event<'a>) -> Option<()>,
) -> Result<Event<'a>, Rejection> {
    if bytes.len() > limits.max_event_bytes {
        return Err(reject(
            Reason::TooLarge,
            None,
            format!("{} bytes, limit {}", bytes.len(), limits.max_event_bytes),
        ));
    }
    let mut event = scan::empty_event();
    if fast(bytes, &mut event).is_none() {
        // One UTF-8 check of the whole message is cheaper than serde_json's check of
        // every string in it, which `from_str` skips.
        let text = std::str::from_utf8(bytes)
            .map_err(|e| reject(Reason::NotJson, None, format!("not UTF-8: {e}")))?;
        event = with_serde(text)?;
    }
    if event.timestamp_ms > limits.latest_timestamp_ms {
        return Err(reject(
            Reason::TimestampInFuture,
            Some("timestamp"),
            format!(
                "{} is after the latest accepted time {}",
                crate::time::format_ms(event.timestamp_ms),
                crate::time::format_ms(limits.latest_timestamp_ms)
            ),
        ));
    }
    Ok(event)
}

fn with_serde(text: &str) -> Result<Event<'_>, Rejection> {
    let mut rejection = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = EventSeed {
        rejection: &mut rejection,
    }
    .deserialize(&mut de)
    .and_then(|event| de.end().map(|()| event));
    parsed.map_err(|err| {
        rejection.unwrap_or_else(|| {
            let reason = match err.classify() {
                serde_json::error::Category::Data => Reason::NotObject,
                _ => Reason::NotJson,
            };
            reject(reason, None, err.to_string())
        })
    })
}

/// Quality figures by name, in the order the event gave them.
pub type QualityFigures<'a> = Vec<(Cow<'a, str>, f64)>;

/// Carries the structured rejection out of the visitor: serde errors are strings, but
/// callers need the reason and field as data.
struct EventSeed<'r> {
    rejection: &'r mut Option<Rejection>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Event<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(EventVisitor {
            rejection: self.rejection,
        })
    }
}

struct EventVisitor<'r> {
    rejection: &'r mut Option<Rejection>,
}

/// Records a rejection and turns it into the deserializer's error type.
fn fail<E: de::Error>(slot: &mut Option<Rejection>, rejection: Rejection) -> E {
    let err = E::custom(&rejection);
    *slot = Some(rejection);
    err
}

impl<'de> Visitor<'de> for EventVisitor<'_> {
    type Value = Event<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a pipeline event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            if let Key::Unknown = key {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = map.next_value::<Json>()?;
            if let Err(rejection) = fields.set(key, value) {
                return Err(fail(self.rejection, rejection));
            }
        }
        fields.finish().map_err(|r| fail(self.rejection, r))
    }
}

/// The fields read so far; a second occurrence of a field is refused, since which of two
/// values a producer meant is unknowable.
#[derive(Default)]
struct Fields<'a> {
    seen: u32,
    pipeline: Option<Cow<'a, str>>,
    stage: Option<Cow<'a, str>>,
    timestamp_ms: Option<i64>,
    event_id: Option<Cow<'a, str>>,
    correlation_id: Option<Cow<'a, str>>,
    status: Option<Status>,
    records_in: Option<u64>,
    records_out: Option<u64>,
    records_rejected: Option<u64>,
    bytes: Option<u64>,
    duration_ms: Option<f64>,
    errors: Option<u64>,
    quality: Option<QualityFigures<'a>>,
    upstream: Upstream<'a>,
}

impl<'a> Fields<'a> {
    fn set(&mut self, key: Key, v: Json<'a>) -> Result<(), Rejection> {
        let bit = 1u32 << (key as u32);
        if self.seen & bit != 0 {
            return Err(reject(
                Reason::DuplicateField,
                Some(key.name()),
                "appears twice",
            ));
        }
        self.seen |= bit;
        match key {
            Key::Pipeline => self.pipeline = Some(name("pipeline", v, MAX_NAME_LEN)?),
            Key::Stage => self.stage = Some(name("stage", v, MAX_NAME_LEN)?),
            Key::Timestamp => self.timestamp_ms = Some(timestamp(v)?),
            Key::EventId => self.event_id = optional_name("event_id", v, MAX_EVENT_ID_LEN)?,
            Key::CorrelationId => {
                self.correlation_id = optional_name("correlation_id", v, MAX_CORRELATION_ID_LEN)?
            }
            Key::Status => self.status = status(v)?,
            Key::RecordsIn => self.records_in = count("records_in", v)?,
            Key::RecordsOut => self.records_out = count("records_out", v)?,
            Key::RecordsRejected => self.records_rejected = count("records_rejected", v)?,
            Key::Bytes => self.bytes = count("bytes", v)?,
            Key::Errors => self.errors = count("errors", v)?,
            Key::DurationMs => self.duration_ms = duration(v)?,
            Key::Quality => self.quality = quality(v)?,
            Key::Upstream => self.upstream = upstream(v)?,
            Key::Attributes => attributes(v)?,
            Key::Unknown => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<Event<'a>, Rejection> {
        let missing = |field: &'static str| reject(Reason::MissingField, Some(field), "required");
        Ok(Event {
            pipeline: self.pipeline.ok_or_else(|| missing("pipeline"))?,
            stage: self.stage.ok_or_else(|| missing("stage"))?,
            timestamp_ms: self.timestamp_ms.ok_or_else(|| missing("timestamp"))?,
            event_id: self.event_id,
            correlation_id: self.correlation_id,
            status: self.status.unwrap_or(Status::Success),
            records_in: self.records_in,
            records_out: self.records_out,
            records_rejected: self.records_rejected,
            bytes: self.bytes,
            duration_ms: self.duration_ms,
            errors: self.errors,
            quality: self.quality.unwrap_or_default(),
            upstream: self.upstream,
        })
    }
}

/// Top-level field names, matched without allocating.
#[derive(Clone, Copy)]
enum Key {
    Pipeline,
    Stage,
    Timestamp,
    EventId,
    CorrelationId,
    Status,
    RecordsIn,
    RecordsOut,
    RecordsRejected,
    Bytes,
    DurationMs,
    Errors,
    Quality,
    Upstream,
    Attributes,
    Unknown,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Pipeline => "pipeline",
            Key::Stage => "stage",
            Key::Timestamp => "timestamp",
            Key::EventId => "event_id",
            Key::CorrelationId => "correlation_id",
            Key::Status => "status",
            Key::RecordsIn => "records_in",
            Key::RecordsOut => "records_out",
            Key::RecordsRejected => "records_rejected",
            Key::Bytes => "bytes",
            Key::DurationMs => "duration_ms",
            Key::Errors => "errors",
            Key::Quality => "quality",
            Key::Upstream => "upstream",
            Key::Attributes => "attributes",
            Key::Unknown => "?",
        }
    }
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "pipeline" => Key::Pipeline,
                    "stage" => Key::Stage,
                    "timestamp" => Key::Timestamp,
                    "event_id" => Key::EventId,
                    "correlation_id" => Key::CorrelationId,
                    "status" => Key::Status,
                    "records_in" => Key::RecordsIn,
                    "records_out" => Key::RecordsOut,
                    "records_rejected" => Key::RecordsRejected,
                    "bytes" => Key::Bytes,
                    "duration_ms" => Key::DurationMs,
                    "errors" => Key::Errors,
                    "quality" => Key::Quality,
                    "upstream" => Key::Upstream,
                    "attributes" => Key::Attributes,
                    _ => Key::Unknown,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// One JSON value of a known field, borrowing strings from the input. Containers are
/// collected only for the fields that are containers; their size is bounded by
/// `max_event_bytes`, checked before parsing.
enum Json<'a> {
    Null,
    Bool,
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Unsigned(_) | Json::Signed(_) => "an integer",
            Json::Float(_) => "a fractional number",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> de::Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// A string that borrows from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_str(JsonVisitor)? {
            Json::Str(s) => Ok(Text(s)),
            _ => Err(de::Error::custom("expected a string")),
        }
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool)
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Json::Unsigned(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Signed(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Json>()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((Text(key), value)) = map.next_entry::<Text, Json>()? {
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

fn wrong_type(field: &'static str, expected: &str, got: &Json) -> Rejection {
    reject(
        Reason::WrongType,
        Some(field),
        format!("expected {expected}, got {}", got.type_name()),
    )
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), Rejection> {
    if s.is_empty() {
        return Err(reject(Reason::Empty, Some(field), "must not be empty"));
    }
    // Characters never outnumber bytes: count them only when the bytes exceed the limit.
    if s.len() <= max {
        return Ok(());
    }
    let chars = s.chars().count();
    if chars > max {
        return Err(reject(
            Reason::TooLong,
            Some(field),
            format!("{chars} characters, limit {max}"),
        ));
    }
    Ok(())
}

fn name<'a>(field: &'static str, v: Json<'a>, max: usize) -> Result<Cow<'a, str>, Rejection> {
    match v {
        Json::Str(s) => check_len(field, &s, max).map(|()| s),
        Json::Null => Err(reject(Reason::MissingField, Some(field), "is null")),
        other => Err(wrong_type(field, "a string", &other)),
    }
}

/// Optional fields accept `null` as absent: many producers serialize missing values so.
fn optional_name<'a>(
    field: &'static str,
    v: Json<'a>,
    max: usize,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match v {
        Json::Null => Ok(None),
        other => name(field, other, max).map(Some),
    }
}

fn count(field: &'static str, v: Json) -> Result<Option<u64>, Rejection> {
    match v {
        Json::Null => Ok(None),
        Json::Unsigned(n) => Ok(Some(n)),
        Json::Signed(n) if n >= 0 => Ok(Some(n as u64)),
        Json::Signed(n) => Err(reject(
            Reason::NegativeCount,
            Some(field),
            format!("{n} is below 0"),
        )),
        Json::Float(x) if x < 0.0 => Err(reject(
            Reason::NegativeCount,
            Some(field),
            format!("{x} is below 0"),
        )),
        other => Err(wrong_type(field, "an integer >= 0", &other)),
    }
}

fn number(field: &'static str, v: &Json) -> Result<f64, Rejection> {
    let x = match *v {
        Json::Unsigned(n) => n as f64,
        Json::Signed(n) => n as f64,
        Json::Float(x) => x,
        ref other => return Err(wrong_type(field, "a number", other)),
    };
    if x.abs() > MAX_FIGURE {
        return Err(reject(
            Reason::OutOfRange,
            Some(field),
            format!("{x} is beyond ±{MAX_FIGURE:e}"),
        ));
    }
    Ok(x)
}

fn duration(v: Json) -> Result<Option<f64>, Rejection> {
    if let Json::Null = v {
        return Ok(None);
    }
    let x = number("duration_ms", &v)?;
    if x < 0.0 {
        return Err(reject(
            Reason::NegativeCount,
            Some("duration_ms"),
            format!("{x} is below 0"),
        ));
    }
    if x > MAX_DURATION_MS {
        return Err(reject(
            Reason::OutOfRange,
            Some("duration_ms"),
            format!("{x} is beyond {MAX_DURATION_MS:e} ms"),
        ));
    }
    Ok(Some(x))
}

fn timestamp(v: Json) -> Result<i64, Rejection> {
    let ms = match v {
        Json::Str(s) => crate::time::parse_rfc3339_ms(&s).ok_or_else(|| {
            reject(
                Reason::BadTimestamp,
                Some("timestamp"),
                format!("{:?} is not an RFC 3339 time", truncate(&s, 64)),
            )
        })?,
        Json::Unsigned(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Json::Signed(n) => n,
        Json::Null => return Err(reject(Reason::MissingField, Some("timestamp"), "is null")),
        other => {
            return Err(wrong_type(
                "timestamp",
                "an RFC 3339 string or integer epoch milliseconds",
                &other,
            ))
        }
    };
    if !(MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&ms) {
        return Err(reject(
            Reason::OutOfRange,
            Some("timestamp"),
            format!("{ms} ms is outside years 2000 to 2199"),
        ));
    }
    Ok(ms)
}

fn status(v: Json) -> Result<Option<Status>, Rejection> {
    match v {
        Json::Null => Ok(None),
        Json::Str(s) => match &*s {
            "success" => Ok(Some(Status::Success)),
            "failure" => Ok(Some(Status::Failure)),
            "retry" => Ok(Some(Status::Retry)),
            "skipped" => Ok(Some(Status::Skipped)),
            other => Err(reject(
                Reason::BadStatus,
                Some("status"),
                format!(
                    "{:?} is not one of success, failure, retry, skipped",
                    truncate(other, 64)
                ),
            )),
        },
        other => Err(wrong_type("status", "a string", &other)),
    }
}

fn too_many(field: &'static str, limit: usize) -> Rejection {
    reject(
        Reason::TooMany,
        Some(field),
        format!("more than {limit} entries"),
    )
}

fn quality(v: Json<'_>) -> Result<Option<QualityFigures<'_>>, Rejection> {
    let entries = match v {
        Json::Null => return Ok(None),
        Json::Object(entries) => entries,
        other => return Err(wrong_type("quality", "an object of numbers", &other)),
    };
    if entries.len() > MAX_QUALITY_FIGURES {
        return Err(too_many("quality", MAX_QUALITY_FIGURES));
    }
    let mut figures: QualityFigures<'_> = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        check_len("quality", &key, MAX_NAME_LEN)?;
        let x = number("quality", &value).map_err(|mut r| {
            r.detail = format!("figure {:?}: {}", truncate(&key, 64), r.detail);
            r
        })?;
        if figures.iter().any(|(k, _)| *k == key) {
            return Err(reject(
                Reason::DuplicateField,
                Some("quality"),
                format!("figure {:?} appears twice", truncate(&key, 64)),
            ));
        }
        figures.push((key, x));
    }
    Ok(Some(figures))
}

fn upstream(v: Json<'_>) -> Result<Upstream<'_>, Rejection> {
    let items = match v {
        Json::Null => return Ok(Upstream::default()),
        Json::Array(items) => items,
        other => return Err(wrong_type("upstream", "an array of stage names", &other)),
    };
    if items.len() > MAX_UPSTREAM {
        return Err(too_many("upstream", MAX_UPSTREAM));
    }
    if items.is_empty() {
        return Ok(Upstream::default());
    }
    let mut names = Vec::with_capacity(items.len());
    for item in items {
        names.push(match item {
            Json::Null => return Err(wrong_type("upstream", "an array of stage names", &item)),
            item => name("upstream", item, MAX_NAME_LEN)?,
        });
    }
    Ok(Upstream(UpstreamNames::List(names)))
}

/// `attributes` is validated but not kept: pipewatch never turns attributes into metric
/// labels, and checking them keeps a misbehaving producer visible.
fn attributes(v: Json) -> Result<(), Rejection> {
    let entries = match v {
        Json::Null => return Ok(()),
        Json::Object(entries) => entries,
        other => return Err(wrong_type("attributes", "an object of strings", &other)),
    };
    if entries.len() > MAX_ATTRIBUTES {
        return Err(too_many("attributes", MAX_ATTRIBUTES));
    }
    for (key, value) in entries {
        check_len("attributes", &key, MAX_NAME_LEN)?;
        match value {
            Json::Str(s) if s.chars().count() <= MAX_ATTRIBUTE_LEN => {}
            Json::Str(_) => {
                return Err(reject(
                    Reason::TooLong,
                    Some("attributes"),
                    format!(
                        "value of {:?} is over {MAX_ATTRIBUTE_LEN} characters",
                        truncate(&key, 64)
                    ),
                ))
            }
            other => {
                return Err(reject(
                    Reason::WrongType,
                    Some("attributes"),
                    format!(
                        "value of {:?}: expected a string, got {}",
                        truncate(&key, 64),
                        other.type_name()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Cuts what is quoted back into a rejection, so a huge hostile string is not copied.
fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000_000; // 2026-11-17

    fn limits() -> DecodeLimits {
        DecodeLimits::new(65_536, NOW, 300_000)
    }

    fn ok(json: &str) -> Event<'_> {
        decode(json.as_bytes(), &limits()).unwrap_or_else(|r| panic!("{json}: {r}"))
    }

    fn bad(json: &str) -> Rejection {
        decode(json.as_bytes(), &limits()).expect_err(json)
    }

    #[test]
    fn schema_example_decodes_and_borrows() {
        let json = r#"{"pipeline":"orders_etl","stage":"transform","timestamp":"2026-11-24T03:00:00.250Z",
            "event_id":"7f0c","correlation_id":"orders_etl-run-20261124T0300","status":"success",
            "records_in":10000,"records_out":9985,"records_rejected":15,"bytes":5242880,
            "duration_ms":1830.5,"errors":15,
            "quality":{"null_rate":0.002,"schema_violations":0,"duplicate_rate":0.0},
            "upstream":["extract"],"attributes":{"host":"worker-3","version":"1.4.2"},
            "extra_field":{"nested":[1,2,3]}}"#;
        let limits = DecodeLimits::new(65_536, i64::MAX / 2, 0);
        let e = decode(json.as_bytes(), &limits).unwrap();
        assert_eq!(e.pipeline, "orders_etl");
        assert!(matches!(e.pipeline, Cow::Borrowed(_)));
        assert_eq!(e.timestamp_ms, 1_795_489_200_250);
        assert_eq!(e.records_out, Some(9985));
        assert_eq!(e.duration_ms, Some(1830.5));
        assert_eq!(e.quality.len(), 3);
        assert_eq!(e.quality[0], (Cow::Borrowed("null_rate"), 0.002));
        assert_eq!(e.status, Status::Success);
        assert_eq!(e.upstream.names().collect::<Vec<_>>(), ["extract"]);
    }

    /// The hint comes with the identity the event decodes to, before the rest of the
    /// event is read, and only when pipeline, stage and event id come first.
    #[test]
    fn the_identity_hint_comes_before_the_rest_of_the_event() {
        let usual = r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"event_id":"e1","status":"failure","records_in":5}"#;
        let mut hinted = None;
        let event = decode_hinting(usual.as_bytes(), &limits(), |early| {
            let id = early.event_id.as_deref().map(str::to_owned);
            hinted = Some((early.pipeline.to_string(), early.stage.to_string(), id));
            assert_eq!((early.status, early.records_in), (Status::Success, None));
        })
        .unwrap();
        assert_eq!(hinted, Some(("p".into(), "s".into(), Some("e1".into()))));
        assert_eq!((event.status, event.records_in), (Status::Failure, Some(5)));
        for other in [
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200000}"#,
            r#"{"event_id":"e1","pipeline":"p","stage":"s","timestamp":1793491200000}"#,
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"status":"failure","event_id":"e1"}"#,
        ] {
            let mut called = false;
            decode_hinting(other.as_bytes(), &limits(), |_| called = true).unwrap();
            assert!(!called, "{other}");
        }
    }

    #[test]
    fn strings_are_checked_for_utf8_by_either_path() {
        let base = |name: &[u8]| {
            let mut m = br#"{"pipeline":""#.to_vec();
            m.extend_from_slice(name);
            m.extend_from_slice(br#"","stage":"s","timestamp":1793491200000}"#);
            m
        };
        let accepted = base("caf\u{e9}-\u{2603}".as_bytes());
        assert_eq!(
            ok(std::str::from_utf8(&accepted).unwrap()).pipeline,
            "caf\u{e9}-\u{2603}"
        );
        for name in [
            &b"caf\xe9"[..],
            b"\xff",
            b"ab\xc3",
            b"\xed\xa0\x80",
            b"0123456789\xc0\xaf",
        ] {
            let bytes = base(name);
            let fast = decode(&bytes, &limits()).expect_err("not UTF-8");
            assert_eq!(fast.reason, Reason::NotJson);
            assert_eq!(Err(fast), decode_with_serde(&bytes, &limits()));
        }
    }

    #[test]
    fn both_timestamp_forms_agree() {
        let a = ok(r#"{"pipeline":"p","stage":"s","timestamp":"2026-11-01T00:00:00Z"}"#);
        let b = ok(r#"{"pipeline":"p","stage":"s","timestamp":1793491200000}"#);
        let c = ok(r#"{"pipeline":"p","stage":"s","timestamp":"2026-11-01T01:00:00+01:00"}"#);
        assert_eq!(a.timestamp_ms, b.timestamp_ms);
        assert_eq!(a.timestamp_ms, c.timestamp_ms);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let e = ok(r#"{"pipeline":"a\"b","stage":"\u00e9t\u00e9","timestamp":1793491200000}"#);
        assert_eq!(e.pipeline, "a\"b");
        assert_eq!(e.stage, "été");
    }

    #[test]
    fn nulls_in_optional_fields_mean_absent() {
        let e = ok(
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"records_in":null,"status":null,"quality":null}"#,
        );
        assert_eq!(e.records_in, None);
        assert_eq!(e.status, Status::Success);
    }

    #[test]
    fn every_rejection_names_reason_and_field() {
        let base = r#""pipeline":"p","stage":"s","timestamp":1793491200000"#;
        let cases: Vec<(String, Reason, Option<&str>)> = vec![
            ("not json".into(), Reason::NotJson, None),
            ("{\"pipeline\":".into(), Reason::NotJson, None),
            ("[1,2]".into(), Reason::NotObject, None),
            ("42".into(), Reason::NotObject, None),
            (format!("{{{base}}} trailing"), Reason::NotJson, None),
            (
                r#"{"stage":"s","timestamp":1793491200000}"#.into(),
                Reason::MissingField,
                Some("pipeline"),
            ),
            (
                r#"{"pipeline":"p","timestamp":1793491200000}"#.into(),
                Reason::MissingField,
                Some("stage"),
            ),
            (
                r#"{"pipeline":"p","stage":"s"}"#.into(),
                Reason::MissingField,
                Some("timestamp"),
            ),
            (
                format!("{{{base},\"pipeline\":\"q\"}}"),
                Reason::DuplicateField,
                Some("pipeline"),
            ),
            (
                format!("{{{base},\"records_in\":\"10\"}}"),
                Reason::WrongType,
                Some("records_in"),
            ),
            (
                format!("{{{base},\"records_in\":-5}}"),
                Reason::NegativeCount,
                Some("records_in"),
            ),
            (
                format!("{{{base},\"records_out\":1.5}}"),
                Reason::WrongType,
                Some("records_out"),
            ),
            (
                format!("{{{base},\"duration_ms\":-1.0}}"),
                Reason::NegativeCount,
                Some("duration_ms"),
            ),
            (
                format!("{{{base},\"quality\":{{\"x\":\"high\"}}}}"),
                Reason::WrongType,
                Some("quality"),
            ),
            (
                format!("{{{base},\"quality\":[1]}}"),
                Reason::WrongType,
                Some("quality"),
            ),
            (
                format!("{{{base},\"upstream\":\"extract\"}}"),
                Reason::WrongType,
                Some("upstream"),
            ),
            (
                format!("{{{base},\"upstream\":[1]}}"),
                Reason::WrongType,
                Some("upstream"),
            ),
            (
                format!("{{{base},\"attributes\":{{\"a\":1}}}}"),
                Reason::WrongType,
                Some("attributes"),
            ),
            (
                format!("{{{base},\"status\":\"ok\"}}"),
                Reason::BadStatus,
                Some("status"),
            ),
            (
                r#"{"pipeline":"","stage":"s","timestamp":1793491200000}"#.into(),
                Reason::Empty,
                Some("pipeline"),
            ),
            (
                format!(
                    r#"{{"pipeline":"{}","stage":"s","timestamp":1793491200000}}"#,
                    "x".repeat(129)
                ),
                Reason::TooLong,
                Some("pipeline"),
            ),
            (
                r#"{"pipeline":"p","stage":"s","timestamp":"yesterday"}"#.into(),
                Reason::BadTimestamp,
                Some("timestamp"),
            ),
            (
                r#"{"pipeline":"p","stage":"s","timestamp":12}"#.into(),
                Reason::OutOfRange,
                Some("timestamp"),
            ),
            (
                r#"{"pipeline":"p","stage":"s","timestamp":true}"#.into(),
                Reason::WrongType,
                Some("timestamp"),
            ),
            (
                r#"{"pipeline":"p","stage":"s","timestamp":"2099-01-01T00:00:00Z"}"#.into(),
                Reason::TimestampInFuture,
                Some("timestamp"),
            ),
            (
                format!("{{{base},\"duration_ms\":1e999}}"),
                Reason::NotJson,
                None,
            ),
        ];
        for (json, reason, field) in cases {
            let r = bad(&json);
            assert_eq!((r.reason, r.field), (reason, field), "{json} -> {r}");
            assert!(!r.to_string().is_empty());
        }
    }

    #[test]
    fn oversized_messages_are_refused_before_parsing() {
        let limits = DecodeLimits::new(256, NOW, 0);
        let big = format!(
            r#"{{"pipeline":"p","stage":"s","timestamp":1793491200000,"pad":"{}"}}"#,
            "x".repeat(300)
        );
        assert_eq!(
            decode(big.as_bytes(), &limits).unwrap_err().reason,
            Reason::TooLarge
        );
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let limits = DecodeLimits::new(1 << 20, NOW, 0);
        let deep = |field: &str| {
            format!(
                r#"{{"pipeline":"p","stage":"s","timestamp":1793491200000,"{field}":{}{}}}"#,
                "[".repeat(50_000),
                "]".repeat(50_000)
            )
        };
        // an unknown field is skipped without recursion: valid JSON, accepted
        assert!(decode(deep("x").as_bytes(), &limits).is_ok());
        // a known field is parsed, and serde_json's depth limit stops it
        let r = decode(deep("upstream").as_bytes(), &limits).unwrap_err();
        assert_eq!(r.reason, Reason::NotJson, "{r}");
    }

    #[test]
    fn collection_limits_hold() {
        let figures: Vec<String> = (0..=MAX_QUALITY_FIGURES)
            .map(|i| format!("\"q{i}\":1"))
            .collect();
        let json = format!(
            r#"{{"pipeline":"p","stage":"s","timestamp":1793491200000,"quality":{{{}}}}}"#,
            figures.join(",")
        );
        assert_eq!(bad(&json).reason, Reason::TooMany);
        let ups: Vec<String> = (0..=MAX_UPSTREAM).map(|i| format!("\"s{i}\"")).collect();
        let json = format!(
            r#"{{"pipeline":"p","stage":"s","timestamp":1793491200000,"upstream":[{}]}}"#,
            ups.join(",")
        );
        assert_eq!(bad(&json).reason, Reason::TooMany);
    }

    fn names<'a>(upstream: &'a Upstream) -> Vec<&'a str> {
        upstream.names().collect()
    }

    #[test]
    fn upstream_names_come_back_in_order_borrowed_from_the_message() {
        let json = r#"{"pipeline":"p","stage":"join","timestamp":1793491200000,
            "upstream":[ "extract" ,"clean",
                "café"]}"#;
        let fast = ok(json);
        assert_eq!(names(&fast.upstream), ["extract", "clean", "café"]);
        assert_eq!(fast.upstream.len(), 3);
        assert!(!fast.upstream.is_empty());
        // Decoded by the scanner, the names are the message's own text: no list, no copy.
        assert!(matches!(fast.upstream.0, UpstreamNames::Text(_)));
        let slow = decode_with_serde(json.as_bytes(), &limits()).unwrap();
        assert!(matches!(slow.upstream.0, UpstreamNames::List(_)));
        assert_eq!(fast.upstream, slow.upstream);
        assert_eq!(
            format!("{:?}", fast.upstream),
            r#"["extract", "clean", "café"]"#
        );
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
    }

    #[test]
    fn escaped_upstream_names_come_back_unescaped() {
        let e = ok(
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"upstream":["a\"b","\u00e9t\u00e9","back\\slash","plain"]}"#,
        );
        assert_eq!(names(&e.upstream), ["a\"b", "été", "back\\slash", "plain"]);
        assert_eq!(e.upstream.len(), 4);
        // The unescaped names are owned; the plain one still borrows.
        let UpstreamNames::List(list) = &e.upstream.0 else {
            panic!("escapes are the serde path's: {:?}", e.upstream);
        };
        assert!(matches!(list[0], Cow::Owned(_)));
        assert!(matches!(list[3], Cow::Borrowed(_)));
    }

    #[test]
    fn absent_null_and_empty_upstream_are_empty() {
        let base = r#""pipeline":"p","stage":"s","timestamp":1793491200000"#;
        for tail in [
            "",
            r#","upstream":null"#,
            r#","upstream":[]"#,
            ",\"upstream\":[ \n ]",
        ] {
            let json = format!("{{{base}{tail}}}");
            for e in [
                ok(&json),
                decode_with_serde(json.as_bytes(), &limits()).unwrap(),
            ] {
                assert!(e.upstream.is_empty(), "{json}");
                assert_eq!(e.upstream.len(), 0);
                assert_eq!(e.upstream.names().next(), None);
                assert_eq!(e.upstream, Upstream::default());
            }
        }
    }

    #[test]
    fn upstreams_are_equal_by_their_names_alone() {
        let text = Upstream::from_text(r#""a", "b""#);
        let list = |names: &[&'static str]| {
            Upstream(UpstreamNames::List(
                names.iter().map(|&n| Cow::Borrowed(n)).collect(),
            ))
        };
        assert_eq!(text, list(&["a", "b"]));
        assert_ne!(text, list(&["b", "a"]));
        assert_ne!(text, list(&["a"]));
        assert_ne!(text, list(&["a", "b", "c"]));
        assert_ne!(text, Upstream::default());
        assert_eq!(list(&[]), Upstream::default());
    }
}
