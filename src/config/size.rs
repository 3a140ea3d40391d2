//! Byte sizes written as `"16MB"` or a plain integer of bytes.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// A number of bytes; deserializes from an integer or a string with a unit
/// (`B`, `kB`/`KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`; multiples of 1024, as in PostgreSQL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"16MB"`, `"512 kB"`, `"1048576"`.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size; write e.g. \"16MB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "kib" => 1 << 10,
            "mb" | "mib" => 1 << 20,
            "gb" | "gib" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?}; use B, kB, MB or GB")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> de::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"16MB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `0 B`, `12.3 kB`, `4.0 MB`, `1.2 GB` (powers of 1024, PostgreSQL's unit names): sizes
/// in messages, tables and progress lines.
#[must_use]
pub fn human_bytes(n: impl TryInto<i64>) -> String {
    let n: i64 = n.try_into().unwrap_or(i64::MAX);
    let units = ["B", "kB", "MB", "GB", "TB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn parses_units() {
        assert_eq!(ByteSize::parse("16MB"), Ok(ByteSize(16 << 20)));
        assert_eq!(ByteSize::parse("512 kB"), Ok(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("1GiB"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("100"), Ok(ByteSize(100)));
        assert!(ByteSize::parse("MB").is_err());
        assert!(ByteSize::parse("5 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999999999GB").is_err());
    }
}
