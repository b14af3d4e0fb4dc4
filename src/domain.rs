//! Domain values with their parsers ("parse, don't validate"): event and run ids, tenant
//! names, durations, and the case-insensitive header maps of the Upstash protocol.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an input value was refused; the message is shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

fn parse_id(kind: &str, value: &str) -> Result<String, InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput(format!("{kind} must not be empty")));
    }
    if value.len() > 256 {
        return Err(InvalidInput(format!(
            "{kind} is {} characters long; at most 256 are allowed",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(InvalidInput(format!(
            "{kind} contains {c:?}; allowed are letters, digits and . _ : -"
        )));
    }
    Ok(value.to_owned())
}

/// A tenant-chosen event id: `[A-Za-z0-9._:-]{1,256}` after percent-decoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EventId(String);

impl EventId {
    pub fn parse(value: &str) -> Result<Self, InvalidInput> {
        parse_id("event id", value).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A workflow run id (`wfr_…` for Upstash SDK runs); same alphabet as event ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RunId(String);

impl RunId {
    pub fn parse(value: &str) -> Result<Self, InvalidInput> {
        parse_id("run id", value).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant name: `[a-z0-9][a-z0-9-]{0,62}`. It is part of every key of the tenant, so it
/// must never hold `{`, `}`, `|` or `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(value: &str) -> Result<Self, InvalidInput> {
        let ok = !value.is_empty()
            && value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !value.starts_with('-');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidInput(
                "tenant name must be 1-63 characters of a-z, 0-9 and -, not starting with -".into(),
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The owner of undecodable delivery entries. `parse` refuses names starting with `-`,
    /// so no tenant can be (or authenticate as) this one.
    pub fn reserved_undecodable() -> Self {
        Self("-undecodable".to_owned())
    }
}

impl TryFrom<String> for TenantName {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Key prefixes are part of every key: keep them free of hash-tag braces and separators.
pub fn is_valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses a timeout: a number of seconds (`"90"`), or units `s`, `m`, `h`, `d`, alone or
/// compound (`"30s"`, `"5m"`, `"1h30m"`, `"7d"`). Returns milliseconds.
/// A random id of `len` base62 characters (message ids, waiter ids, consumer names).
pub fn random_id(len: usize) -> String {
    use rand::distr::Alphanumeric;
    use rand::Rng;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub fn parse_duration(value: &str) -> Result<u64, InvalidInput> {
    let bad = || {
        InvalidInput(format!(
            "invalid timeout {value:?}: use seconds (\"90\") or units s, m, h, d (\"30s\", \"1h30m\", \"7d\")"
        ))
    };
    let value = value.trim();
    if value.is_empty() || value.len() > 32 {
        return Err(bad());
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<u64>()
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(bad);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut last_unit_rank = usize::MAX;
    for c in value.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let (rank, unit_ms) = match c {
            'd' => (4, 86_400_000u64),
            'h' => (3, 3_600_000),
            'm' => (2, 60_000),
            's' => (1, 1_000),
            _ => return Err(bad()),
        };
        // Units must come largest first and once each ("1h30m", not "30m1h" or "1m1m").
        if number.is_empty() || rank >= last_unit_rank {
            return Err(bad());
        }
        last_unit_rank = rank;
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// Most bytes of header names and values one header map may hold.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most bytes of a workflow `step` object a waiter may hold, and its deepest nesting.
pub const MAX_STEP_BYTES: usize = 16 * 1024;
pub const MAX_STEP_DEPTH: usize = 8;

/// How deep a JSON value nests (a scalar: 0).
pub fn json_depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A header map as the Upstash protocol carries it: name → list of values.
///
/// Names are compared case-insensitively and merged: the SDK sends both
/// `Upstash-Workflow-RunId` and `Upstash-Workflow-Runid`; copying both out would make a
/// receiver see the run id twice, joined by a comma, and corrupt it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderMap(BTreeMap<String, Vec<String>>);

impl HeaderMap {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// Adds `value` under `name` unless a name equal ignoring case is present, in which
    /// case the value joins that entry (once).
    pub fn insert(&mut self, name: &str, value: &str) {
        if let Some((_, values)) = self
            .0
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            if !values.iter().any(|v| v == value) {
                values.push(value.to_owned());
            }
        } else {
            self.0.insert(name.to_owned(), vec![value.to_owned()]);
        }
    }

    /// Builds a map from JSON: `{"Name": ["v1", "v2"]}` or `{"Name": "v"}`. Names and values
    /// must be valid HTTP header names and values (no CR/LF, so nothing can be injected).
    pub fn from_json(field: &str, value: &serde_json::Value) -> Result<Self, InvalidInput> {
        let object = match value {
            serde_json::Value::Null => return Ok(Self::default()),
            serde_json::Value::Object(o) => o,
            _ => {
                return Err(InvalidInput(format!(
                    "{field} must be an object of header name to value(s)"
                )))
            }
        };
        if object.len() > 100 {
            return Err(InvalidInput(format!("{field} has more than 100 headers")));
        }
        // Bounded when registered, so nothing stored becomes undeliverable later (receivers
        // refuse requests with larger header sections).
        let bytes: usize = object
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum();
        if bytes > MAX_HEADER_BYTES {
            return Err(InvalidInput(format!(
                "{field} is {bytes} bytes; at most {MAX_HEADER_BYTES} bytes of header names and values"
            )));
        }
        let mut map = Self::default();
        for (name, values) in object {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(InvalidInput(format!(
                    "{field}: {name:?} is not a valid header name"
                )));
            }
            let list: Vec<&str> = match values {
                serde_json::Value::String(s) => vec![s.as_str()],
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|v| {
                        v.as_str().ok_or_else(|| {
                            InvalidInput(format!("{field}.{name}: values must be strings"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(InvalidInput(format!(
                        "{field}.{name}: value must be a string or an array of strings"
                    )))
                }
            };
            for v in list {
                if reqwest::header::HeaderValue::from_str(v).is_err() {
                    return Err(InvalidInput(format!(
                        "{field}.{name}: value is not a valid header value"
                    )));
                }
                map.insert(name, v);
            }
        }
        Ok(map)
    }
}

impl<'de> Deserialize<'de> for HeaderMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, Vec<String>>::deserialize(d)?;
        let mut map = HeaderMap::default();
        for (k, values) in &raw {
            for v in values {
                map.insert(k, v);
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("7d"), Ok(604_800_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("1d10h30m5s"), Ok(124_205_000));
        assert_eq!(parse_duration("90"), Ok(90_000));
        for bad in ["", "s", "5x", "1m1h", "1m1m", "-5s", "5", "1.5h", "10 s"] {
            if bad == "5" {
                continue;
            }
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn ids() {
        assert!(EventId::parse("order-42").is_ok());
        assert!(EventId::parse("evt_abc.def:1").is_ok());
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse("a/b").is_err());
        assert!(EventId::parse("a{b}").is_err());
        assert!(EventId::parse("a|b").is_err());
        assert!(EventId::parse(&"x".repeat(256)).is_ok());
        assert!(EventId::parse(&"x".repeat(257)).is_err());
        assert!(TenantName::parse("acme-1").is_ok());
        assert!(TenantName::parse("Acme").is_err());
        assert!(TenantName::parse("a:b").is_err());
    }

    #[test]
    fn header_maps_merge_case_insensitively() {
        let json = serde_json::json!({
            "Upstash-Workflow-RunId": ["wfr_1"],
            "Upstash-Workflow-Runid": ["wfr_1"],
            "content-type": "application/json"
        });
        let map = HeaderMap::from_json("headers", &json).unwrap();
        assert_eq!(map.iter().count(), 2);
        assert_eq!(map.get("upstash-workflow-runid"), Some("wfr_1"));
        let bad = serde_json::json!({"X-A": "a\r\nInjected: 1"});
        assert!(HeaderMap::from_json("headers", &bad).is_err());
    }
}
