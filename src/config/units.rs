//! Human-friendly durations ("500ms", "5s", "10m", "1h") and sizes ("64MiB")
//! in the config file. Bare integers mean seconds and bytes.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// A duration in the config; `0` disables the limit where documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// A byte count in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

/// Parses "250ms", "5s", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration (examples: 500ms, 5s, 10m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit \"{other}\" (use ms, s, m or h)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses "1024", "64kB", "64KiB", "16MB", "16MiB", "1GiB" (kB/MB/GB are
/// 1024-based, as in postgresql.conf).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size (examples: 8192, 64kB, 16MiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "KiB" => 1 << 10,
        "MB" | "MiB" => 1 << 20,
        "GB" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit \"{other}\" (use kB, MB or GB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Int(u64),
    Float(f64),
    Str(String),
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Int(n) => Ok(Seconds(Duration::from_secs(n))),
            NumOrStr::Float(f) if f >= 0.0 && f.is_finite() => {
                Ok(Seconds(Duration::from_secs_f64(f)))
            }
            NumOrStr::Float(f) => Err(de::Error::custom(format!("{f} is not a duration"))),
            NumOrStr::Str(s) => parse_duration(&s).map(Seconds).map_err(de::Error::custom),
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Int(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(|_| de::Error::custom("size is too large")),
            NumOrStr::Float(f) => Err(de::Error::custom(format!(
                "{f} is not a whole number of bytes"
            ))),
            NumOrStr::Str(s) => parse_size(&s).map(ByteSize).map_err(de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0 as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64kB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("lots").is_err());
    }
}
