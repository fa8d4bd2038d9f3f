//! Topic administration on [`Client`] beyond create and delete: configuration changes and
//! record deletion.

use std::time::Duration;

use flotilla_proto::v1;

use crate::Client;
use crate::error::ClientError;
use crate::router::{Target, request};

impl Client {
    /// Changes `topic`'s configuration: `set` keys to values, `delete` keys back to their
    /// defaults. Returns the effective configuration, every key.
    pub async fn alter_topic_config(
        &self,
        topic: &str,
        set: &[(&str, &str)],
        delete: &[&str],
    ) -> Result<Vec<v1::ConfigEntry>, ClientError> {
        let message = v1::AlterTopicConfigRequest {
            name: topic.to_string(),
            set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            delete: delete.iter().map(|k| k.to_string()).collect(),
        };
        let response = self
            .router
            .call("alter topic config", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.admin(channel);
                let request = request(message.clone(), timeout);
                async move { stub.alter_topic_config(request).await }
            })
            .await?;
        Ok(response.config)
    }

    /// Deletes the records of `topic`'s `partition` below `before_offset` (at most the high
    /// watermark); returns the partition's log start afterwards. Idempotent: deleting below an
    /// offset again deletes nothing more, so retries are safe.
    pub async fn delete_records(&self, topic: &str, partition: u32, before_offset: u64) -> Result<u64, ClientError> {
        let message = v1::DeleteRecordsRequest { topic: topic.to_string(), partition, before_offset };
        let response = self
            .router
            .call("delete records", Target::Leader { topic, partition }, Duration::ZERO, |channel, timeout| {
                let mut stub = self.admin(channel);
                let request = request(message.clone(), timeout);
                async move { stub.delete_records(request).await }
            })
            .await?;
        Ok(response.log_start_offset)
    }
}

impl Client {
    /// The digest of the node at `address`'s own replica of partition group `group_id` over
    /// `[start_offset, end_offset)` (each defaulting to the replica's log start and high
    /// watermark): FNV-1a over every record, so replicas can be compared without moving
    /// their records. Asks that node only.
    pub async fn replica_digest(
        &self,
        address: &str,
        group_id: u64,
        start_offset: Option<u64>,
        end_offset: Option<u64>,
    ) -> Result<v1::ReplicaDigestResponse, ClientError> {
        let message = v1::ReplicaDigestRequest { group_id, end_offset, start_offset };
        self.router
            .call("replica digest", Target::Node { address }, Duration::ZERO, |channel, timeout| {
                let mut stub = self.cluster(channel);
                let request = request(message, timeout);
                async move { stub.replica_digest(request).await }
            })
            .await
    }
}
