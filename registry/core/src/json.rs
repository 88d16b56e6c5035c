//! The strict JSON an artifact must be: RFC 8259 text in valid UTF-8, with
//! the I-JSON restrictions of RFC 7493 (no duplicate member names, no lone
//! surrogates, numbers within IEEE 754 doubles) and a nesting limit.
//!
//! Lenient parsers differ exactly where this check refuses: one keeps the
//! first of two duplicate keys and another the last, one replaces invalid
//! UTF-8 and another stops. A registry that stored such a file would hand
//! ObjectOS, at restore, bytes whose meaning depends on who reads them
//! (Python's `json.load` refuses some outright), so the registry refuses
//! them at publish and names the byte where the trouble starts.
//!
//! The check keeps no value: only the member names of the objects open at
//! the current position, so it runs over a reader in bounded memory for any
//! artifact whose single objects are of ordinary size.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The nesting limit when none is configured (serde_json's own).
pub const DEFAULT_MAX_DEPTH: usize = 128;
/// The most a nesting limit can be set to: each level costs stack.
pub const MAX_DEPTH_LIMIT: usize = 1024;

/// The length of the longest string in JSON text fed in pieces: what
/// [`check_reader`] holds in memory at most for one string (it decodes each
/// string whole). A byte scan, correct for valid JSON; for invalid text it
/// is only an estimate, and the check refuses the text anyway.
#[derive(Clone, Debug, Default)]
pub struct LongestString {
    in_string: bool,
    escape: bool,
    current: u64,
    longest: u64,
}

impl LongestString {
    /// Scans the next piece of the text, jumping from quote to quote (and
    /// backslash) with memchr: it runs on every published byte.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if !self.in_string {
                let Some(i) = memchr::memchr(b'"', rest) else {
                    return;
                };
                self.in_string = true;
                self.current = 0;
                rest = &rest[i + 1..];
            } else if self.escape {
                self.escape = false;
                self.current += 1;
                rest = &rest[1..];
            } else {
                let Some(i) = memchr::memchr2(b'"', b'\\', rest) else {
                    self.current += rest.len() as u64;
                    return;
                };
                self.current += i as u64 + 1;
                if rest[i] == b'\\' {
                    self.escape = true;
                } else {
                    self.in_string = false;
                    self.longest = self.longest.max(self.current);
                }
                rest = &rest[i + 1..];
            }
        }
    }

    /// The longest string seen, in bytes (an unterminated one included).
    pub fn longest(&self) -> u64 {
        self.longest
            .max(if self.in_string { self.current } else { 0 })
    }
}

/// Why bytes are not strict JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Offset of the byte where the problem was found (0-based).
    pub offset: u64,
    /// Line and column (1-based) of that byte.
    pub line: usize,
    pub column: usize,
    /// What is wrong there.
    pub what: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {} (line {}, column {})",
            self.what, self.offset, self.line, self.column
        )
    }
}

impl std::error::Error for JsonError {}

/// Checks that `bytes` are strict JSON nested at most `max_depth` deep.
///
/// # Errors
/// The first problem found, with its byte offset.
pub fn check(bytes: &[u8], max_depth: usize) -> Result<(), JsonError> {
    let max_depth = max_depth.clamp(1, MAX_DEPTH_LIMIT);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let result = Strict {
        depth: 0,
        max_depth,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    let Err(e) = result else {
        return Ok(());
    };
    let line = e.line().max(1);
    let column = e.column();
    // The offset of the line's start, then the column within it.
    let start = if line == 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map_or(bytes.len(), |(i, _)| i + 1)
    };
    Err(JsonError {
        offset: (start + column.saturating_sub(1)) as u64,
        line,
        column: column.max(1),
        what: strip_position(&e.to_string()),
    })
}

