//! `TopicConfig`: the settings a topic can override (`flo topic create --config k=v`, `flo
//! topic alter`), their rules and defaults, and the retention a partition applies from them.
//! Keys and values follow Kafka's names and units, so `retention.ms=604800000` means what a
//! Kafka user expects; "no limit" is spelled `unlimited` rather than Kafka's `-1`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Limits;

/// `retention.ms`: records older than this (by the time they were appended) are deleted.
pub const RETENTION_MS: &str = "retention.ms";
/// `retention.bytes`: a partition's oldest records are deleted while it holds more than this.
pub const RETENTION_BYTES: &str = "retention.bytes";
/// `max.message.bytes`: the largest batch of records one produce may append to a partition.
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";

/// Every key a topic accepts, in display order.
pub const CONFIG_KEYS: [&str; 3] = [RETENTION_MS, RETENTION_BYTES, MAX_MESSAGE_BYTES];

/// Kafka's default retention: seven days.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The word that lifts a retention limit.
pub const UNLIMITED: &str = "unlimited";

/// A limit that may be lifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    /// No limit.
    Unlimited,
    /// At most this much.
    AtMost(u64),
}

impl Limit {
    /// The bound, if any.
    pub fn bound(self) -> Option<u64> {
        match self {
            Limit::Unlimited => None,
            Limit::AtMost(value) => Some(value),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Unlimited => f.write_str(UNLIMITED),
            Limit::AtMost(value) => write!(f, "{value}"),
        }
    }
}

/// A topic's overrides: a key absent here takes its default. Kept as set, so `describe` can
/// tell a default from an explicit setting and a changed default reaches topics that never
/// set the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub retention_ms: Option<Limit>,
    pub retention_bytes: Option<Limit>,
    pub max_message_bytes: Option<u64>,
}

/// Why a configuration was refused: the key, the value and the rule, for the client to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{key}={value:?} is refused: {rule}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub rule: String,
}

/// The retention a partition applies: the effective `retention.ms` and `retention.bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Records appended longer ago than this are deleted; `None`: kept regardless of age.
    pub max_age_ms: Option<u64>,
    /// While the partition holds more record bytes than this, its oldest batches are deleted;
    /// `None`: kept regardless of size.
    pub max_bytes: Option<u64>,
}

/// One key's effective value, for `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: &'static str,
    pub value: String,
    /// True when the topic does not set the key.
    pub is_default: bool,
}

impl TopicConfig {
    /// Sets `key` to `value`, checking the value against the key's rule (the rules between
    /// keys are checked by [`TopicConfig::validate`]).
    pub fn set(&mut self, key: &str, value: &str, limits: &Limits) -> Result<(), ConfigError> {
        let refuse = |rule: String| ConfigError { key: key.to_string(), value: value.to_string(), rule };
        match key {
            RETENTION_MS => {
                self.retention_ms =
                    Some(parse_limit(value, 1, "a number of milliseconds of at least 1").map_err(refuse)?);
            }
            RETENTION_BYTES => {
                self.retention_bytes = Some(parse_limit(value, 1, "a number of bytes of at least 1").map_err(refuse)?);
            }
            MAX_MESSAGE_BYTES => {
                let max = limits.batch_bytes_max as u64;
                let bytes = parse_number(value).filter(|bytes| (1..=max).contains(bytes)).ok_or_else(|| {
                    refuse(format!("it must be a number of bytes from 1 to {max} (the node's batch limit)"))
                })?;
                self.max_message_bytes = Some(bytes);
            }
            _ => return Err(unknown_key(key, value)),
        }
        Ok(())
    }

    /// Drops the override of `key`: it takes its default again.
    pub fn unset(&mut self, key: &str) -> Result<(), ConfigError> {
        match key {
            RETENTION_MS => self.retention_ms = None,
            RETENTION_BYTES => self.retention_bytes = None,
            MAX_MESSAGE_BYTES => self.max_message_bytes = None,
            _ => return Err(unknown_key(key, "")),
        }
        Ok(())
    }

    /// Checks the rules between keys: a partition must be able to hold at least one batch of
    /// the largest size it accepts, or retention would delete a batch as it is appended.
    pub fn validate(&self, limits: &Limits) -> Result<(), ConfigError> {
        let max_message = self.effective_max_message_bytes(limits);
        if let Some(Limit::AtMost(bytes)) = self.retention_bytes
            && bytes < max_message
        {
            return Err(ConfigError {
                key: RETENTION_BYTES.to_string(),
                value: bytes.to_string(),
                rule: format!(
                    "it must be at least one maximum batch, {MAX_MESSAGE_BYTES} = {max_message} bytes, or a partition \
                     could not hold the batch it just accepted"
                ),
            });
        }
        Ok(())
    }

    /// The largest batch a produce may append to one partition of the topic.
    pub fn effective_max_message_bytes(&self, limits: &Limits) -> u64 {
        self.max_message_bytes.unwrap_or(limits.batch_bytes_max as u64)
    }

    /// The retention partitions of the topic apply.
    pub fn retention(&self) -> RetentionPolicy {
        RetentionPolicy {
            max_age_ms: self.retention_ms.unwrap_or(Limit::AtMost(DEFAULT_RETENTION_MS)).bound(),
            max_bytes: self.retention_bytes.unwrap_or(Limit::Unlimited).bound(),
        }
    }

