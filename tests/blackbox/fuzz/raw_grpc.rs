//! A gRPC client that sends whatever bytes it is given: one HTTP/2 connection (h2, no gRPC
//! library in between), request headers and DATA frames exactly as the caller builds them, and
//! an answer classified by what the server really sent. A tonic client would hide the very
//! things under test: it frames messages itself and turns a missing `grpc-status` into a
//! status of its own making.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request};
use tokio::net::TcpStream;

/// One request: the method path, extra or replaced headers, and the DATA to send.
#[derive(Debug, Clone)]
pub struct RawCall {
    /// `/package.Service/Method`.
    pub path: String,
    /// Headers sent after the defaults (`content-type: application/grpc`, `te: trailers`,
    /// `grpc-timeout`); a header named here replaces the default of that name, and a name
    /// with a leading `-` (`-te`) leaves the default out.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The request body, sent as one or more DATA frames (see `chunks`).
    pub body: Bytes,
    /// Split the body into DATA frames of at most this many bytes (0: one frame).
    pub chunk_bytes: usize,
    /// Whether the last DATA frame ends the stream. False models a client that stops sending
    /// mid-message and then resets the stream (`abandon`).
    pub end_stream: bool,
    /// Reset the stream right after sending instead of waiting for an answer.
    pub abandon: bool,
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A gRPC status (trailers or a trailers-only response).
    Status {
        /// `grpc-status`.
        code: i32,
        /// `grpc-message`, percent-decoded loosely (only for reading).
        message: String,
        /// Response messages before the status, if every one was well framed.
        messages: usize,
        /// Whether the response body was a valid sequence of gRPC frames.
        well_framed: bool,
        /// The `flotilla-error-code` trailer: the server's own handler refused the request
        /// (rather than the gRPC layer in front of it).
        error_code: Option<String>,
    },
    /// An HTTP response without `grpc-status`.
    NoStatus {
        /// Its HTTP status.
        http_status: u16,
    },
    /// The server reset the stream (RST_STREAM) or closed the connection before a status.
    Reset(String),
    /// The call was reset by us on purpose (`RawCall::abandon`).
    Abandoned,
}

