//! The fast path: one pass over the bytes of an ordinary event, building the [`Event`]
//! directly.
//!
//! It knows only the plain shape nearly every producer sends: an object of the known
//! fields, strings without escapes, counts as plain integers, numbers that convert
//! exactly. Anything else, valid or not, it declines with `None`, and the serde path
//! (`super::decode_with_serde`) decides, so every rejection keeps coming from that one
//! precise place. For every input it accepts it gives exactly the event the serde path
//! gives; `tests/decode_fuzz.rs` checks that.
//!
//! The input need not be UTF-8: every string is checked, and everything outside strings
//! must be ASCII punctuation, digits or known words.

use std::borrow::Cow;

use super::{
    Event, Status, Upstream, MAX_ATTRIBUTES, MAX_ATTRIBUTE_LEN, MAX_CORRELATION_ID_LEN,
    MAX_DURATION_MS, MAX_EVENT_ID_LEN, MAX_FIGURE, MAX_NAME_LEN, MAX_QUALITY_FIGURES,
    MAX_TIMESTAMP_MS, MAX_UPSTREAM, MIN_TIMESTAMP_MS,
};

/// Decodes `text` if it has the plain shape and is valid; `None` otherwise.
pub fn event(text: &str) -> Option<Event<'_>> {
    from_bytes(text.as_bytes())
}

/// [`event`] on bytes not known to be UTF-8; what it accepts is. Outside strings it
/// accepts only ASCII, and it checks each string, so only the messages it declines need
/// the whole-message UTF-8 check (and its precise rejection).
pub fn from_bytes(bytes: &[u8]) -> Option<Event<'_>> {
    let mut event = empty_event();
    read(bytes, &mut event, |_| {}).map(|()| event)
}

/// An event with only the defaults, for [`read`] to fill.
pub(crate) fn empty_event<'a>() -> Event<'a> {
    Event {
        pipeline: Cow::Borrowed(""),
        stage: Cow::Borrowed(""),
        timestamp_ms: 0,
        event_id: None,
        correlation_id: None,
        status: Status::Success,
        records_in: None,
        records_out: None,
        records_rejected: None,
        bytes: None,
        duration_ms: None,
        errors: None,
        quality: Vec::new(),
        upstream: Upstream::default(),
    }
}

/// [`from_bytes`] into `event`, an [`empty_event`]: written where it stands rather than
/// returned, an event (256 bytes) is not copied on its way out of the scanner and the
/// decoder. When it declines, `event` is left partly written.
///
/// `identified` is called with the event as it stands once its pipeline, stage and event
/// id are read in their usual places, before most of its other fields (see
/// [`super::decode_hinting`]).
pub(crate) fn read<'a>(
    bytes: &'a [u8],
    event: &mut Event<'a>,
    identified: impl FnOnce(&Event<'a>),
) -> Option<()> {
    let mut s = Scanner { bytes, pos: 0 };
    s.expect(b'{')?;
    let mut m = Members {
        seen: 0,
        open: !s.eat(b'}'),
    };
    // Producers write the known fields in the order of `KEYS`, most of them every one:
    // each field is looked for where it is expected, by code of its own, its key compared
    // with constants and its value read without a dispatch on the field. Whatever is left
    // (a field out of that order, an unknown one, a key spaced from its colon) is read by
    // the general loop below.
    s.member::<PIPELINE>(event, &mut m)?;
    s.member::<STAGE>(event, &mut m)?;
    s.member::<TIMESTAMP>(event, &mut m)?;
    s.member::<EVENT_ID>(event, &mut m)?;
    let identity = 1 << PIPELINE | 1 << STAGE | 1 << EVENT_ID;
    if m.seen & identity == identity {
        identified(event);
    }
    s.member::<CORRELATION_ID>(event, &mut m)?;
    s.member::<STATUS>(event, &mut m)?;
    s.member::<RECORDS_IN>(event, &mut m)?;
    s.member::<RECORDS_OUT>(event, &mut m)?;
    s.member::<RECORDS_REJECTED>(event, &mut m)?;
    s.member::<BYTES>(event, &mut m)?;
    s.member::<DURATION_MS>(event, &mut m)?;
    s.member::<ERRORS>(event, &mut m)?;
    s.member::<QUALITY>(event, &mut m)?;
    s.member::<UPSTREAM>(event, &mut m)?;
    s.member::<ATTRIBUTES>(event, &mut m)?;
    while m.open {
        let key = s.string()?;
        s.expect(b':')?;
        match KEYS
            .iter()
            .position(|k| k[1..k.len() - 2] == *key.as_bytes())
        {
            Some(field) => {
                // A field seen twice is refused by the serde path: declined here.
                let bit = 1 << field;
                if m.seen & bit != 0 {
                    return None;
                }
                m.seen |= bit;
                s.value_of(field, event)?;
            }
            None => s.skip_scalar()?,
        }
        m.open = !s.delimiter(b'}')?;
    }
    s.skip_ws();
    let required = 1 << PIPELINE | 1 << STAGE | 1 << TIMESTAMP;
    (s.pos == s.bytes.len() && m.seen & required == required).then_some(())
}

