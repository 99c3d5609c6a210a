//! Canonical JSON: the exact bytes that registry signatures and the registry digest cover.
//!
//! Owns the serialisation of a `serde_json::Value` into one canonical text; it does not parse,
//! sign or know what a record is. The form is:
//!
//! - object keys sorted by their UTF-16 code units (the RFC 8785 order; the same as byte order for
//!   the ASCII keys the registry uses), no whitespace anywhere, UTF-8 output;
//! - strings escaped minimally: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control characters
//!   as `\u00xx` (lowercase hex), everything else written as itself;
//! - numbers are integers only, within ±(2^53 − 1), written in plain decimal. Floats and larger
//!   integers are refused, because different JSON implementations print or round them
//!   differently and a signature must not depend on that.
//!
//! For documents that satisfy these rules the output is identical to RFC 8785 (JCS).

use serde_json::{Map, Number, Value};

/// The largest integer magnitude every JSON implementation represents exactly (2^53 − 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A value that has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{path}` holds the number {number}; signed registry documents may contain only integers within ±(2^53 − 1), no floats"
)]
pub struct CanonicalError {
    /// Where the number is, as a dotted path like `nodes[0].port`.
    pub path: String,
    pub number: String,
}

/// The canonical JSON text of `value`.
pub fn to_canonical_json(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_value(value, &mut String::new(), &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, path: &mut String, out: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => write_number(number, path, out)?,
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                let parent_len = path.len();
                path.push_str(&format!("[{index}]"));
                write_value(item, path, out)?;
                path.truncate(parent_len);
            }
            out.push(']');
        }
        Value::Object(members) => write_object(members, path, out)?,
    }
    Ok(())
}

fn write_object(members: &Map<String, Value>, path: &mut String, out: &mut String) -> Result<(), CanonicalError> {
    // Sorting here rather than relying on the map's order keeps the output canonical even when
    // serde_json's `preserve_order` feature is switched on by some other crate.
    let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
    sorted.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    out.push('{');
    for (index, (key, member)) in sorted.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        let parent_len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        write_value(member, path, out)?;
        path.truncate(parent_len);
    }
    out.push('}');
    Ok(())
}

fn write_number(number: &Number, path: &str, out: &mut String) -> Result<(), CanonicalError> {
    let in_range = match (number.as_u64(), number.as_i64()) {
        (Some(unsigned), _) => unsigned <= MAX_SAFE_INTEGER,
        (None, Some(signed)) => signed.unsigned_abs() <= MAX_SAFE_INTEGER,
        (None, None) => false,
    };
    if !in_range {
        return Err(CanonicalError { path: path.to_owned(), number: number.to_string() });
    }
    out.push_str(&number.to_string());
    Ok(())
}

fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < '\u{20}' => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(value: Value) -> String {
        to_canonical_json(&value).unwrap()
    }

    #[test]
    fn sorts_keys_recursively_without_whitespace() {
        let value = json!({"b": 1, "a": {"z": [3, {"y": null, "x": true}], "c": false}});
        assert_eq!(canonical(value), r#"{"a":{"c":false,"z":[3,{"x":true,"y":null}]},"b":1}"#);
    }

    #[test]
    fn key_order_is_utf16_code_unit_order() {
        // U+E000 sorts after U+1F600 in UTF-16 (0xE000 > 0xD83D) but before it in UTF-8 bytes.
        let value = json!({"\u{1F600}": 1, "\u{E000}": 2, "a": 0});
        assert_eq!(canonical(value), "{\"a\":0,\"\u{1F600}\":1,\"\u{E000}\":2}");
    }

    #[test]
    fn escapes_strings_minimally() {
        let value = json!("q\" b\\ \u{8}\u{c}\n\r\t \u{1} \u{7f} é / \u{1F600}");
        assert_eq!(canonical(value), "\"q\\\" b\\\\ \\b\\f\\n\\r\\t \\u0001 \u{7f} é / \u{1F600}\"");
    }

    #[test]
    fn same_value_in_any_input_order_gives_same_text() {
        let a: Value = serde_json::from_str(r#"{ "x": [1, 2], "y": {"b": "2", "a": "1"} }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y":{"a":"1","b":"2"},"x":[1,2]}"#).unwrap();
        assert_eq!(canonical(a), canonical(b));
    }

    #[test]
    fn integers_print_plainly_within_the_safe_range() {
        let value = json!([0, -1, MAX_SAFE_INTEGER, -(MAX_SAFE_INTEGER as i64)]);
        assert_eq!(canonical(value), "[0,-1,9007199254740991,-9007199254740991]");
    }

    #[test]
    fn refuses_floats_and_unsafe_integers_naming_the_path() {
        let float = to_canonical_json(&json!({"nodes": [{"weight": 1.5}]})).unwrap_err();
        assert_eq!(float.path, "nodes[0].weight");
        assert_eq!(float.number, "1.5");
        let whole_float = to_canonical_json(&json!({"serial": 2.0})).unwrap_err();
        assert_eq!(whole_float.path, "serial");
        let big = to_canonical_json(&json!({"serial": MAX_SAFE_INTEGER + 1})).unwrap_err();
        assert_eq!(big.number, "9007199254740992");
        assert!(to_canonical_json(&json!(i64::MIN)).is_err());
    }
}