/// Why a reader did not yield strict JSON.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not strict JSON.
    Json(JsonError),
    /// Reading failed.
    Io(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(e) => e.fmt(f),
            Self::Io(e) => write!(f, "reading the artifact: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// [`check`] over a reader (buffer it: it is read a byte at a time).
///
/// # Errors
/// The first problem found, or the read error.
pub fn check_reader(reader: impl Read, max_depth: usize) -> Result<(), ReadError> {
    let max_depth = max_depth.clamp(1, MAX_DEPTH_LIMIT);
    let mut counted = Counted {
        inner: reader,
        consumed: 0,
        line: 1,
        line_start: 0,
        io_error: None,
    };
    let result = {
        let mut de = serde_json::Deserializer::from_reader(&mut counted);
        // The depth is counted here, against the configured limit.
        de.disable_recursion_limit();
        let checked = Strict {
            depth: 0,
            max_depth,
        }
        .deserialize(&mut de);
        checked.and_then(|()| de.end())
    };
    let Err(e) = result else {
        return Ok(());
    };
    if let Some(io) = counted.io_error.take() {
        return Err(ReadError::Io(io));
    }
    let line = e.line().max(1);
    let column = e.column();
    // serde_json reports the line and column of the last byte it consumed;
    // the counting reader knows where that line starts.
    let offset = if line == counted.line {
        counted.line_start + column.saturating_sub(1) as u64
    } else {
        counted.consumed.saturating_sub(1)
    };
    let what = strip_position(&e.to_string());
    Err(ReadError::Json(JsonError {
        offset,
        line,
        column: column.max(1),
        what,
    }))
}

/// serde_json's message without its " at line L column C" suffix.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A reader that counts what it hands out and where the current line began.
struct Counted<R> {
    inner: R,
    consumed: u64,
    line: usize,
    line_start: u64,
    io_error: Option<std::io::Error>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                for (i, b) in buf[..n].iter().enumerate() {
                    if *b == b'\n' {
                        self.line += 1;
                        self.line_start = self.consumed + i as u64 + 1;
                    }
                }
                self.consumed += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = std::io::Error::new(e.kind(), e.to_string());
                self.io_error = Some(e);
                Err(copy)
            }
        }
    }
}

/// One JSON value, checked and dropped.
#[derive(Clone, Copy)]
struct Strict {
    depth: usize,
    max_depth: usize,
}

