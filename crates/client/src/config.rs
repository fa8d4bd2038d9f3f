//! Client tunables.

use std::time::Duration;

/// Tunables of a [`crate::Client`]. Identity (the broker addresses) is passed to
/// [`crate::Client::connect`] separately, so this has a `Default`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on one request's round trip; a fetch adds its long-poll wait on top. Without it a
    /// request to a node that stopped answering (but kept its TCP connection) hangs forever.
    pub request_timeout: Duration,
    /// Bound on opening a TCP connection to a broker.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval. Without pings a connection to a vanished node (kill -9,
    /// network partition) is only noticed by the next request's timeout.
    pub keepalive_interval: Duration,
    /// How long a keep-alive ping may stay unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// Delay before the first retry; it doubles with each further retry.
    pub retry_backoff_min: Duration,
    /// Longest delay between two retries. Short, because the commonest retry is a partition
    /// waiting out a leader election: a long cap adds up to its length to every failover.
    pub retry_backoff_max: Duration,
    /// Retries after the first attempt, counting hops that follow a leader hint. With the
    /// backoff above, 40 retries span about ten seconds: longer than an election.
    pub retries_max: u32,
    /// Cached routing metadata older than this is refreshed before the next routed request.
    /// Leader changes are normally learnt sooner, from `NotLeader` answers.
    pub metadata_refresh_interval: Duration,
    /// Largest gRPC message sent or received. It must exceed the server's batch and fetch
    /// byte limits (8 MiB by default) plus framing, or large fetches fail to decode.
    pub message_bytes_max: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            retry_backoff_min: Duration::from_millis(20),
            retry_backoff_max: Duration::from_millis(250),
            retries_max: 40,
            metadata_refresh_interval: Duration::from_secs(30),
            message_bytes_max: 64 * 1024 * 1024,
        }
    }
}