/// Where the reading of an object's members stands.
struct Members {
    /// One bit per known field read, in the order of `KEYS`.
    seen: u16,
    /// Whether members remain: the closing brace is not read yet.
    open: bool,
}

/// The known top-level fields, quoted and followed by a colon as producers write them;
/// a field's bit in `seen` is its index here.
const KEYS: [&[u8]; 15] = [
    b"\"pipeline\":",
    b"\"stage\":",
    b"\"timestamp\":",
    b"\"event_id\":",
    b"\"correlation_id\":",
    b"\"status\":",
    b"\"records_in\":",
    b"\"records_out\":",
    b"\"records_rejected\":",
    b"\"bytes\":",
    b"\"duration_ms\":",
    b"\"errors\":",
    b"\"quality\":",
    b"\"upstream\":",
    b"\"attributes\":",
];
const PIPELINE: usize = 0;
const STAGE: usize = 1;
const TIMESTAMP: usize = 2;
const EVENT_ID: usize = 3;
const CORRELATION_ID: usize = 4;
const STATUS: usize = 5;
const RECORDS_IN: usize = 6;
const RECORDS_OUT: usize = 7;
const RECORDS_REJECTED: usize = 8;
const BYTES: usize = 9;
const DURATION_MS: usize = 10;
const ERRORS: usize = 11;
const QUALITY: usize = 12;
const UPSTREAM: usize = 13;
const ATTRIBUTES: usize = 14;

/// A JSON number in the forms the fast path converts exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    /// A plain non-negative integer of at most 19 digits (so it fits a `u64`).
    Unsigned(u64),
    /// A number with a fraction or an exponent.
    Float(f64),
}

impl Number {
    /// As the serde path's `number()` reads it.
    fn as_f64(self) -> f64 {
        match self {
            Number::Unsigned(n) => n as f64,
            Number::Float(x) => x,
        }
    }
}

