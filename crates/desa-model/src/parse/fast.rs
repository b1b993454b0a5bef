//! The fast path of event parsing: a byte scanner for the event object as
//! producers send it.
//!
//! It decodes exactly what the typed serde decode (`WireEvent`) decodes, or gives up: it returns `None` for anything it does not handle
//! itself — an escape sequence in a string, an unknown or repeated key, a
//! number that is out of range or not an integer where one is due, nesting
//! deeper than [`MAX_DEPTH`] in `metadata`, any syntax error — and the caller
//! then takes the serde path, which accepts or rejects with its message. So
//! the scanner may only ever be less permissive than serde, never different;
//! `tests::agrees_with_serde` checks that on mutated events.

use std::borrow::Cow;

use super::{Decoded, WireLocation};

/// Nesting inside `metadata` the scanner follows before leaving it to serde.
const MAX_DEPTH: usize = 64;

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace (space, tab, line feed, carriage return).
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let s = &self.text[start..self.at];
        self.at += 1;
        Some(s)
    }

    /// The text of a number in JSON's grammar, and whether it is an integer
    /// (no fraction, no exponent).
    fn number(&mut self) -> Option<(&'a str, bool)> {
        self.ws();
        let start = self.at;
        let digits = |s: &mut Self| {
            let from = s.at;
            while let Some(b'0'..=b'9') = s.peek() {
                s.at += 1;
            }
            s.at - from
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            integer = false;
            if digits(self) == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some((&self.text[start..self.at], integer))
    }

    /// A finite f64, rounded as serde_json's `float_roundtrip` rounds it.
    fn float(&mut self) -> Option<f64> {
        let (text, _) = self.number()?;
        let x: f64 = text.parse().ok()?;
        // Out of range is serde's error to report; an exponent that rounds
        // to zero is left to serde too rather than reasoned about here.
        let tiny = x == 0.0 && text.contains(['e', 'E']);
        (x.is_finite() && !tiny).then_some(x)
    }

    /// A non-negative integer that fits an i64. Anything else is left to
    /// serde: it reads negative timestamps (which validation then rejects)
    /// and refuses fractional ones.
    fn timestamp(&mut self) -> Option<i64> {
        let (text, integer) = self.number()?;
        if !integer || text.starts_with('-') {
            return None;
        }
        text.parse().ok()
    }

    /// After a member or element: `true` at a comma (another follows),
    /// `false` at `close` (consumed), `None` at anything else.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let b = self.peek()?;
        if b == b',' || b == close {
            self.at += 1;
            return Some(b == b',');
        }
        None
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.ws();
        self.text[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// Skips one JSON value, checking its syntax.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'{' => {
                self.at += 1;
                if self.eat(b'}').is_some() {
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.eat(b':')?;
                    self.skip_value(depth + 1)?;
                    if !self.more(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                self.at += 1;
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if !self.more(b']')? {
                        return Some(());
                    }
                }
            }
            b'"' => self.string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(drop),
        }
    }

    /// `{"latitude": .., "longitude": ..}` in either order, nothing else.
    fn location(&mut self) -> Option<WireLocation> {
        self.eat(b'{')?;
        let (mut lat, mut lon) = (None, None);
        loop {
            let slot = match self.string()? {
                "latitude" => &mut lat,
                "longitude" => &mut lon,
                _ => return None,
            };
            self.eat(b':')?;
            if slot.replace(self.float()?).is_some() {
                return None;
            }
            if !self.more(b'}')? {
                break;
            }
        }
        Some(WireLocation {
            latitude: lat?,
            longitude: lon?,
        })
    }
}

