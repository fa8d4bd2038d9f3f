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

/// Pause after a failed accept. Errors such as "too many open files" repeat until something
/// changes; accepting again at once would spin a core (the server goes on after an error).
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves connections accepted by a tokio TCP listener.
pub fn tcp_incoming(listener: tokio::net::TcpListener) -> Incoming {
    Box::pin(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(Conn(Box::new(stream) as Box<dyn Io>))
        });
        if let Err(err) = &accepted {
            tracing::warn!(error = %err, "accepting a connection failed; pausing before the next accept");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
        }
        Some((accepted, listener))
    }))
}

/// At most `max` connections of `incoming` open at once: the next one is accepted only when
/// one closes (until then new connections wait in the listen backlog).
pub fn limit_connections(incoming: Incoming, max: usize) -> Incoming {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    Box::pin(futures::stream::unfold((incoming, slots), |(mut incoming, slots)| async move {
        let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
        let next = futures::StreamExt::next(&mut incoming).await?;
        let next = next.map(|Conn(io)| Conn(Box::new(Counted { io, _slot: slot })));
        Some((next, (incoming, slots)))
    }))
}

/// A connection holding one of [`limit_connections`]' slots until it is dropped.
struct Counted {
    io: Box<dyn Io>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_beyond_the_limit_waits_until_one_closes() {
        let (conns, _peers): (Vec<Conn>, Vec<_>) = (0..3)
            .map(|_| {
                let (a, b) = tokio::io::duplex(64);
                (Conn(Box::new(a)), b)
            })
            .unzip();
        let incoming: Incoming = Box::pin(futures::stream::iter(conns.into_iter().map(Ok)));
        let mut limited = limit_connections(incoming, 2);
        use futures::StreamExt;
        let first = limited.next().await.expect("first").expect("ok");
        let _second = limited.next().await.expect("second").expect("ok");
        let third = tokio::time::timeout(Duration::from_millis(50), limited.next()).await;
        assert!(third.is_err(), "a third connection was accepted while two were open");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), limited.next()).await;
        assert!(matches!(third, Ok(Some(Ok(_)))), "the third connection is accepted once one closed");
    }
}
