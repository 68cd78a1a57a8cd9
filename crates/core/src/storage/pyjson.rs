//! JSON text exactly as Python's `json.dumps(obj, indent=2)` writes it: two-space indent, `", "`
//! is never used (Python 3 uses `","` + newline when indenting), `": "` after keys, `{}`/`[]` for
//! empty containers, non-ASCII escaped as `\uXXXX` (UTF-16 surrogate pairs above the BMP), and no
//! trailing newline. The original's readers don't care, but byte parity lets users diff runs.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, PrettyFormatter};

/// Python `json.dumps(value, indent=2)`.
pub fn to_string_indent2(value: &impl Serialize) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(256);
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, PyFormatter { inner: PrettyFormatter::with_indent(b"  ") });
    value.serialize(&mut ser)?;
    Ok(String::from_utf8(out).expect("escaped output is ASCII"))
}

/// Python `json.dumps(value)` (no indent): `", "` and `": "` separators, ASCII-escaped.
pub fn to_string_compact(value: &impl Serialize) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyCompact);
    value.serialize(&mut ser)?;
    Ok(String::from_utf8(out).expect("escaped output is ASCII"))
}

struct PyFormatter<'a> {
    inner: PrettyFormatter<'a>,
}

fn write_ascii_fragment<W: ?Sized + io::Write>(w: &mut W, fragment: &str) -> io::Result<()> {
    let mut start = 0;
    for (i, ch) in fragment.char_indices() {
        if ch.is_ascii() {
            continue;
        }
        w.write_all(&fragment.as_bytes()[start..i])?;
        let mut buf = [0u16; 2];
        for unit in ch.encode_utf16(&mut buf) {
            write!(w, "\\u{:04x}", unit)?;
        }
        start = i + ch.len_utf8();
    }
    w.write_all(&fragment.as_bytes()[start..])
}

/// Python escapes control characters with lowercase hex (`\u001f`) like serde_json; both use the
/// short forms `\n`, `\t`, ... The only difference is `\u007f`, which Python leaves raw too.
macro_rules! py_string_methods {
    () => {
        fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
            write_ascii_fragment(w, fragment)
        }
        fn write_char_escape<W: ?Sized + io::Write>(&mut self, w: &mut W, e: CharEscape) -> io::Result<()> {
            serde_json::ser::CompactFormatter.write_char_escape(w, e)
        }
        fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, v: f64) -> io::Result<()> {
            write_py_float(w, v)
        }
        fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, v: f32) -> io::Result<()> {
            write_py_float(w, v as f64)
        }
    };
}

/// Python's float repr: shortest round-trip digits, always with `.0` or an exponent.
fn write_py_float<W: ?Sized + io::Write>(w: &mut W, v: f64) -> io::Result<()> {
    if !v.is_finite() {
        return w.write_all(if v.is_nan() {
            b"NaN"
        } else if v > 0.0 {
            b"Infinity"
        } else {
            b"-Infinity"
        });
    }
    let abs = v.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Python: 1e-05, 1e+16, 1.5e-07
        let s = format!("{:e}", v);
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = e.parse().unwrap_or(0);
        return write!(w, "{}e{}{:02}", m, if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    if v == 0.0 {
        // Most of an embedding file is zeros (the scripted brain's vectors are sparse).
        return w.write_all(if v.is_sign_negative() { b"-0.0" } else { b"0.0" });
    }
    // At most 24 characters in this range (17 digits, a sign, a point and leading zeros), so a
    // buffer on the stack rather than a String per number: embedding files hold thousands.
    let mut arr = [0u8; 32];
    let mut buf = io::Cursor::new(&mut arr[..]);
    io::Write::write_fmt(&mut buf, format_args!("{}", v))?;
    let n = buf.position() as usize;
    let s = &arr[..n];
    w.write_all(s)?;
    if s.contains(&b'.') {
        Ok(())
    } else {
        w.write_all(b".0")
    }
}

impl Formatter for PyFormatter<'_> {
    py_string_methods!();
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.inner.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.inner.begin_object_key(w, first)
    }
    fn end_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object_key(w)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object_value(w)
    }
}

struct PyCompact;

impl Formatter for PyCompact {
    py_string_methods!();
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_indent2() {
        // Produced by CPython 3.11: json.dumps({...}, indent=2)
        let v = json!({"persona": {"John Lin": {"movement": [6, 10], "pronunciatio": "\u{1F4A4}", "chat": null, "x": {}, "y": [], "s": 3.0}}, "meta": {"f": 0.1}});
        let expected = "{\n  \"persona\": {\n    \"John Lin\": {\n      \"movement\": [\n        6,\n        10\n      ],\n      \"pronunciatio\": \"\\ud83d\\udca4\",\n      \"chat\": null,\n      \"x\": {},\n      \"y\": [],\n      \"s\": 3.0\n    }\n  },\n  \"meta\": {\n    \"f\": 0.1\n  }\n}";
        assert_eq!(to_string_indent2(&v).unwrap(), expected);
    }

    #[test]
    fn compact_and_floats() {
        let v = json!({"a": [1, 2.5, 1e-5, 1e16, "é"]});
        assert_eq!(to_string_compact(&v).unwrap(), "{\"a\": [1, 2.5, 1e-05, 1e+16, \"\\u00e9\"]}");
        // CPython 3.11: json.dumps of the same list; the longest reprs in the plain range.
        let v = json!([
            0.0,
            -0.0,
            1e15,
            0.0001,
            -0.00012345678901234567,
            123456789012345.6,
            0.5773502588272095,
            9999999999999998.0
        ]);
        assert_eq!(
            to_string_compact(&v).unwrap(),
            "[0.0, -0.0, 1000000000000000.0, 0.0001, -0.00012345678901234567, 123456789012345.6, 0.5773502588272095, 9999999999999998.0]"
        );
    }
}
