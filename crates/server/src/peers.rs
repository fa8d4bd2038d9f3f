//! `Peers`: cached gRPC channels to other nodes' client ports, for forwarding requests.

use std::collections::BTreeMap;

use flotilla_proto::net::{ChannelSettings, Connector, channel};
use parking_lot::Mutex;
use tonic::transport::Channel;

use crate::api_error::ApiError;
use flotilla_types::ErrorCode;

/// Channels by address.
pub struct Peers {
    connector: Connector,
    settings: ChannelSettings,
    channels: Mutex<BTreeMap<String, Channel>>,
}

impl Peers {
    /// Channels opened through `connector`.
    pub fn new(connector: Connector, settings: ChannelSettings) -> Self {
        Peers { connector, settings, channels: Mutex::new(BTreeMap::new()) }
    }

    /// The channel to `address`, created lazily.
    pub fn channel(&self, address: &str) -> Result<Channel, ApiError> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let created = channel(address, &self.connector, &self.settings)
            .map_err(|err| ApiError::new(ErrorCode::Internal, format!("bad peer address {address:?}: {err}")))?;
        channels.insert(address.to_string(), created.clone());
        Ok(created)
    }
}