impl Strict {
    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= self.max_depth {
            return Err(E::custom(format_args!(
                "nested deeper than the limit of {} levels",
                self.max_depth
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // serde_json already refuses what overflows a double.
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        // Reaching here means serde_json decoded the string: valid UTF-8,
        // escapes well-formed, no lone surrogate, no raw control character.
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        let mut names = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if names.contains(&name) {
                return Err(de::Error::custom(format_args!(
                    "duplicate member name {}",
                    crate::error::shown(&name)
                )));
            }
            map.next_value_seed(inner)?;
            names.insert(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(bytes: &[u8]) -> JsonError {
        check(bytes, DEFAULT_MAX_DEPTH).expect_err("must be refused")
    }

    #[test]
    fn accepts_ordinary_json() {
        for ok in [
            &br#"{"a":1,"b":[true,false,null,"x\u00e9\ud83d\ude00"],"c":{"a":1e300}}"#[..],
            b" [ ] ",
            b"\"text\"",
            b"-0.5e-10",
            "{\"caf\u{e9}\":\"\u{1f600}\"}".as_bytes(),
        ] {
            check(ok, DEFAULT_MAX_DEPTH).unwrap();
        }
    }

    #[test]
    fn refuses_invalid_utf8_with_its_offset() {
        let e = refused(b"{\"a\":\"\xff\xfe\"}");
        assert!(e.what.contains("unicode"), "{e}");
        assert_eq!(e.line, 1);
        assert!((5..=8).contains(&e.offset), "{e}");
        refused(b"{\"a\":\"\xc0\xaf\"}"); // overlong
        refused(b"{\"a\":\"\xed\xa0\x80\"}"); // an encoded surrogate
    }

    #[test]
    fn refuses_lone_surrogates() {
        refused(br#"["\ud800"]"#);
        refused(br#"["\udc00x"]"#);
        refused(br#"["\ud800\u0041"]"#);
    }

    #[test]
    fn refuses_duplicate_names_at_any_depth() {
        let e = refused(br#"{"a":1,"b":{"x":1,"x":2}}"#);
        assert!(e.what.contains("duplicate member name \"x\""), "{e}");
        // The second "x" ends at byte 22.
        assert!((19..=23).contains(&e.offset), "{e}");
        // The same name in sibling objects is fine.
        check(br#"[{"x":1},{"x":2}]"#, DEFAULT_MAX_DEPTH).unwrap();
    }

    #[test]
    fn refuses_numbers_beyond_a_double() {
        assert!(refused(b"[1e400]").what.contains("out of range"));
        check(b"[123456789012345678901234567890]", DEFAULT_MAX_DEPTH).unwrap();
    }

    #[test]
    fn enforces_the_nesting_limit() {
        let deep = |n: usize| {
            let mut v = "[".repeat(n);
            v.push_str(&"]".repeat(n));
            v
        };
        check(deep(128).as_bytes(), 128).unwrap();
        let e = refused(deep(129).as_bytes());
        assert!(e.what.contains("limit of 128"), "{e}");
        // Found at the 129th `[` (or, reading a stream, just after it).
        assert!((128..=129).contains(&e.offset), "{e}");
        // 100,000 open brackets: refused at the limit, without recursing.
        let e = check("[".repeat(100_000).as_bytes(), 16).unwrap_err();
        assert_eq!(e.offset, 16);
        let ReadError::Json(r) = check_reader("[".repeat(100_000).as_bytes(), 16).unwrap_err()
        else {
            panic!("not a JSON error");
        };
        assert!((16..=17).contains(&r.offset), "{r}");
        // The hard cap holds whatever is asked for.
        check(deep(MAX_DEPTH_LIMIT).as_bytes(), usize::MAX).unwrap();
        check(deep(MAX_DEPTH_LIMIT + 1).as_bytes(), usize::MAX).unwrap_err();
    }

    #[test]
    fn refuses_what_is_not_json_at_all() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\":1}x",
            b"{'a':1}",
            b"[1,]",
            b"\"tab\there\"",
            b"NaN",
        ] {
            check(bad, DEFAULT_MAX_DEPTH).unwrap_err();
        }
    }

    #[test]
    fn the_longest_string_is_found_across_pieces() {
        let text = br#"{"ab":"x\"yz","k":["0123456789"]}"#;
        let mut whole = LongestString::default();
        whole.update(text);
        assert_eq!(whole.longest(), 11); // 0123456789 and its closing quote
        let mut pieces = LongestString::default();
        for piece in text.chunks(3) {
            pieces.update(piece);
        }
        assert_eq!(pieces.longest(), whole.longest());
    }

    /// The scan a byte at a time, as the jumping one must behave.
    fn longest_by_bytes(text: &[u8]) -> u64 {
        let (mut in_string, mut escape, mut current, mut longest) = (false, false, 0u64, 0u64);
        for &b in text {
            if in_string {
                current += 1;
                if escape {
                    escape = false;
                } else if b == b'\\' {
                    escape = true;
                } else if b == b'"' {
                    in_string = false;
                    longest = longest.max(current);
                }
            } else if b == b'"' {
                in_string = true;
                current = 0;
            }
        }
        longest.max(if in_string { current } else { 0 })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn jumping_scan_agrees_with_the_byte_scan(
            text in proptest::collection::vec(
                proptest::sample::select(vec![b'"', b'\\', b'a', b'{', b'\n']), 0..200),
            cut in 1usize..17,
        ) {
            let mut pieces = LongestString::default();
            for piece in text.chunks(cut) {
                pieces.update(piece);
            }
            proptest::prop_assert_eq!(pieces.longest(), longest_by_bytes(&text));
        }
    }

    #[test]
    fn offsets_count_lines() {
        let e = refused(b"{\n  \"a\": 1,\n  \"a\": 2\n}");
        assert_eq!(e.line, 3);
        assert!((12..=20).contains(&e.offset), "{e}");
    }
}
