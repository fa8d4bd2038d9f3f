//! Connections and routing: one lazily connected gRPC channel per broker address, the cached
//! cluster metadata, and the retry loop that sends each request to the right node. Every API
//! call (and later the producer and consumer) goes through [`Router::call`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flotilla_proto::error::WireError;
use flotilla_proto::net::{self, ChannelSettings, Connector};
use flotilla_proto::v1;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_types::{ErrorCode, PartitionId};
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::metadata_cache::MetadataCache;

/// How long a broker that failed at the transport level is bypassed as a partition leader.
const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// Where a request should go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// Any broker: every node answers metadata and admin requests or forwards them.
    Any,
    /// The leader of one partition; any broker (which forwards) while it is unknown.
    Leader {
        /// Topic name.
        topic: &'a str,
        /// Partition index.
        partition: PartitionId,
    },
    /// One broker and no other: a question about that node's own state (its replica digest).
    Node {
        /// The broker's client address.
        address: &'a str,
    },
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Any => write!(f, "any broker"),
            Target::Leader { topic, partition } => write!(f, "leader of {topic}/{partition}"),
            Target::Node { address } => write!(f, "node at {address}"),
        }
    }
}

/// Connections, routing metadata and the retry loop, shared by every handle of a client.
pub(crate) struct Router {
    config: ClientConfig,
    /// Broker addresses given at connect time, tried first for unrouted requests.
    seeds: Vec<String>,
    connector: Connector,
    settings: ChannelSettings,
    /// One channel per address. Ordered, like every map here: dropping a client drops (closes)
    /// its channels in map order, and a `BTreeMap`'s order differs from process to process,
    /// which made simulation runs of one seed diverge.
    channels: Mutex<BTreeMap<String, Channel>>,
    cache: RwLock<MetadataCache>,
    /// Serialises metadata refreshes: when many requests learn at once that the cache is
    /// stale (a leader died), one refresh serves them all.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Brokers that last failed at the transport level (no answer, refused connection), and
    /// when. A leader the client cannot reach — while its peers still can — is bypassed for a
    /// while: requests go to another broker, which forwards them.
    unreachable: Mutex<BTreeMap<String, Instant>>,
    /// Index into the broker list of the broker unrouted requests currently go to. It moves
    /// on only when that broker fails, so a healthy client keeps one connection busy.
    any_cursor: AtomicUsize,
}

