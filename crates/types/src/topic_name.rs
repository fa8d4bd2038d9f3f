//! Topic-name rules (Kafka's, so names move between the systems unchanged).

/// Longest topic name.
pub const TOPIC_NAME_LEN_MAX: usize = 249;

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    #[error("topic name must not be empty")]
    Empty,
    #[error("topic name {name:?} is {len} characters; the limit is {TOPIC_NAME_LEN_MAX}")]
    TooLong { name: String, len: usize },
    #[error("topic name {name:?} is reserved")]
    Reserved { name: String },
    #[error("topic name {name:?} contains {bad:?}; only ASCII letters, digits, '.', '_' and '-' are allowed")]
    BadCharacter { name: String, bad: char },
}

/// Checks `name` against the topic-name rules.
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name.len() > TOPIC_NAME_LEN_MAX {
        return Err(TopicNameError::TooLong { name: name.to_string(), len: name.len() });
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Reserved { name: name.to_string() });
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(TopicNameError::BadCharacter { name: name.to_string(), bad });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kafka_style_names_and_names_the_bad_character() {
        assert!(validate_topic_name("orders.v2_eu-west").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicNameError::Empty));
        let err = validate_topic_name("bad name").expect_err("space is refused");
        assert!(err.to_string().contains("' '"), "{err}");
        assert!(matches!(validate_topic_name(".."), Err(TopicNameError::Reserved { .. })));
        assert!(matches!(validate_topic_name(&"x".repeat(250)), Err(TopicNameError::TooLong { len: 250, .. })));
    }
}
