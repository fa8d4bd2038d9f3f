//! Naming rules for topics and consumer groups (Kafka's topic rules, so names move between the
//! systems unchanged; groups follow the same rules so they are safe in CLI tables and URLs).

/// Longest topic or group name.
pub const NAME_LEN_MAX: usize = 249;

/// Why a topic or group name was refused. `kind` is "topic" or "group".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} name {name:?} is {len} characters; the limit is {NAME_LEN_MAX}")]
    TooLong { kind: &'static str, name: String, len: usize },
    #[error("{kind} name {name:?} is reserved")]
    Reserved { kind: &'static str, name: String },
    #[error("{kind} name {name:?} contains {bad:?}; only ASCII letters, digits, '.', '_' and '-' are allowed")]
    BadCharacter { kind: &'static str, name: String, bad: char },
}

/// Checks `name` against the topic-name rules.
pub fn validate_topic_name(name: &str) -> Result<(), NameError> {
    validate_name("topic", name)
}

/// Checks `name` against the consumer-group-name rules (the same as for topics).
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    validate_name("group", name)
}

fn validate_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > NAME_LEN_MAX {
        return Err(NameError::TooLong { kind, name: name.to_string(), len: name.len() });
    }
    if name == "." || name == ".." {
        return Err(NameError::Reserved { kind, name: name.to_string() });
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(NameError::BadCharacter { kind, name: name.to_string(), bad });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kafka_style_names_and_names_the_bad_character() {
        assert!(validate_topic_name("orders.v2_eu-west").is_ok());
        assert_eq!(validate_topic_name(""), Err(NameError::Empty { kind: "topic" }));
        let err = validate_topic_name("bad name").expect_err("space is refused");
        assert!(err.to_string().contains("' '"), "{err}");
        assert!(matches!(validate_topic_name(".."), Err(NameError::Reserved { .. })));
        assert!(matches!(validate_topic_name(&"x".repeat(250)), Err(NameError::TooLong { len: 250, .. })));
    }

    #[test]
    fn group_names_follow_the_same_rules_and_say_group() {
        assert!(validate_group_name("billing-workers").is_ok());
        let err = validate_group_name("a/b").expect_err("slash is refused");
        assert_eq!(
            err.to_string(),
            "group name \"a/b\" contains '/'; only ASCII letters, digits, '.', '_' and '-' are allowed"
        );
    }
}
