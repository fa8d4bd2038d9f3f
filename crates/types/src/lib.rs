//! Plain data shared by every Flotilla crate: ids, records, limits, stable error codes and
//! the key partitioner. No I/O and no async.

mod clock;
mod coverage;
mod error_code;
mod ids;
mod limits;
mod names;
mod partitioner;
mod record;
mod topic_config;

pub use clock::{Clock, SystemClock};
pub use coverage::COVERAGE_TARGET;
pub use error_code::ErrorCode;
pub use ids::{GroupId, METADATA_GROUP, NodeId, Offset, PartitionId, TopicId};
pub use limits::{HEADER_OVERHEAD_BYTES, Limits};
pub use names::{NAME_LEN_MAX, NameError, validate_group_name, validate_topic_name};
pub use partitioner::{murmur2, partition_for_key};
pub use record::{Header, Record};
pub use topic_config::{
    CONFIG_KEYS, ConfigEntry, ConfigError, DEFAULT_RETENTION_MS, Limit, MAX_MESSAGE_BYTES, RETENTION_BYTES,
    RETENTION_MS, RetentionPolicy, TopicConfig, UNLIMITED,
};
