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

/// Serves `/health` and `/metrics` on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, metrics: MetricsFn) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
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
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