impl Router {
    /// A router over `seeds`; connects nothing yet.
    pub(crate) fn new(seeds: Vec<String>, config: ClientConfig, connector: Connector) -> Result<Router, ClientError> {
        if seeds.is_empty() {
            return Err(ClientError::NoBrokers);
        }
        for address in &seeds {
            check_address(address)?;
        }
        let settings = ChannelSettings {
            connect_timeout: config.connect_timeout,
            keepalive_interval: config.keepalive_interval,
            keepalive_timeout: config.keepalive_timeout,
            message_bytes_max: config.message_bytes_max,
        };
        Ok(Router {
            config,
            seeds,
            connector,
            settings,
            channels: Mutex::new(BTreeMap::new()),
            cache: RwLock::new(MetadataCache::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
            unreachable: Mutex::new(BTreeMap::new()),
            any_cursor: AtomicUsize::new(0),
        })
    }

    /// The client's tunables.
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends a request to `target` and retries retriable failures: follows `NotLeader` hints,
    /// refreshes metadata, backs off exponentially, at most `retries_max` times. `send` builds
    /// and sends the request on a channel; its `Duration` argument is the attempt's timeout,
    /// to be set as the gRPC deadline. `wait` is added to the request timeout for calls that
    /// legitimately wait on the server (long-poll fetches).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        target: Target<'_>,
        wait: Duration,
        mut send: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self.config.request_timeout.saturating_add(wait);
        let backoff = Backoff::new(self.config.retry_backoff_min, self.config.retry_backoff_max);
        let attempts = self.config.retries_max.saturating_add(1);
        let mut next_address: Option<String> = None;
        let mut delay_next = false;
        let mut retries_slept = 0;
        let mut last_error = None;
        for attempt in 1..=attempts {
            if delay_next {
                tokio::time::sleep(backoff.delay(retries_slept)).await;
                retries_slept += 1;
            }
            let address = match next_address.take() {
                Some(address) => address,
                None => self.route(target).await,
            };
            let outcome = match self.channel(&address) {
                Ok(channel) => tokio::time::timeout(timeout, send(channel, timeout)).await,
                Err(error) => Ok(Err(error)),
            };
            let wire = match outcome {
                Ok(Ok(response)) => {
                    self.unreachable.lock().remove(&address);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => wire_error(&status, &address),
                Err(_elapsed) => WireError {
                    code: None,
                    grpc_code: tonic::Code::DeadlineExceeded,
                    message: format!("{address} did not answer {operation} within {timeout:?}"),
                    leader: None,
                },
            };
            if !is_retriable(&wire) {
                if matches!(wire.code, Some(ErrorCode::UnknownTopic | ErrorCode::PartitionOutOfRange)) {
                    // The topic may have been deleted or re-created; route the next call afresh.
                    self.cache.write().invalidate();
                }
                return Err(ClientError::Server(wire));
            }
            tracing::debug!(operation, %target, %address, attempt, error = %wire, "retriable failure");
            delay_next = true;
            match (&wire.code, &wire.leader) {
                (Some(ErrorCode::NotLeader), Some(hint)) => {
                    if let Target::Leader { topic, partition } = target {
                        self.cache.write().learn_leader(topic, partition, hint);
                    }
                    // The first hop to a named leader goes at once: it is the normal way to
                    // learn of a leader change. Later hops back off, in case two nodes keep
                    // pointing at each other during an election.
                    if hint.address != address && retries_slept == 0 {
                        delay_next = false;
                    }
                    next_address = Some(hint.address.clone());
                }
                _ => {
                    if let Target::Leader { topic, partition } = target {
                        let mut cache = self.cache.write();
                        cache.forget_leader(topic, partition);
                        cache.invalidate();
                    }
                    if wire.code.is_none() || wire.code == Some(ErrorCode::ShuttingDown) {
                        // The node is unreachable or leaving: unrouted requests go elsewhere,
                        // and so do requests for the partitions it leads, for a while.
                        self.unreachable.lock().insert(address.clone(), Instant::now());
                        self.move_away_from(&address);
                    }
                }
            }
            last_error = Some(wire);
        }
        let last = last_error.unwrap_or_else(|| WireError {
            code: None,
            grpc_code: tonic::Code::Unavailable,
            message: "no attempt was made".into(),
            leader: None,
        });
        Err(ClientError::RetriesExhausted { operation, target: target.to_string(), attempts, last })
    }

    /// The partition count of `topic` from the cache, refreshing it once if the topic is
    /// missing (it may have been created since). `None` if the cluster does not know it or no
    /// broker answered the refresh.
    pub(crate) async fn partition_count(&self, topic: &str) -> Option<u32> {
        let (count, generation) = {
            let cache = self.cache.read();
            (cache.partition_count(topic), cache.generation())
        };
        if count.is_some() && !self.needs_refresh() {
            return count;
        }
        self.refresh(generation).await;
        self.cache.read().partition_count(topic)
    }

    /// Takes in a `Metadata` answer the client fetched for a caller.
    pub(crate) fn absorb(&self, response: &v1::MetadataResponse, full: bool) {
        self.cache.write().apply(response, full, Instant::now());
    }

    /// Marks the cached metadata as out of date (after creating or deleting a topic).
    pub(crate) fn invalidate(&self) {
        self.cache.write().invalidate();
    }

    /// The address to send an attempt for `target` to.
    async fn route(&self, target: Target<'_>) -> String {
        let (topic, partition) = match target {
            Target::Any => return self.any_address(),
            Target::Node { address } => return address.to_string(),
            Target::Leader { topic, partition } => (topic, partition),
        };
        if self.needs_refresh() {
            let generation = self.cache.read().generation();
            self.refresh(generation).await;
        }
        let leader = self.cache.read().leader_address(topic, partition).map(str::to_string);
        match leader {
            Some(leader) if !self.recently_unreachable(&leader) => leader,
            // Unknown, or known but out of this client's reach (a partition between the client
            // and the leader, or a leader that just died): any broker forwards to the leader
            // it knows, and answers NotLeader with a fresher one.
            _ => self.any_address(),
        }
    }

    /// Whether `address` failed at the transport level within the last `UNREACHABLE_FOR`.
    fn recently_unreachable(&self, address: &str) -> bool {
        let mut unreachable = self.unreachable.lock();
        match unreachable.get(address) {
            Some(since) if since.elapsed() < UNREACHABLE_FOR => true,
            Some(_) => {
                unreachable.remove(address);
                false
            }
            None => false,
        }
    }

    fn needs_refresh(&self) -> bool {
        self.cache.read().needs_refresh(Instant::now(), self.config.metadata_refresh_interval)
    }

    /// Fetches all metadata from one broker, unless a refresh started after the caller read
    /// `seen_generation` has already happened. Failures only leave the cache stale: routing
    /// then falls back to any broker, which forwards, so a refresh never fails a request.
    async fn refresh(&self, seen_generation: u64) {
        let _guard = self.refresh_lock.lock().await;
        if self.cache.read().generation() != seen_generation {
            return;
        }
        let address = self.any_address();
        let timeout = self.config.request_timeout;
        let result = match self.channel(&address) {
            Ok(channel) => {
                let mut stub = ClusterServiceClient::new(channel)
                    .max_decoding_message_size(self.config.message_bytes_max)
                    .max_encoding_message_size(self.config.message_bytes_max);
                let call = stub.metadata(request(v1::MetadataRequest::default(), timeout));
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(response)) => Ok(response.into_inner()),
                    Ok(Err(status)) => Err(wire_error(&status, &address).to_string()),
                    Err(_elapsed) => Err(format!("{address} did not answer within {timeout:?}")),
                }
            }
            Err(status) => Err(status.message().to_string()),
        };
        let mut cache = self.cache.write();
        cache.bump_generation();
        match result {
            Ok(response) => cache.apply(&response, true, Instant::now()),
            Err(error) => {
                drop(cache);
                tracing::debug!(%address, %error, "metadata refresh failed");
                self.move_away_from(&address);
            }
        }
    }

    /// The channel to `address`, created on first use. Creation does no I/O: the channel
    /// connects on its first request and reconnects by itself after failures.
    fn channel(&self, address: &str) -> Result<Channel, tonic::Status> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = net::channel(address, &self.connector, &self.settings)
            .map_err(|error| tonic::Status::unavailable(format!("{address:?} is not a usable address: {error}")))?;
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// The broker unrouted requests go to.
    fn any_address(&self) -> String {
        let mut brokers = self.cache.read().brokers(&self.seeds);
        // `brokers` starts with the seeds, which `new` checked to be non-empty.
        let index = self.any_cursor.load(Ordering::Relaxed) % brokers.len().max(1);
        brokers.swap_remove(index)
    }

    /// Moves unrouted requests to the next broker if they currently go to `address`.
    fn move_away_from(&self, address: &str) {
        let brokers = self.cache.read().brokers(&self.seeds);
        let current = self.any_cursor.load(Ordering::Relaxed);
        if brokers.get(current % brokers.len().max(1)).is_some_and(|a| a == address) {
            // A lost race means another caller already moved on; either way we are off it.
            let _ = self.any_cursor.compare_exchange(
                current,
                current.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// Wraps `message` in a request carrying `timeout` as its gRPC deadline, so the server can
/// drop work whose caller has given up.
pub(crate) fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Reads a status into a [`WireError`]. Statuses that did not come from a Flotilla node
/// (transport failures) often say only "transport error", so the address and the root cause
/// are added; messages from Flotilla nodes are kept unchanged.
fn wire_error(status: &tonic::Status, address: &str) -> WireError {
    let mut wire = WireError::from_status(status);
    if wire.code.is_none() {
        let mut message = format!("{address}: {}", wire.message);
        let mut root = None;
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            root = Some(cause.to_string());
            source = cause.source();
        }
        if let Some(root) = root.filter(|root| !message.contains(root.as_str())) {
            message.push_str(": ");
            message.push_str(&root);
        }
        wire.message = message;
    }
    wire
}

/// Whether an attempt that failed with `wire` may be retried. Beyond the API's rule, a bare
/// `Cancelled` counts: tonic servers answer it when the request's gRPC deadline expires, which
/// is the server-side twin of our own timeout.
fn is_retriable(wire: &WireError) -> bool {
    wire.is_retriable() || (wire.code.is_none() && wire.grpc_code == tonic::Code::Cancelled)
}

/// Checks that a broker address is `HOST:PORT`.
fn check_address(address: &str) -> Result<(), ClientError> {
    let invalid =
        |reason: &str| ClientError::InvalidAddress { address: address.to_string(), reason: reason.to_string() };
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid("no port"));
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(invalid("the port is not a number from 0 to 65535"));
    }
    if address.contains("://") || address.contains('/') {
        return Err(invalid("give HOST:PORT without a scheme or path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_must_be_host_and_port() {
        for good in ["127.0.0.1:7101", "localhost:1", "[::1]:7101", "node-3.flotilla:7101"] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        for bad in ["127.0.0.1", ":7101", "host:port", "host:99999", "http://host:7101"] {
            assert!(matches!(check_address(bad), Err(ClientError::InvalidAddress { .. })), "{bad}");
        }
    }

    #[test]
    fn transport_failures_name_the_address_and_flotilla_messages_stay_unchanged() {
        let transport = tonic::Status::unavailable("transport error");
        let wire = wire_error(&transport, "127.0.0.1:7101");
        assert_eq!(wire.message, "127.0.0.1:7101: transport error");
        let server = flotilla_proto::error::status(ErrorCode::UnknownTopic, "topic \"orders\" does not exist", None);
        let wire = wire_error(&server, "127.0.0.1:7101");
        assert_eq!(wire.message, "topic \"orders\" does not exist");
        assert_eq!(wire.code, Some(ErrorCode::UnknownTopic));
        assert!(!is_retriable(&wire));
        assert!(is_retriable(&wire_error(&tonic::Status::cancelled("Timeout expired"), "a:1")));
    }
}