/// The event in `text`, or `None` to have serde decode it.
pub(super) fn scan(text: &str) -> Option<Decoded<'_>> {
    let mut s = Scanner { text, at: 0 };
    s.eat(b'{')?;
    let mut device_id = None;
    let mut timestamp = None;
    let mut event_type = None;
    let mut value = None;
    let mut location = None;
    // Outer None: absent; Some(None): null.
    let mut metadata: Option<Option<&str>> = None;
    if s.eat(b'}').is_none() {
        loop {
            let key = s.string()?;
            s.eat(b':')?;
            let fresh = match key {
                "device_id" => device_id.replace(s.string()?).is_none(),
                "timestamp" => timestamp.replace(s.timestamp()?).is_none(),
                "type" => event_type.replace(s.string()?).is_none(),
                "value" => value.replace(s.float()?).is_none(),
                "location" => location.replace(s.location()?).is_none(),
                "metadata" => {
                    s.ws();
                    let start = s.at;
                    let raw = if s.literal("null").is_some() {
                        None
                    } else {
                        s.skip_value(0)?;
                        Some(&text[start..s.at])
                    };
                    metadata.replace(raw).is_none()
                }
                _ => return None,
            };
            if !fresh {
                return None;
            }
            if !s.more(b'}')? {
                break;
            }
        }
    }
    s.ws();
    if s.at != text.len() {
        return None;
    }
    Some(Decoded {
        device_id: Cow::Borrowed(device_id?),
        timestamp: timestamp?,
        event_type: Cow::Borrowed(event_type?),
        value: value?,
        location: location?,
        metadata: metadata.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::scan;
    use crate::parse::{decode_serde, Decoded};

    fn same(a: &Decoded<'_>, b: &Decoded<'_>) -> bool {
        a.device_id == b.device_id
            && a.timestamp == b.timestamp
            && a.event_type == b.event_type
            && a.value.to_bits() == b.value.to_bits()
            && a.location.latitude.to_bits() == b.location.latitude.to_bits()
            && a.location.longitude.to_bits() == b.location.longitude.to_bits()
            && a.metadata == b.metadata
    }

    /// Whatever the scanner decodes, serde decodes the same way.
    fn check(text: &str) -> bool {
        let Some(fast) = scan(text) else {
            return false;
        };
        match decode_serde(text) {
            Ok(slow) => assert!(same(&fast, &slow), "scanner and serde differ on {text:?}"),
            Err(e) => panic!("scanner accepted what serde refuses ({e}): {text:?}"),
        }
        true
    }

    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\t",
        "\"",
        "\\",
        "\\n",
        "\\u00e9",
        "-",
        "0",
        "00",
        "1",
        "9",
        ".",
        "e",
        "E",
        "+",
        "e-400",
        "e400",
        "1e5",
        "-0",
        "-0.0",
        "0.5e-3",
        "18446744073709551616",
        "9223372036854775808",
        "null",
        "true",
        "fals",
        "nul",
        "\"device_id\"",
        "\"timestamp\"",
        "\"type\"",
        "\"value\"",
        "\"location\"",
        "\"metadata\"",
        "\"latitude\"",
        "\"longitude\"",
        "\"other\"",
        "\u{1}",
        "é",
        "\"x\"",
    ];

    #[test]
    fn decodes_the_usual_events() {
        for text in [
            r#"{"device_id":"d","timestamp":5,"type":"t","value":1.5,"location":{"latitude":1,"longitude":2}}"#,
            r#" { "type" : "t" , "value" : -0 , "timestamp" : 0 , "device_id" : "dé" , "location" : { "longitude" : -180 , "latitude" : 90.0e0 } } "#,
            r#"{"device_id":"d","timestamp":5,"type":"t","value":1E-7,"location":{"latitude":1,"longitude":2},"metadata":{"a":[1,{"b":null}],"c":"x"}}"#,
            r#"{"device_id":"d","timestamp":5,"type":"t","value":123456789012345678901234,"location":{"latitude":1,"longitude":2},"metadata":null}"#,
        ] {
            assert!(check(text), "the scanner should decode {text}");
        }
    }

    #[test]
    fn leaves_escapes_unknown_and_repeated_keys_to_serde() {
        for text in [
            r#"{"device_id":"d\n","timestamp":5,"type":"t","value":1,"location":{"latitude":1,"longitude":2}}"#,
            r#"{"device_id":"d","timestamp":5,"type":"t","value":1,"location":{"latitude":1,"longitude":2},"x":1}"#,
            r#"{"device_id":"d","device_id":"e","timestamp":5,"type":"t","value":1,"location":{"latitude":1,"longitude":2}}"#,
            r#"{"device_id":"d","timestamp":5.0,"type":"t","value":1,"location":{"latitude":1,"longitude":2}}"#,
            r#"{"device_id":"d","timestamp":5,"type":"t","value":1e400,"location":{"latitude":1,"longitude":2}}"#,
        ] {
            assert!(
                scan(text).is_none(),
                "the scanner should leave {text} to serde"
            );
        }
    }

    #[test]
    fn agrees_with_serde() {
        let base = r#"{"device_id":"dev-1","timestamp":1767225600,"type":"co2","value":691.716,"location":{"latitude":40.57484458498868,"longitude":-74.60862496945775},"metadata":{"fw":"1.0.1","battery":0.09}}"#;
        let mut rng = StdRng::seed_from_u64(17);
        let mut decoded = 0;
        for _ in 0..200_000 {
            let mut text = base.to_owned();
            for _ in 0..rng.gen_range(1..4) {
                let mut at = rng.gen_range(0..=text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + rng.gen_range(0..4)).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                let piece = PIECES[rng.gen_range(0..PIECES.len())];
                text.replace_range(at..end, piece);
            }
            if check(&text) {
                decoded += 1;
            }
        }
        // The mutations must leave some events the scanner decodes, or the
        // comparison above tested nothing.
        assert!(decoded > 5_000, "only {decoded} mutated events decoded");
    }
}
