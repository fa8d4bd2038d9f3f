//! Flotilla's Rust SDK: a thin async client over the public gRPC API that sends produce and
//! fetch requests straight to partition leaders and retries what can be retried.
//!
//! Layout: [`Client`] (`client.rs`) holds the API calls; `router.rs` owns the connections,
//! the metadata cache and the retry loop, so a batching `Producer` or a group `Consumer`
//! can be layered on the same router later; `plan.rs` splits a produce call across
//! partitions and puts the acknowledgements back in request order;
//! [`Producer`] (`producer/`) batches records per partition, pipelines requests and is
//! idempotent by default; [`IdempotentProducer`] (`idempotent_producer.rs`) is the one-batch
//! session underneath the simulation, numbering batches through the same sequencer so
//! retries never duplicate them.

mod backoff;
mod client;
mod config;
mod consumer;
mod error;
mod groups;
mod idempotent_producer;
mod metadata_cache;
mod plan;
pub mod producer;
mod router;
mod topic_admin;

pub use client::{Client, LOCAL_CLUSTER};
pub use config::ClientConfig;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom, TopicPartition};
pub use error::ClientError;
pub use flotilla_proto::error::{LeaderHint, WireError, produce_result};
pub use flotilla_proto::net::{Connector, tcp_connector};
pub use flotilla_proto::v1;
pub use flotilla_types::ErrorCode;
pub use groups::ResetTo;
pub use idempotent_producer::IdempotentProducer;
pub use producer::{Compression, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, ProducerStats};
