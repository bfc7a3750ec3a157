//! Splitting a QMP byte stream into JSON values, as QEMU's JSON streamer does
//! (`qobject/json-streamer.c`): values may span lines or share one, and nothing depends on
//! newlines (the `qemu.qmp` Python library sends no newline at all). Accepts QEMU's extensions:
//! `'single-quoted'` strings and the `\'` escape.
//!
//! Limits protect the process: a request longer than [`MAX_REQUEST_BYTES`] or nested deeper than
//! [`MAX_NESTING`] is answered with one error and the rest of that value is skipped (its
//! structure is still followed, so the next request parses cleanly). A lexical error (a control
//! character or a byte that cannot start a token) resets the parser, which is how the QMP spec
//! tells clients to force it into a known state.

use serde_json::Value;

/// Longest request accepted, in bytes of JSON text.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Deepest nesting of arrays and objects accepted (serde_json itself stops at 128).
pub const MAX_NESTING: usize = 100;

/// What the stream produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A complete JSON value (a request, if it is an object).
    Value(Value),
    /// Input that is not JSON: the `desc` of a GenericError reply (sent without an `id`).
    Error(String),
}

/// The incremental splitter: feed it bytes, get complete values.
#[derive(Debug, Default)]
pub struct JsonStream {
    /// The current value, normalised to standard JSON (double quotes, no `\'`).
    buf: Vec<u8>,
    /// Open arrays and objects.
    depth: usize,
    /// Inside a string opened by this quote character.
    quote: Option<u8>,
    /// The previous byte was a backslash inside a string.
    escape: bool,
    /// Collecting a bare top-level token (number, `true`, a typo...).
    scalar: bool,
    /// Discarding the rest of a value that broke a limit.
    skipping: bool,
}

impl JsonStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Is part of a value buffered, waiting for more bytes?
    pub fn pending(&self) -> bool {
        self.depth > 0 || self.quote.is_some() || self.scalar
    }

    /// Consume `bytes`; return every value (or error) they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        for &b in bytes {
            self.byte(b, &mut out);
        }
        out
    }

    fn reset(&mut self) {
        *self = Self::default();
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<Item>) {
        if self.skipping {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_REQUEST_BYTES {
            out.push(Item::Error(format!(
                "JSON parse error, request longer than {MAX_REQUEST_BYTES} bytes"
            )));
            self.buf = Vec::new();
            self.skipping = true;
        }
    }

    /// A value ended: parse it (unless it was being skipped).
    fn complete(&mut self, out: &mut Vec<Item>) {
        let buf = std::mem::take(&mut self.buf);
        let skipped = std::mem::replace(&mut self.skipping, false);
        let was_scalar = std::mem::replace(&mut self.scalar, false);
        if skipped {
            return;
        }
        out.push(match serde_json::from_slice::<Value>(&buf) {
            Ok(v) => Item::Value(v),
            Err(_) if was_scalar => {
                let text = String::from_utf8_lossy(&buf);
                if text.bytes().all(|c| c.is_ascii_alphabetic()) {
                    Item::Error(format!("JSON parse error, invalid keyword '{text}'"))
                } else {
                    Item::Error(format!("JSON parse error, invalid token '{text}'"))
                }
            }
            Err(e) => Item::Error(parse_error(&e)),
        });
    }

    fn lexical_error(&mut self, b: u8, out: &mut Vec<Item>) {
        let c = if b < 0x80 {
            char::from(b)
        } else {
            char::REPLACEMENT_CHARACTER
        };
        out.push(Item::Error(format!("JSON parse error, stray '{c}'")));
        self.reset();
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Item>) {
        if let Some(q) = self.quote {
            return self.string_byte(q, b, out);
        }
        if self.scalar && !is_scalar_byte(b) {
            self.complete(out);
        }
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                if self.depth > 0 {
                    self.emit(&[b], out);
                }
            }
            b'"' | b'\'' => {
                self.quote = Some(b);
                self.emit(b"\"", out);
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == MAX_NESTING + 1 && !self.skipping {
                    out.push(Item::Error("JSON nesting depth limit exceeded".into()));
                    self.buf = Vec::new();
                    self.skipping = true;
                }
                self.emit(&[b], out);
            }
            b'}' | b']' => {
                if self.depth == 0 {
                    out.push(Item::Error("JSON parse error, expecting value".into()));
                    return;
                }
                self.depth -= 1;
                self.emit(&[b], out);
                if self.depth == 0 {
                    self.complete(out);
                }
            }
            b if is_scalar_byte(b) => {
                if self.depth == 0 {
                    self.scalar = true;
                }
                self.emit(&[b], out);
            }
            b',' | b':' if self.depth > 0 => self.emit(&[b], out),
            b',' | b':' => out.push(Item::Error("JSON parse error, expecting value".into())),
            _ => self.lexical_error(b, out),
        }
    }

    fn string_byte(&mut self, quote: u8, b: u8, out: &mut Vec<Item>) {
        if !(0x20..0xfe).contains(&b) {
            return self.lexical_error(b, out);
        }
        if self.escape {
            self.escape = false;
            // QEMU's extension: \' is a single quote in either kind of string.
            if b == b'\'' {
                return self.emit(b"'", out);
            }
            return self.emit(&[b'\\', b], out);
        }
        match b {
            b'\\' => self.escape = true,
            b if b == quote => {
                self.quote = None;
                self.emit(b"\"", out);
                if self.depth == 0 {
                    self.complete(out);
                }
            }
            b'"' => self.emit(b"\\\"", out),
            _ => self.emit(&[b], out),
        }
    }
}

