//! The HTTP side port: `/health` for load balancers and orchestrators, `/metrics` in the
//! Prometheus text format. Deliberately tiny (HTTP/1.1, one request per connection).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Renders the current metrics as Prometheus text.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Bytes of request head read at most; anything longer is refused.
const REQUEST_HEAD_MAX: usize = 8192;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 64;

/// Serves `/health` and `/metrics` on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, metrics: MetricsFn) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Such errors (too many open files) repeat: pause instead of spinning.
                tracing::warn!(error = %err, "HTTP port: accepting a connection failed");
                tokio::time::sleep(flotilla_proto::net::ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _slot = slot;
            let mut head = vec![0u8; REQUEST_HEAD_MAX];
            let Ok(Ok(n)) = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut head)).await else { return };
            let request = String::from_utf8_lossy(&head[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/health" | "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics()),
                _ => ("404 Not Found", "text/plain", "try /health or /metrics\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            // Bounded too: a client that does not read would hold its slot forever.
            let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await;
        });
    }
}