/// Powers of ten that an `f64` holds exactly.
const EXACT_POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `byte` after optional whitespace, if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        let next = self.peek() == Some(byte);
        self.pos += usize::from(next);
        next
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// After a member or an element: `true` at the closing `close`, `false` after a
    /// comma, `None` at anything else.
    fn delimiter(&mut self, close: u8) -> Option<bool> {
        self.skip_ws();
        let b = self.peek()?;
        self.pos += 1;
        match b {
            b',' => Some(false),
            b if b == close => Some(true),
            _ => None,
        }
    }

    fn null(&mut self) -> bool {
        let null = self.bytes[self.pos..].starts_with(b"null");
        self.pos += if null { 4 } else { 0 };
        null
    }

    /// Field `F`, if its key is next: the key, the value, and the comma or brace after.
    #[inline(always)]
    fn member<const F: usize>(&mut self, event: &mut Event<'a>, m: &mut Members) -> Option<()> {
        if m.open && has_key(&self.bytes[self.pos..], F) {
            self.pos += KEYS[F].len();
            self.value::<F>(event)?;
            m.seen |= 1 << F;
            m.open = !self.delimiter(b'}')?;
        }
        Some(())
    }

    /// [`Self::value`] of field number `field`, for the general loop.
    #[inline(never)]
    fn value_of(&mut self, field: usize, event: &mut Event<'a>) -> Option<()> {
        match field {
            PIPELINE => self.value::<PIPELINE>(event),
            STAGE => self.value::<STAGE>(event),
            TIMESTAMP => self.value::<TIMESTAMP>(event),
            EVENT_ID => self.value::<EVENT_ID>(event),
            CORRELATION_ID => self.value::<CORRELATION_ID>(event),
            STATUS => self.value::<STATUS>(event),
            RECORDS_IN => self.value::<RECORDS_IN>(event),
            RECORDS_OUT => self.value::<RECORDS_OUT>(event),
            RECORDS_REJECTED => self.value::<RECORDS_REJECTED>(event),
            BYTES => self.value::<BYTES>(event),
            DURATION_MS => self.value::<DURATION_MS>(event),
            ERRORS => self.value::<ERRORS>(event),
            QUALITY => self.value::<QUALITY>(event),
            UPSTREAM => self.value::<UPSTREAM>(event),
            _ => self.value::<ATTRIBUTES>(event),
        }
    }

    /// The value of field `F`, into `event`.
    #[inline(always)]
    fn value<const F: usize>(&mut self, event: &mut Event<'a>) -> Option<()> {
        self.skip_ws();
        let first = self.peek()?;
        // Whether the value starts the way this field's values do: anything else can only
        // be `null`, which means absent for every optional field (required ones decline).
        let starts = match F {
            TIMESTAMP | DURATION_MS => first != b'n',
            RECORDS_IN | RECORDS_OUT | RECORDS_REJECTED | BYTES | ERRORS => first.is_ascii_digit(),
            QUALITY | ATTRIBUTES => first == b'{',
            UPSTREAM => first == b'[',
            _ => first == b'"',
        };
        if !starts {
            return (F > TIMESTAMP && self.null()).then_some(());
        }
        match F {
            PIPELINE => event.pipeline = Cow::Borrowed(self.name(MAX_NAME_LEN)?),
            STAGE => event.stage = Cow::Borrowed(self.name(MAX_NAME_LEN)?),
            TIMESTAMP => event.timestamp_ms = self.timestamp()?,
            EVENT_ID => event.event_id = Some(Cow::Borrowed(self.name(MAX_EVENT_ID_LEN)?)),
            CORRELATION_ID => {
                event.correlation_id = Some(Cow::Borrowed(self.name(MAX_CORRELATION_ID_LEN)?))
            }
            STATUS => event.status = self.status()?,
            RECORDS_IN => event.records_in = Some(self.count()?),
            RECORDS_OUT => event.records_out = Some(self.count()?),
            RECORDS_REJECTED => event.records_rejected = Some(self.count()?),
            BYTES => event.bytes = Some(self.count()?),
            ERRORS => event.errors = Some(self.count()?),
            DURATION_MS => event.duration_ms = Some(self.duration()?),
            QUALITY => event.quality = self.quality()?,
            UPSTREAM => event.upstream = self.upstream()?,
            _ => self.attributes()?,
        }
        Some(())
    }

    /// A string without escapes, borrowed from the input, after optional whitespace.
    #[inline(never)]
    fn string(&mut self) -> Option<&'a str> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return None;
        }
        self.quoted()
    }

    /// The string whose opening quote is the next byte, if it has no escapes: borrowed
    /// from the input. Its plain ASCII part is read [`CHUNK`] bytes at a time (see
    /// [`first_special`]), then, near the end of the message, eight at a time (see
    /// [`special_marks`]), inlined where strings are read on every event; the rest, if
    /// any, by [`Self::quoted_rest`].
    #[inline(always)]
    fn quoted(&mut self) -> Option<&'a str> {
        let start = self.pos + 1;
        let mut at = start;
        let end = loop {
            if let Some(chunk) = self.bytes.get(at..).and_then(<[u8]>::first_chunk::<CHUNK>) {
                match first_special(chunk) {
                    Some(first) if chunk[first] == b'"' => break at + first,
                    Some(_) => return self.quoted_rest(start, at),
                    None => at += CHUNK,
                }
            } else if let Some(chunk) = self.bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
                let marks = special_marks(u64::from_le_bytes(*chunk));
                if marks == 0 {
                    at += 8;
                    continue;
                }
                let first = (marks.trailing_zeros() / 8) as usize;
                if chunk[first] != b'"' {
                    return self.quoted_rest(start, at);
                }
                break at + first;
            } else {
                return self.quoted_rest(start, at);
            }
        };
        self.pos = end + 1;
        // SAFETY: every byte before `end` was found to be ASCII, which is valid UTF-8.
        // Checking this while finding the end, instead of checking all of a message's
        // bytes up front, saves about 5 % of an event's decoding.
        Some(unsafe { std::str::from_utf8_unchecked(&self.bytes[start..end]) })
    }

    /// The end of [`Self::quoted`], from `at` on, ASCII from `start` to there: the last
    /// few bytes of the message, a non-ASCII character, an escape or a control character.
    #[inline(never)]
    fn quoted_rest(&mut self, start: usize, at: usize) -> Option<&'a str> {
        let rest = self.bytes.get(at..)?;
        let n = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[n] != b'"' {
            return None; // an escape or a control character
        }
        let end = at + n;
        self.pos = end + 1;
        let raw = &self.bytes[start..end];
        if rest[..n].is_ascii() {
            // SAFETY: ASCII before `at` (see `quoted`) and from there, so valid UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(raw) })
        } else {
            std::str::from_utf8(raw).ok()
        }
    }

    /// A non-empty string of at most `max` bytes, its opening quote next. Longer ones may
    /// still be within `max` characters: the serde path counts those.
    #[inline(always)]
    fn name(&mut self, max: usize) -> Option<&'a str> {
        self.quoted().filter(|s| !s.is_empty() && s.len() <= max)
    }

    /// [`Self::name`] after optional whitespace.
    #[inline(always)]
    fn spaced_name(&mut self, max: usize) -> Option<&'a str> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return None;
        }
        self.name(max)
    }

    fn number(&mut self) -> Option<Number> {
        self.skip_ws();
        let negative = self.peek() == Some(b'-');
        self.pos += usize::from(negative);
        let (significand, int_digits) = self.digits(0);
        if int_digits == 0 || (int_digits > 1 && self.bytes[self.pos - int_digits] == b'0') {
            return None; // no digits, or a leading zero: not JSON
        }
        let mut digits = int_digits;
        let mut significand = significand;
        let mut exponent: i32 = 0;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let (s, n) = self.digits(significand);
            if n == 0 || digits + n > 19 {
                return None; // the same as below, before `n` meets the exponent's `i32`
            }
            (significand, digits, exponent, float) = (s, digits + n, -(n as i32), true);
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            let negative_exp = self.peek() == Some(b'-');
            self.pos += usize::from(matches!(self.peek(), Some(b'+' | b'-')));
            let (e, n) = self.digits(0);
            if n == 0 || n > 4 {
                return None;
            }
            let e = e as i32;
            exponent += if negative_exp { -e } else { e };
            float = true;
        }
        if digits > 19 {
            return None; // may not fit a u64: serde_json rounds those its own way
        }
        if !float {
            // serde_json makes `-0` a float and other negative integers signed ones;
            // no count accepts them, and figures rarely are.
            return (!negative).then_some(Number::Unsigned(significand));
        }
        // Clinger's fast path: a significand and a power of ten both exact in an `f64`
        // give a correctly rounded product or quotient in one operation. This is also
        // exactly what serde_json computes for them (it is not correctly rounded
        // beyond them, so those are left to it, to give the same bits).
        if significand > 1 << 53 || exponent.unsigned_abs() as usize >= EXACT_POW10.len() {
            return None;
        }
        let pow = EXACT_POW10[exponent.unsigned_abs() as usize];
        let x = if exponent >= 0 {
            significand as f64 * pow
        } else {
            significand as f64 / pow
        };
        Some(Number::Float(if negative { -x } else { x }))
    }

    /// Decimal digits from here, folded into `acc`, and how many there were. The fold
    /// wraps instead of checking each digit: a number of more than 19 digits in all is
    /// declined by the caller, and 19 digits cannot overflow a `u64`.
    fn digits(&mut self, mut acc: u64) -> (u64, usize) {
        let start = self.pos;
        let mut end = start;
        while let Some(&c @ b'0'..=b'9') = self.bytes.get(end) {
            acc = acc.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            end += 1;
        }
        self.pos = end;
        (acc, end - start)
    }

    /// A count: a plain integer of 1 to 19 digits (so it fits a `u64`) without a leading
    /// zero, and no fraction or exponent after. Anything else is declined, for the serde
    /// path to decide; the general number reader, which counts used to fall back on,
    /// accepted no count that this declines (a sign, a fraction or an exponent make a
    /// negative or floating-point number, and it too refuses leading zeros and more than
    /// 19 digits).
    #[inline(always)]
    fn count(&mut self) -> Option<u64> {
        let start = self.pos;
        let (n, len) = self.digits(0);
        let plain = (1..=19).contains(&len)
            && (len == 1 || self.bytes[start] != b'0')
            && !matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        plain.then_some(n)
    }

    fn figure(&mut self) -> Option<f64> {
        Some(self.number()?.as_f64()).filter(|x| x.abs() <= MAX_FIGURE)
    }

    fn duration(&mut self) -> Option<f64> {
        Some(self.number()?.as_f64()).filter(|x| *x >= 0.0 && *x <= MAX_DURATION_MS)
    }

    fn timestamp(&mut self) -> Option<i64> {
        let ms = if self.peek() == Some(b'"') {
            self.utc_timestamp()
                .or_else(|| crate::time::parse_rfc3339_ms(self.string()?))?
        } else {
            i64::try_from(self.count()?).ok()?
        };
        (MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS)
            .contains(&ms)
            .then_some(ms)
    }

    /// A quoted timestamp in the two shapes producers write, `YYYY-MM-DDTHH:MM:SS.fffZ`
    /// and `YYYY-MM-DDTHH:MM:SSZ`, read straight from the bytes (see [`utc_seconds`]),
    /// without the string reader: what `time::utc_ms` gives for them, which is what
    /// `parse_rfc3339_ms` gives. `None`, having read nothing, for anything else.
    fn utc_timestamp(&mut self) -> Option<i64> {
        let text = self.bytes.get(self.pos + 1..)?;
        let (head, tail) = text.split_first_chunk::<19>()?;
        let (millis, len) = match *tail {
            [b'.', a, b, c, b'Z', b'"', ..] => {
                let [a, b, c] = [a, b, c].map(|d| d.wrapping_sub(b'0'));
                if a > 9 || b > 9 || c > 9 {
                    return None;
                }
                (i64::from(a) * 100 + i64::from(b) * 10 + i64::from(c), 24)
            }
            [b'Z', b'"', ..] => (0, 20),
            _ => return None,
        };
        let seconds = utc_seconds(head)?;
        self.pos += len + 2;
        Some(seconds * 1_000 + millis)
    }

    fn status(&mut self) -> Option<Status> {
        // The four words compared in place, quotes and all, before the string reader: the
        // status is in every event and nearly always one of them as written here.
        let rest = &self.bytes[self.pos..];
        for (word, status) in [
            (&b"\"success\""[..], Status::Success),
            (b"\"failure\"", Status::Failure),
            (b"\"retry\"", Status::Retry),
            (b"\"skipped\"", Status::Skipped),
        ] {
            if rest.starts_with(word) {
                self.pos += word.len();
                return Some(status);
            }
        }
        match self.string()? {
            "success" => Some(Status::Success),
            "failure" => Some(Status::Failure),
            "retry" => Some(Status::Retry),
            "skipped" => Some(Status::Skipped),
            _ => None,
        }
    }

    /// The figures of `quality`, its opening brace next.
    fn quality(&mut self) -> Option<Vec<(Cow<'a, str>, f64)>> {
        let mut figures: Vec<(Cow<'a, str>, f64)> = Vec::new();
        self.pos += 1;
        if self.eat(b'}') {
            return Some(figures);
        }
        loop {
            let name = self.spaced_name(MAX_NAME_LEN)?;
            self.expect(b':')?;
            let x = self.figure()?;
            if figures.len() == MAX_QUALITY_FIGURES || figures.iter().any(|(n, _)| n == name) {
                return None;
            }
            figures.push((Cow::Borrowed(name), x));
            if self.delimiter(b'}')? {
                return Some(figures);
            }
        }
    }

    /// Checked as the serde path checks it, and kept as the text of its names; its
    /// opening bracket next.
    #[inline(always)]
    fn upstream(&mut self) -> Option<Upstream<'a>> {
        self.pos += 1;
        if self.eat(b']') {
            return Some(Upstream::default());
        }
        let start = self.pos;
        for _ in 0..MAX_UPSTREAM {
            self.spaced_name(MAX_NAME_LEN)?;
            let end = self.pos;
            if self.delimiter(b']')? {
                let text = &self.bytes[start..end];
                // SAFETY: the names were found to be UTF-8 by `quoted`, and what is
                // between them to be whitespace, commas and quotes: ASCII.
                return Some(Upstream::from_text(unsafe {
                    std::str::from_utf8_unchecked(text)
                }));
            }
        }
        None
    }

    /// Checked as the serde path checks them, and not kept; the opening brace next.
    #[inline(always)]
    fn attributes(&mut self) -> Option<()> {
        self.pos += 1;
        if self.eat(b'}') {
            return Some(());
        }
        for _ in 0..MAX_ATTRIBUTES {
            self.spaced_name(MAX_NAME_LEN)?;
            self.expect(b':')?;
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return None;
            }
            self.quoted().filter(|v| v.len() <= MAX_ATTRIBUTE_LEN)?;
            if self.delimiter(b'}')? {
                return Some(());
            }
        }
        None
    }

    /// The value of an unknown field, if it is not a container.
    fn skip_scalar(&mut self) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => [&b"null"[..], b"true", b"false"].iter().find_map(|word| {
                self.bytes[self.pos..].starts_with(word).then(|| {
                    self.pos += word.len();
                })
            }),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` with a valid date and a second below 60, to seconds since the
/// epoch, as `time::utc_ms` reads it (whose calendar arithmetic this repeats; a test
/// compares the two over every day of years 1999 to 2201 and more). Eight bytes at a
/// time, as three overlapping words: the punctuation compared under a mask, the digits
/// checked by their high nibbles (3 as they are, and 3 after adding 6; a carry out of a
/// byte needs one of 0xfa and above, which fails its own check), and each two digits
/// summed in place into the byte of the first. Every event has a timestamp: read pair by
/// pair through `utc_ms`, it cost 310 instructions an event, 226 this way.
#[inline(always)]
fn utc_seconds(head: &[u8; 19]) -> Option<i64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0xf0;
    const THREES: u64 = ONES * 0x30;
    // A word with `byte` at each of `positions` and zeros elsewhere; with 0xff, the mask
    // of those bytes.
    const fn bytes(positions: &[u32], byte: u8) -> u64 {
        let mut word = 0;
        let mut i = 0;
        while i < positions.len() {
            word |= (byte as u64) << (8 * positions[i]);
            i += 1;
        }
        word
    }
    // "YYYY-MM-", "DDTHH:MM" and, overlapping it, "HH:MM:SS".
    let (a, b, c) = {
        let (a, rest) = head.split_first_chunk::<8>()?;
        let (b, _) = rest.split_first_chunk::<8>()?;
        let (_, c) = head.split_last_chunk::<8>()?;
        (
            u64::from_le_bytes(*a),
            u64::from_le_bytes(*b),
            u64::from_le_bytes(*c),
        )
    };
    const A_PUNCT: u64 = bytes(&[4, 7], 0xff);
    const B_PUNCT: u64 = bytes(&[2, 5], 0xff);
    const C_PUNCT: u64 = bytes(&[5], 0xff);
    let punctuated = a & A_PUNCT == bytes(&[4, 7], b'-')
        && b & B_PUNCT == bytes(&[2], b'T') | bytes(&[5], b':')
        && c & C_PUNCT == bytes(&[5], b':');
    let not_digits = |w: u64| (w & HIGH ^ THREES) | (w.wrapping_add(ONES * 6) & HIGH ^ THREES);
    let digits = not_digits(a) & bytes(&[0, 1, 2, 3, 5, 6], 0xff) == 0
        && not_digits(b) & bytes(&[0, 1, 3, 4, 6, 7], 0xff) == 0
        && not_digits(c) & bytes(&[6, 7], 0xff) == 0;
    if !(punctuated && digits) {
        return None;
    }
    // Byte i of `pairs(w)` is ten times digit i plus digit i + 1: at most 165, even
    // where byte i is punctuation, so no byte carries into the next.
    let pairs = |w: u64| {
        let d = w & (ONES * 0x0f);
        d.wrapping_mul(10) + (d >> 8)
    };
    let byte = |w: u64, i: u32| ((w >> (8 * i)) & 0xff) as u32;
    let (pa, pb, pc) = (pairs(a), pairs(b), pairs(c));
    let year = byte(pa, 0) * 100 + byte(pa, 2);
    let (month, day) = (byte(pa, 5), byte(pb, 0));
    let (hour, minute, second) = (byte(pb, 3), byte(pb, 6), byte(pc, 6));
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's `days_from_civil`, as in `time`).
    let y = i64::from(year) - i64::from(month <= 2);
    let (era, yoe) = (y.div_euclid(400), y.rem_euclid(400));
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + i64::from(hour * 3_600 + minute * 60 + second))
}

/// Whether `rest` starts with `KEYS[field]`. The message's next 24 bytes (every key
/// with its colon fits) are compared with the key as three masked words: a key is
/// checked for every field of every event, and a libc `memcmp` call per key, or a
/// comparison a word at a time with bounds checks, cost more than that. Inlined where
/// `field` is a constant, the key's words are too.
#[inline(always)]
fn has_key(rest: &[u8], field: usize) -> bool {
    let Some(window) = rest.first_chunk::<KEY_WINDOW>() else {
        return rest.starts_with(KEYS[field]);
    };
    let (words, masks) = &KEY_WORDS[field];
    let mut differ = 0;
    for i in 0..3 {
        let mut word = [0; 8];
        word.copy_from_slice(&window[i * 8..i * 8 + 8]);
        differ |= (u64::from_le_bytes(word) ^ words[i]) & masks[i];
    }
    differ == 0
}

/// The bytes of a key window, and the longest of `KEYS`.
const KEY_WINDOW: usize = 24;

/// Each of `KEYS` as three little-endian words, zero after its end, and the masks of
/// its bytes in them.
const KEY_WORDS: [([u64; 3], [u64; 3]); KEYS.len()] = {
    let mut table = [([0; 3], [0; 3]); KEYS.len()];
    let mut k = 0;
    while k < KEYS.len() {
        let key = KEYS[k];
        assert!(key.len() <= KEY_WINDOW);
        let mut i = 0;
        while i < key.len() {
            table[k].0[i / 8] |= (key[i] as u64) << (8 * (i % 8));
            table[k].1[i / 8] |= 0xff << (8 * (i % 8));
            i += 1;
        }
        k += 1;
    }
    table
};

/// The bytes of a string [`first_special`] examines at a time.
#[cfg(target_arch = "x86_64")]
const CHUNK: usize = 16;
#[cfg(not(target_arch = "x86_64"))]
const CHUNK: usize = 8;

/// Where the first byte of `chunk` is that ends the plain ASCII part of a string: a
/// quote, a backslash, a control character or a non-ASCII byte. On x86_64 sixteen bytes
/// are compared at once with SSE2; strings are most of an event's bytes, and most are
/// shorter than that.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first_special(chunk: &[u8; CHUNK]) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
    // available; the unaligned load reads exactly the sixteen bytes `chunk` borrows.
    let mask = unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Compared as signed bytes, control characters and non-ASCII bytes (negative)
        // are both below 0x20.
        let below = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), below))
    };
    (mask != 0).then(|| mask.trailing_zeros() as usize)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn first_special(chunk: &[u8; CHUNK]) -> Option<usize> {
    let marks = special_marks(u64::from_le_bytes(*chunk));
    (marks != 0).then(|| (marks.trailing_zeros() / 8) as usize)
}

/// Marks the high bit of each byte of `v` (eight bytes of a string, little-endian) that
/// ends the plain ASCII part of a string: a quote, a backslash, a control character or a
/// non-ASCII byte. A borrow can also mark bytes above a marked one, never below: the
/// lowest mark is always right. Strings are most of an event's bytes.
#[inline(always)]
fn special_marks(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte below `n` (n ≤ 128).
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
    below(v ^ (ONES * u64::from(b'"')), 1)
        | below(v ^ (ONES * u64::from(b'\\')), 1)
        | below(v, 0x20)
        | v & HIGHS
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;

    fn number(text: &str) -> Option<Number> {
        let mut s = Scanner {
            bytes: text.as_bytes(),
            pos: 0,
        };
        s.number().filter(|_| s.pos == text.len())
    }

    /// A string read byte by byte: its text and the bytes it took, quotes included.
    fn plain_string(bytes: &[u8]) -> Option<(&str, usize)> {
        let body = bytes.strip_prefix(b"\"")?;
        let n = body
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if body[n] != b'"' {
            return None;
        }
        Some((std::str::from_utf8(&body[..n]).ok()?, n + 2))
    }

    #[test]
    fn strings_end_where_a_bytewise_reading_ends_them() {
        fn quoted(bytes: &[u8]) -> Option<(&str, usize)> {
            let mut s = Scanner { bytes, pos: 0 };
            s.quoted().map(|text| (text, s.pos))
        }
        for len in 0..40 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f, b' ', 0x7f, 0x80, 0xc3, 0xe9, 0xff] {
                    // Before it, a byte that borrows in the word arithmetic, the start of
                    // a two-byte character, or a plain one.
                    for before in [b'a', 0x01, 0x80, 0xc3] {
                        for end in [&b""[..], b"\"", b"\"}", b"\"\xa9\"xxxxxxxxxxxxxxxx"] {
                            let mut bytes = vec![b'"'];
                            bytes.resize(1 + len, b'a');
                            if at < len {
                                bytes[1 + at] = special;
                                if at > 0 {
                                    bytes[at] = before;
                                }
                            }
                            bytes.extend_from_slice(end);
                            assert_eq!(quoted(&bytes), plain_string(&bytes), "{bytes:?}");
                        }
                    }
                }
            }
        }
    }

    /// Every day of years 1999 to 2201 (and every day number, valid or not, of some
    /// months of years from 0 to 9999), in both shapes, at times spread over the day;
    /// then each byte of some of them changed to bytes that are and are not digits or
    /// punctuation. The scanner's reading must be `time::utc_ms`'s whenever the text has
    /// one of the two shapes, and nothing otherwise.
    #[test]
    fn utc_timestamps_read_as_time_reads_them() {
        fn read(text: &[u8]) -> Option<(i64, usize)> {
            let bytes = [b"\"", text, b"\"}"].concat();
            let mut s = Scanner {
                bytes: &bytes,
                pos: 0,
            };
            s.utc_timestamp().map(|ms| (ms, s.pos))
        }
        fn check(text: &[u8]) {
            let shaped = match text.len() {
                20 => text[19] == b'Z',
                24 => text[19] == b'.' && text[23] == b'Z',
                _ => false,
            };
            let expected = crate::time::utc_ms(text)
                .filter(|_| shaped)
                .map(|ms| (ms, text.len() + 2));
            assert_eq!(read(text), expected, "{}", String::from_utf8_lossy(text));
        }
        let mut texts = Vec::new();
        let mut date = chrono::NaiveDate::from_ymd_opt(1999, 1, 1).unwrap();
        let mut n = 0u32;
        while date.year() <= 2201 {
            let (h, m, s, ms) = (n % 24, n * 7 % 60, n * 13 % 60, n * 37 % 1000);
            texts.push(format!("{date}T{h:02}:{m:02}:{s:02}Z"));
            texts.push(format!("{date}T{h:02}:{m:02}:{s:02}.{ms:03}Z"));
            date = date.succ_opt().unwrap();
            n += 1;
        }
        for year in [
            0, 1, 4, 99, 100, 400, 1600, 1900, 1970, 2000, 2100, 2400, 9999,
        ] {
            for month in [0, 1, 2, 3, 4, 12, 13] {
                for day in 0..=32 {
                    texts.push(format!("{year:04}-{month:02}-{day:02}T23:59:59.999Z"));
                }
            }
        }
        for t in [
            "T24:00:00Z",
            "T23:60:00Z",
            "T23:59:60Z",
            "T00:00:00.1Z",
            "T00:00:00,000Z",
        ] {
            texts.push(format!("2026-11-24{t}"));
        }
        for text in &texts {
            check(text.as_bytes());
        }
        for text in ["2026-11-24T03:07:09.250Z", "2024-02-29T23:59:59Z"] {
            for at in 0..text.len() {
                for byte in [
                    b'0', b'9', b'/', b':', b'-', b'T', b'Z', b'.', b' ', b'a', 0xfa, 0xff,
                ] {
                    let mut changed = text.as_bytes().to_vec();
                    changed[at] = byte;
                    check(&changed);
                }
            }
        }
    }

    #[test]
    fn keys_match_as_starts_with_matches() {
        for (field, key) in KEYS.iter().enumerate() {
            for other in KEYS {
                for tail in [&b""[..], b"1", b"\"x\",\"stage\":\"s\",\"timestamp\":1}"] {
                    let text = [other, tail].concat();
                    for end in 0..=text.len() {
                        let rest = &text[..end];
                        assert_eq!(has_key(rest, field), rest.starts_with(key), "{rest:?}");
                        for at in 0..rest.len() {
                            let mut changed = rest.to_vec();
                            changed[at] ^= 0x20;
                            assert_eq!(has_key(&changed, field), changed.starts_with(key));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn numbers_convert_exactly_or_not_at_all() {
        assert_eq!(number("0"), Some(Number::Unsigned(0)));
        assert_eq!(
            number("18446744073709551615"),
            None,
            "20 digits: left to serde_json"
        );
        assert_eq!(
            number("9999999999999999999"),
            Some(Number::Unsigned(9_999_999_999_999_999_999))
        );
        assert_eq!(number("1830.5"), Some(Number::Float(1830.5)));
        assert_eq!(number("0.000031"), Some(Number::Float(0.000031)));
        assert_eq!(number("-2.5e-3"), Some(Number::Float(-0.0025)));
        assert_eq!(number("1E22"), Some(Number::Float(1e22)));
        assert_eq!(number("1e23"), None);
        assert_eq!(number("9007199254740993.0"), None, "beyond 2^53");
        for invalid in ["-", "01", "-01", "1.", ".5", "1e", "1e+", "+1", "-0", "-5"] {
            assert_eq!(number(invalid), None, "{invalid}");
        }
        let Some(Number::Float(x)) = number("-0.0") else {
            panic!("-0.0 is a float");
        };
        assert!(x == 0.0 && x.is_sign_negative());
    }
}