/// An HTTP/2 connection to one node.
pub struct RawConnection {
    authority: String,
    sender: SendRequest<Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl RawConnection {
    /// Connects to `address` ("127.0.0.1:PORT") and completes the HTTP/2 handshake.
    pub async fn connect(address: &str) -> anyhow::Result<RawConnection> {
        let tcp = TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = h2::client::Builder::new()
            // Room for large fetch answers without a flow-control round trip per 64 KiB.
            .initial_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .handshake::<_, Bytes>(tcp)
            .await
            .with_context(|| format!("HTTP/2 handshake with {address}"))?;
        let driver = tokio::spawn(async move {
            // Ends with the connection: a GOAWAY, a reset or our drop.
            let _ = connection.await;
        });
        Ok(RawConnection { authority: address.to_string(), sender, driver })
    }

    /// Whether the connection can still carry calls.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }

    /// Sends `call` and waits for the answer, at most `timeout`. `Ok(None)` means no answer
    /// in time: the server hangs.
    pub async fn call(&mut self, call: &RawCall, timeout: Duration) -> anyhow::Result<Option<Answer>> {
        match tokio::time::timeout(timeout, self.call_inner(call)).await {
            Ok(answer) => answer.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    async fn call_inner(&mut self, call: &RawCall) -> anyhow::Result<Answer> {
        let mut builder = Request::builder().method("POST").uri(format!("http://{}{}", self.authority, call.path));
        let defaults: [(&str, &[u8]); 3] =
            [("content-type", b"application/grpc"), ("te", b"trailers"), ("grpc-timeout", b"5S")];
        for (name, value) in defaults {
            if !call.headers.iter().any(|(given, _)| given.trim_start_matches('-').eq_ignore_ascii_case(name)) {
                builder = builder.header(name, value);
            }
        }
        for (name, value) in &call.headers {
            let name = name.trim_start_matches('-');
            if !call.headers.iter().any(|(given, _)| given.strip_prefix('-') == Some(name)) {
                builder = builder.header(name, value.as_slice());
            }
        }
        let request = builder.body(()).context("building the request head")?;
        let sender = self.sender.clone().ready().await;
        let mut sender = match sender {
            Ok(sender) => sender,
            Err(error) => return Ok(Answer::Reset(format!("connection unusable: {error}"))),
        };
        let (response, mut stream) = match sender.send_request(request, false) {
            Ok(sent) => sent,
            Err(error) => return Ok(Answer::Reset(format!("request refused: {error}"))),
        };
        let chunks: Vec<Bytes> = if call.chunk_bytes == 0 || call.body.is_empty() {
            vec![call.body.clone()]
        } else {
            (0..call.body.len())
                .step_by(call.chunk_bytes)
                .map(|start| call.body.slice(start..(start + call.chunk_bytes).min(call.body.len())))
                .collect()
        };
        let last = chunks.len() - 1;
        for (index, chunk) in chunks.into_iter().enumerate() {
            let end = call.end_stream && !call.abandon && index == last;
            if let Err(error) = stream.send_data(chunk, end) {
                // The server may answer (and close its side) before reading everything, for
                // instance after refusing an oversized length prefix: read what it said.
                if error.is_reset() || error.is_go_away() || error.is_io() {
                    break;
                }
                return Ok(Answer::Reset(format!("sending: {error}")));
            }
        }
        if call.abandon {
            stream.send_reset(h2::Reason::CANCEL);
            return Ok(Answer::Abandoned);
        }
        if !call.end_stream {
            // An unfinished request that we stop waiting for: give the server a moment to
            // answer early, then reset it like a client that gave up.
            return match tokio::time::timeout(Duration::from_millis(200), response).await {
                Ok(Ok(response)) => read_answer(response).await,
                Ok(Err(error)) => Ok(Answer::Reset(error.to_string())),
                Err(_elapsed) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    Ok(Answer::Abandoned)
                }
            };
        }
        match response.await {
            Ok(response) => read_answer(response).await,
            Err(error) => Ok(Answer::Reset(error.to_string())),
        }
    }
}

impl Drop for RawConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn read_answer(response: http::Response<h2::RecvStream>) -> anyhow::Result<Answer> {
    let (head, mut body) = response.into_parts();
    if let Some(answer) = status_in(&head.headers, 0, true) {
        // Trailers-only response: the status is in the headers.
        return Ok(answer);
    }
    // Answers are counted frame by frame as they arrive, not kept: a fuzzed fetch or batch may
    // legitimately be answered with tens of MiB.
    let mut frames = FrameCounter::default();
    while let Some(chunk) = body.data().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => return Ok(Answer::Reset(format!("reading the body: {error}"))),
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        frames.feed(&chunk);
    }
    let trailers = match body.trailers().await {
        Ok(trailers) => trailers,
        Err(error) => return Ok(Answer::Reset(format!("reading the trailers: {error}"))),
    };
    let (messages, well_framed) = frames.finish();
    match trailers.as_ref().and_then(|trailers| status_in(trailers, messages, well_framed)) {
        Some(answer) => Ok(answer),
        None => Ok(Answer::NoStatus { http_status: head.status.as_u16() }),
    }
}

fn status_in(headers: &HeaderMap, messages: usize, well_framed: bool) -> Option<Answer> {
    let code = headers.get("grpc-status")?;
    let code = std::str::from_utf8(code.as_bytes()).ok().and_then(|code| code.parse::<i32>().ok()).unwrap_or(-1);
    let message = headers.get("grpc-message").map(|value| percent_decode(value.as_bytes())).unwrap_or_default();
    let error_code =
        headers.get("flotilla-error-code").map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    Some(Answer::Status { code, message, messages, well_framed, error_code })
}

/// Counts the gRPC frames (flag byte, 4-byte length, message) of a response body fed in
/// pieces, and notices one that is not a whole number of frames.
#[derive(Debug, Default)]
struct FrameCounter {
    /// Bytes of the current frame's 5-byte header seen so far.
    header: Vec<u8>,
    /// Message bytes of the current frame still to come.
    remaining: u64,
    frames: usize,
    broken: bool,
}

impl FrameCounter {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.remaining > 0 {
                let take = bytes.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= take as u64;
                bytes = &bytes[take..];
                if self.remaining == 0 {
                    self.frames += 1;
                }
                continue;
            }
            let take = (5 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header.len() == 5 {
                if self.header[0] > 1 {
                    self.broken = true;
                }
                let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                self.header.clear();
                if len == 0 {
                    self.frames += 1;
                } else {
                    self.remaining = u64::from(len);
                }
            }
        }
    }

    /// Frames seen, and whether the body ended at a frame boundary.
    fn finish(&self) -> (usize, bool) {
        (self.frames, !self.broken && self.header.is_empty() && self.remaining == 0)
    }
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[index], bytes.get(index + 1).copied().and_then(hex), bytes.get(index + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                index += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Frames `message` as one gRPC message: flag byte, big-endian length, bytes.
pub fn frame(compressed: bool, message: &[u8]) -> Vec<u8> {
    frame_claiming(compressed, message.len() as u32, message)
}

/// A gRPC frame whose length prefix says `claimed` whatever `message` really holds.
pub fn frame_claiming(compressed: bool, claimed: u32, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(u8::from(compressed));
    out.extend_from_slice(&claimed.to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in 3-byte pieces, so frame headers straddle pieces.
    fn count_frames(body: &[u8]) -> (usize, bool) {
        let mut counter = FrameCounter::default();
        for piece in body.chunks(3) {
            counter.feed(piece);
        }
        counter.finish()
    }

    #[test]
    fn frames_are_counted_and_torn_ones_noticed() {
        let mut body = frame(false, b"abc");
        body.extend(frame(true, b""));
        assert_eq!(count_frames(&body), (2, true));
        body.pop();
        assert_eq!(count_frames(&body), (1, false));
        assert_eq!(percent_decode(b"a%20b%zz"), "a b%zz");
    }
}
