//! The network seam: how nodes and clients open connections and how servers accept them.
//! Production uses tokio TCP; the simulation plugs in turmoil's sockets through the same
//! types, which is what makes every gRPC call in Flotilla deterministic under simulation.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint};

/// A byte stream to a peer.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a connection to `host:port`.
pub type Connector = Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Box<dyn Io>>> + Send + Sync>;

/// Accepted connections, as a tonic server consumes them.
pub type Incoming = BoxStream<'static, std::io::Result<Conn>>;

/// An accepted connection.
pub struct Conn(pub Box<dyn Io>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects with tokio TCP, Nagle off (small Raft and produce messages must not wait).
pub fn tcp_connector() -> Connector {
    Arc::new(|address: String| {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&address).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    })
}

/// Serves connections accepted by a tokio TCP listener.
pub fn tcp_incoming(listener: tokio::net::TcpListener) -> Incoming {
    Box::pin(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(Conn(Box::new(stream) as Box<dyn Io>))
        });
        Some((accepted, listener))
    }))
}

/// Transport settings for a gRPC channel.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// Bound on opening the TCP connection.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval. Without keepalive a channel whose peer vanished
    /// (partition, kill -9) is never noticed and never reconnects.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// Largest message accepted or sent, in bytes.
    pub message_bytes_max: usize,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            connect_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            message_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// A lazily connected channel to `address` ("host:port") through `connector`. It reconnects
/// by itself after failures.
pub fn channel(
    address: &str,
    connector: &Connector,
    settings: &ChannelSettings,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(settings.connect_timeout)
        .http2_keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let connector = Arc::clone(connector);
    let target = address.to_string();
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
        let connector = Arc::clone(&connector);
        let target = target.clone();
        async move { connector(target).await.map(TokioIo::new) }
    })))
}