/// Bytes that may form a bare token: numbers and the literals `true`, `false`, `null`.
fn is_scalar_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')
}

/// serde_json's message without its position, worded as QEMU words the common case.
fn parse_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    if msg.starts_with("expected value") {
        return "JSON parse error, expecting value".into();
    }
    format!("JSON parse error, {msg}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn values(s: &mut JsonStream, input: &[u8]) -> Vec<Item> {
        s.push(input)
    }

    fn err(s: &str) -> Item {
        Item::Error(s.into())
    }

    #[test]
    fn values_span_lines_and_share_them() {
        let mut s = JsonStream::new();
        assert_eq!(values(&mut s, b"{\"a\":"), vec![]);
        assert!(s.pending());
        assert_eq!(values(&mut s, b"\n 1}"), vec![Item::Value(json!({"a": 1}))]);
        assert!(!s.pending());
        assert_eq!(
            values(&mut s, b"{\"b\":2}[3]  {}"),
            vec![
                Item::Value(json!({"b": 2})),
                Item::Value(json!([3])),
                Item::Value(json!({}))
            ]
        );
    }

    #[test]
    fn byte_at_a_time_gives_the_same_values() {
        let input = br#"{"execute":"x","arguments":{"s":"a}\"b]","n":[1,{"d":-2.5e3}]},"id":'q'}"#;
        let mut s = JsonStream::new();
        let mut got = Vec::new();
        for b in input {
            got.extend(s.push(&[*b]));
        }
        assert_eq!(
            got,
            vec![Item::Value(
                json!({"execute":"x","arguments":{"s":"a}\"b]","n":[1,{"d":-2500.0}]},"id":"q"})
            )]
        );
    }

    #[test]
    fn single_quotes_and_escaped_single_quote() {
        let mut s = JsonStream::new();
        assert_eq!(
            values(&mut s, br#"{'id':'it\'s "q"', "x":"\'y\n"}"#),
            vec![Item::Value(json!({"id": "it's \"q\"", "x": "'y\n"}))]
        );
    }

    #[test]
    fn top_level_scalars_and_strays() {
        let mut s = JsonStream::new();
        assert_eq!(
            values(&mut s, b"12 true \"s\" null\n"),
            vec![
                Item::Value(json!(12)),
                Item::Value(json!(true)),
                Item::Value(json!("s")),
                Item::Value(json!(null))
            ]
        );
        assert_eq!(
            values(&mut s, b"xyz\n}\n1x\n"),
            vec![
                err("JSON parse error, invalid keyword 'xyz'"),
                err("JSON parse error, expecting value"),
                err("JSON parse error, invalid token '1x'"),
            ]
        );
        // A scalar ends at a structural character too.
        assert_eq!(
            values(&mut s, b"7{}"),
            vec![Item::Value(json!(7)), Item::Value(json!({}))]
        );
    }

    #[test]
    fn syntax_errors_do_not_lose_the_next_value() {
        let mut s = JsonStream::new();
        assert_eq!(
            values(&mut s, b"{\"execute\": }\n{\"a\":1}"),
            vec![
                err("JSON parse error, expecting value"),
                Item::Value(json!({"a": 1}))
            ]
        );
        let got = values(&mut s, b"{\"a\" 1}{\"b\":[1,]}");
        assert!(
            matches!(&got[0], Item::Error(e) if e.starts_with("JSON parse error, expected `:`")),
            "{got:?}"
        );
        assert!(
            matches!(&got[1], Item::Error(e) if e.starts_with("JSON parse error, ")),
            "{got:?}"
        );
    }

    #[test]
    fn control_characters_reset_the_parser() {
        let mut s = JsonStream::new();
        assert_eq!(
            values(&mut s, b"{\"execute\":\"q\",\x01{\"id\":1}"),
            vec![
                err("JSON parse error, stray '\u{1}'"),
                Item::Value(json!({"id": 1}))
            ]
        );
        assert_eq!(
            values(&mut s, b"[\"x\xff\n{\"id\":2}"),
            vec![
                err("JSON parse error, stray '\u{fffd}'"),
                Item::Value(json!({"id": 2}))
            ]
        );
        // A raw newline cannot be inside a string: it ends the broken value.
        assert_eq!(
            values(&mut s, b"{\"a\":\"x\n{\"id\":3}"),
            vec![
                err("JSON parse error, stray '\n'"),
                Item::Value(json!({"id": 3}))
            ]
        );
        assert!(!s.pending());
    }

    #[test]
    fn invalid_utf8_inside_a_string_is_an_error() {
        let mut s = JsonStream::new();
        let got = values(&mut s, b"{\"id\":\"\xc3\x28\"}{\"id\":\"\xc3\xa9\"}");
        assert!(
            matches!(&got[0], Item::Error(e) if e.starts_with("JSON parse error")),
            "{got:?}"
        );
        assert_eq!(got[1], Item::Value(json!({"id": "\u{e9}"})));
    }

    #[test]
    fn oversized_requests_are_refused_once_and_skipped() {
        let mut s = JsonStream::new();
        let big = format!(
            "{{\"id\":\"{}\",\"x\":[{{}}]}}",
            "a".repeat(MAX_REQUEST_BYTES)
        );
        let mut got = s.push(big.as_bytes());
        got.extend(s.push(b"{\"id\":\"next\"}"));
        assert_eq!(
            got,
            vec![
                err("JSON parse error, request longer than 65536 bytes"),
                Item::Value(json!({"id": "next"}))
            ]
        );
        assert!(s.buf.capacity() <= 2 * MAX_REQUEST_BYTES + 64);
    }

    #[test]
    fn deep_nesting_is_refused_and_skipped() {
        let mut s = JsonStream::new();
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let mut got = s.push(deep.as_bytes());
        got.extend(s.push(b"{\"ok\":true}"));
        assert_eq!(
            got,
            vec![
                err("JSON nesting depth limit exceeded"),
                Item::Value(json!({"ok": true}))
            ]
        );
        let fine = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert!(matches!(
            s.push(fine.as_bytes()).as_slice(),
            [Item::Value(_)]
        ));
    }
}
