//! Column values as JSON: numbers and booleans typed, JSON columns embedded, the rest text.

use serde_json::Value;

// Type OIDs from PostgreSQL's pg_type.dat; they are fixed for built-in types.
const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const OID: u32 = 26;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const JSON: u32 = 114;
const JSONB: u32 = 3802;

/// Renders a text-format value of type `type_oid`.
///
/// Integers and booleans become JSON numbers and booleans; finite floats become numbers;
/// `json`/`jsonb` are embedded as JSON; everything else (numeric too, so no precision is
/// lost) stays a string. Invalid UTF-8 is replaced, never an error: tail shows data, it
/// does not judge it.
#[must_use]
pub fn text_value(type_oid: u32, text: &[u8]) -> Value {
    let s = String::from_utf8_lossy(text);
    match type_oid {
        BOOL => match &*s {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => Value::String(s.into_owned()),
        },
        INT2 | INT4 | INT8 | OID => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.into_owned())),
        FLOAT4 | FLOAT8 => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(s.into_owned())),
        JSON | JSONB => serde_json::from_str(&s).unwrap_or_else(|_| Value::String(s.into_owned())),
        _ => Value::String(s.into_owned()),
    }
}

/// Renders a binary-format value as `{"binary": "<hex>"}`: its layout depends on the type's
/// send function, which tail does not interpret.
#[must_use]
pub fn binary_value(bytes: &[u8]) -> Value {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    serde_json::json!({ "binary": hex })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_values() {
        assert_eq!(text_value(BOOL, b"t"), json!(true));
        assert_eq!(text_value(INT8, b"-9223372036854775808"), json!(i64::MIN));
        assert_eq!(text_value(FLOAT8, b"1.5"), json!(1.5));
        assert_eq!(text_value(FLOAT8, b"NaN"), json!("NaN"));
        assert_eq!(
            text_value(1700, b"12345678901234567890.000000001"),
            json!("12345678901234567890.000000001")
        );
        assert_eq!(text_value(JSONB, br#"{"a": [1, 2]}"#), json!({"a": [1, 2]}));
        assert_eq!(text_value(25, b"hello"), json!("hello"));
        assert_eq!(text_value(25, &[0xff, b'a']), json!("\u{fffd}a"));
        assert_eq!(binary_value(&[0, 0xab]), json!({"binary": "00ab"}));
    }
}