    /// Every key with its effective value.
    pub fn entries(&self, limits: &Limits) -> Vec<ConfigEntry> {
        vec![
            ConfigEntry {
                key: RETENTION_MS,
                value: self.retention_ms.unwrap_or(Limit::AtMost(DEFAULT_RETENTION_MS)).to_string(),
                is_default: self.retention_ms.is_none(),
            },
            ConfigEntry {
                key: RETENTION_BYTES,
                value: self.retention_bytes.unwrap_or(Limit::Unlimited).to_string(),
                is_default: self.retention_bytes.is_none(),
            },
            ConfigEntry {
                key: MAX_MESSAGE_BYTES,
                value: self.effective_max_message_bytes(limits).to_string(),
                is_default: self.max_message_bytes.is_none(),
            },
        ]
    }

    /// This config with `set` applied, then `unset` removed, then validated as a whole.
    pub fn altered(
        &self,
        set: &BTreeMap<String, String>,
        unset: &[String],
        limits: &Limits,
    ) -> Result<TopicConfig, ConfigError> {
        let mut config = self.clone();
        for (key, value) in set {
            config.set(key, value, limits)?;
        }
        for key in unset {
            if set.contains_key(key) {
                return Err(ConfigError {
                    key: key.clone(),
                    value: set[key].clone(),
                    rule: "a key cannot be both set and deleted in one change".to_string(),
                });
            }
            config.unset(key)?;
        }
        config.validate(limits)?;
        Ok(config)
    }
}

fn unknown_key(key: &str, value: &str) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        value: value.to_string(),
        rule: format!("the key is unknown; topics accept {}", CONFIG_KEYS.join(", ")),
    }
}

/// A plain decimal number: digits only (no sign, no unit).
fn parse_number(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn parse_limit(value: &str, min: u64, what: &str) -> Result<Limit, String> {
    if value == UNLIMITED {
        return Ok(Limit::Unlimited);
    }
    match parse_number(value) {
        Some(number) if number >= min => Ok(Limit::AtMost(number)),
        _ => Err(format!("it must be {what}, or {UNLIMITED:?} for no limit")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn defaults_are_kafkas_and_overrides_are_kept_apart() {
        let config = TopicConfig::default();
        assert_eq!(config.retention(), RetentionPolicy { max_age_ms: Some(DEFAULT_RETENTION_MS), max_bytes: None });
        let entries = config.entries(&limits());
        assert!(entries.iter().all(|e| e.is_default));
        assert_eq!(entries[0].value, "604800000");
        assert_eq!(entries[1].value, "unlimited");
        let mut set = TopicConfig::default();
        set.set(RETENTION_BYTES, "16777216", &limits()).expect("valid");
        set.set(RETENTION_MS, UNLIMITED, &limits()).expect("valid");
        assert_eq!(set.retention(), RetentionPolicy { max_age_ms: None, max_bytes: Some(16 << 20) });
        assert!(!set.entries(&limits())[1].is_default);
        set.unset(RETENTION_BYTES).expect("known key");
        assert_eq!(set.retention().max_bytes, None);
    }

    #[test]
    fn bad_values_name_the_key_the_value_and_the_rule() {
        let mut config = TopicConfig::default();
        for (key, value, needle) in [
            (RETENTION_MS, "-5", "at least 1"),
            (RETENTION_MS, "abc", "milliseconds"),
            (RETENTION_MS, "0", "at least 1"),
            (RETENTION_MS, "7d", "milliseconds"),
            (RETENTION_BYTES, "", "bytes"),
            (MAX_MESSAGE_BYTES, "99999999999", "batch limit"),
            ("retention.minutes", "5", "retention.ms, retention.bytes, max.message.bytes"),
        ] {
            let err = config.set(key, value, &limits()).expect_err(value);
            let message = err.to_string();
            assert!(message.contains(key) && message.contains(value) && message.contains(needle), "{message}");
        }
        assert_eq!(config, TopicConfig::default(), "refused values change nothing");
    }

    #[test]
    fn retention_bytes_must_hold_one_maximum_batch() {
        let limits = limits();
        let set = |pairs: &[(&str, &str)]| {
            let set: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            TopicConfig::default().altered(&set, &[], &limits)
        };
        let err = set(&[(RETENTION_BYTES, "1000")]).expect_err("below one batch");
        assert!(err.to_string().contains("one maximum batch"), "{err}");
        assert!(err.to_string().contains("8388608"), "{err}");
        set(&[(RETENTION_BYTES, "1000"), (MAX_MESSAGE_BYTES, "1000")]).expect("one batch of 1000 fits");
        set(&[(RETENTION_BYTES, "8388608")]).expect("exactly one batch");
        let err = TopicConfig::default()
            .altered(
                &BTreeMap::from([(RETENTION_MS.to_string(), "5".to_string())]),
                &[RETENTION_MS.to_string()],
                &limits,
            )
            .expect_err("set and unset");
        assert!(err.to_string().contains("both set and deleted"), "{err}");
    }
}
