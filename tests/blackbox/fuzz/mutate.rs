//! Turning a request into a malformed one: mutations of the message bytes (random bytes, bit
//! flips, truncation, splices, lengths pointing past the end, overlong varints, huge repeated
//! counts, deep nesting of unknown fields, wrong wire types, invalid tags) and of the gRPC and
//! HTTP/2 framing around them (truncated, oversized and garbage frames, a compressed flag
//! without compression, compression bombs, bad headers, abandoned streams).

use std::sync::OnceLock;

use bytes::Bytes;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use super::raw_grpc::{RawCall, frame, frame_claiming};
use super::schema::random_bytes;
use super::wire::{self, put_len, put_tag, put_varint};

/// A mutation of the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutation {
    /// The generated message as it is (valid protobuf, extreme values).
    Unchanged,
    /// Random bytes instead of a message.
    Random,
    /// Up to 8 bits flipped.
    BitFlips,
    /// A few bytes replaced by 0x00, 0x7f, 0x80 or 0xff.
    InterestingBytes,
    /// Cut short at a random point.
    Truncated,
    /// The head of this message followed by the tail of another.
    Splice,
    /// Random bytes inserted somewhere.
    Inserted,
    /// A length prefix of a field made to point past the end (or to be absurd).
    LengthPastEnd,
    /// A varint made longer than ten bytes.
    OverlongVarint,
    /// One field repeated tens of thousands of times.
    HugeRepeat,
    /// Unknown fields nested as groups, thousands deep.
    DeepGroups,
    /// Unknown fields nested as length-delimited messages, thousands deep.
    DeepLen,
    /// A known field re-sent with the wrong wire type.
    WrongWireType,
    /// A tag with field number 0, a reserved number or an end-group without a start.
    InvalidTag,
    /// No bytes at all (every field at its default).
    Empty,
}

const MUTATIONS: [Mutation; 15] = [
    Mutation::Unchanged,
    Mutation::Random,
    Mutation::BitFlips,
    Mutation::InterestingBytes,
    Mutation::Truncated,
    Mutation::Splice,
    Mutation::Inserted,
    Mutation::LengthPastEnd,
    Mutation::OverlongVarint,
    Mutation::HugeRepeat,
    Mutation::DeepGroups,
    Mutation::DeepLen,
    Mutation::WrongWireType,
    Mutation::InvalidTag,
    Mutation::Empty,
];

/// Picks a mutation and applies it to `message`; `other` is another request to splice with.
pub fn mutate(message: Vec<u8>, other: &[u8], rng: &mut StdRng) -> (Mutation, Vec<u8>) {
    // Unchanged requests are the ones that get past decoding: give them a larger share.
    let mutation = if rng.random_bool(0.3) { Mutation::Unchanged } else { *MUTATIONS.choose(rng).expect("not empty") };
    (mutation, apply(mutation, message, other, rng))
}

fn apply(mutation: Mutation, mut message: Vec<u8>, other: &[u8], rng: &mut StdRng) -> Vec<u8> {
    match mutation {
        Mutation::Unchanged => message,
        Mutation::Random => {
            let max = if rng.random_bool(0.9) { 64 } else { 64 * 1024 };
            random_bytes(rng, max)
        }
        Mutation::BitFlips => {
            if !message.is_empty() {
                for _ in 0..rng.random_range(1..=8) {
                    let at = rng.random_range(0..message.len());
                    message[at] ^= 1 << rng.random_range(0..8);
                }
            }
            message
        }
        Mutation::InterestingBytes => {
            if !message.is_empty() {
                for _ in 0..rng.random_range(1..=4) {
                    let at = rng.random_range(0..message.len());
                    message[at] = *[0x00, 0x7f, 0x80, 0xff].choose(rng).expect("not empty");
                }
            }
            message
        }
        Mutation::Truncated => {
            let keep = rng.random_range(0..=message.len());
            message.truncate(keep);
            message
        }
        Mutation::Splice => {
            let head = rng.random_range(0..=message.len());
            let tail = rng.random_range(0..=other.len());
            message.truncate(head);
            message.extend_from_slice(&other[tail..]);
            message
        }
        Mutation::Inserted => {
            let at = rng.random_range(0..=message.len());
            let inserted = random_bytes(rng, 16);
            message.splice(at..at, inserted);
            message
        }
        Mutation::LengthPastEnd => length_past_end(message, rng),
        Mutation::OverlongVarint => {
            // Eleven continuation bytes, then a terminator: no valid varint is that long.
            let at = rng.random_range(0..=message.len());
            let mut overlong = vec![0xff; 11];
            overlong.push(0x01);
            message.splice(at..at, overlong);
            message
        }
        Mutation::HugeRepeat => huge_repeat(message, rng),
        Mutation::DeepGroups => {
            let depth = rng.random_range(50..20_000u64);
            let number = rng.random_range(1000..2000);
            for _ in 0..depth {
                put_tag(&mut message, number, wire::START_GROUP);
            }
            if rng.random_bool(0.5) {
                for _ in 0..depth {
                    put_tag(&mut message, number, wire::END_GROUP);
                }
            }
            message
        }
        Mutation::DeepLen => {
            let depth = rng.random_range(50..5_000);
            let number = rng.random_range(1000..2000);
            let mut nested = Vec::new();
            for _ in 0..depth {
                let mut outer = Vec::new();
                put_len(&mut outer, number, &nested);
                nested = outer;
            }
            message.extend_from_slice(&nested);
            message
        }
        Mutation::WrongWireType => {
            let Some(fields) = wire::fields(&message) else { return message };
            let Some(field) = fields.choose(rng) else { return message };
            let wrong = *[wire::VARINT, wire::FIXED64, wire::LEN, wire::FIXED32]
                .iter()
                .filter(|&&kind| kind != field.wire_type)
                .collect::<Vec<_>>()
                .choose(rng)
                .expect("three others");
            put_tag(&mut message, field.number, *wrong);
            message.extend_from_slice(&random_bytes(rng, 12));
            message
        }
        Mutation::InvalidTag => {
            let at = rng.random_range(0..=message.len());
            let mut tag = Vec::new();
            match rng.random_range(0..4) {
                0 => put_tag(&mut tag, 0, wire::VARINT),
                1 => put_tag(&mut tag, 19_000, wire::VARINT),
                2 => put_tag(&mut tag, 1 << 29, wire::LEN),
                _ => put_tag(&mut tag, 5, wire::END_GROUP),
            }
            put_varint(&mut tag, 1);
            message.splice(at..at, tag);
            message
        }
        Mutation::Empty => Vec::new(),
    }
}

/// Rewrites the length of one length-delimited field so it points past the message's end,
/// or to an absurd size; the field's bytes stay as they were.
fn length_past_end(message: Vec<u8>, rng: &mut StdRng) -> Vec<u8> {
    let Some(fields) = wire::fields(&message) else { return message };
    let lengths: Vec<(usize, usize)> = fields.iter().filter_map(|field| field.length_at).collect();
    let Some(&(start, end)) = lengths.choose(rng) else { return message };
    let remaining = (message.len() - end) as u64;
    let claimed = *[remaining + 1, remaining + 1000, u64::from(u32::MAX), u64::MAX].choose(rng).expect("not empty");
    let mut out = message[..start].to_vec();
    put_varint(&mut out, claimed);
    out.extend_from_slice(&message[end..]);
    out
}

/// Repeats one top-level field of `message` (or, with none, a small unknown one) until the
/// message holds tens of thousands of copies, up to about 6 MiB.
fn huge_repeat(mut message: Vec<u8>, rng: &mut StdRng) -> Vec<u8> {
    let copy = match wire::fields(&message).as_deref().and_then(|fields| fields.choose(rng).copied()) {
        Some(field) => message[field.start..field.end].to_vec(),
        None => {
            let mut unknown = Vec::new();
            put_tag(&mut unknown, 77, wire::VARINT);
            put_varint(&mut unknown, 1);
            unknown
        }
    };
    let times = rng.random_range(10_000..200_000).min(6 * 1024 * 1024 / copy.len().max(1));
    message.reserve(copy.len() * times);
    for _ in 0..times {
        message.extend_from_slice(&copy);
    }
    message
}

/// How the message travels: the gRPC framing and HTTP/2 headers around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Framing {
    /// One well-formed frame.
    Plain,
    /// One well-formed frame split into DATA frames of a few bytes each.
    Dribbled,
    /// The length prefix claims more than is sent, then the stream ends.
    Truncated,
    /// The length prefix claims fewer bytes than follow: garbage after the frame.
    GarbageAfter,
    /// Two frames on a unary call.
    TwoMessages,
    /// The length prefix claims more than the server's decode limit.
    Oversized,
    /// A real message just over the 4 MiB default decode limit.
    OversizedReal,
    /// No frame at all, or fewer than 5 bytes of one.
    ShortHeader,
    /// A flag byte other than 0 or 1.
    BadFlag,
    /// The compressed flag set without a `grpc-encoding` header.
    CompressedNoEncoding,
    /// `grpc-encoding: gzip` or `zstd` with bytes that do not decompress.
    CompressedGarbage,
    /// A small gzip or zstd message that decompresses past the decode limit.
    Bomb,
    /// A `grpc-encoding` the server does not know.
    UnknownEncoding,
    /// Wrong `content-type`, garbage `grpc-timeout`, or no `te: trailers`.
    BadHeaders,
    /// Half a frame, then the client resets the stream.
    Abandoned,
    /// Half a frame and no end of stream: the client gives up after a moment.
    Unfinished,
}

const FRAMINGS: [Framing; 16] = [
    Framing::Plain,
    Framing::Dribbled,
    Framing::Truncated,
    Framing::GarbageAfter,
    Framing::TwoMessages,
    Framing::Oversized,
    Framing::OversizedReal,
    Framing::ShortHeader,
    Framing::BadFlag,
    Framing::CompressedNoEncoding,
    Framing::CompressedGarbage,
    Framing::Bomb,
    Framing::UnknownEncoding,
    Framing::BadHeaders,
    Framing::Abandoned,
    Framing::Unfinished,
];

impl Framing {
    /// Whether the server may answer this framing with an HTTP/2 reset instead of a gRPC
    /// status: only when the client itself stopped the request (an abandoned or unfinished
    /// stream has nobody left to answer).
    pub fn may_go_unanswered(self) -> bool {
        matches!(self, Framing::Abandoned | Framing::Unfinished)
    }
}

/// Picks a framing (mostly a plain frame, so message mutations dominate) and builds the call.
pub fn frame_call(path: &str, message: Vec<u8>, rng: &mut StdRng) -> (Framing, RawCall) {
    let framing = if rng.random_bool(0.6) { Framing::Plain } else { *FRAMINGS.choose(rng).expect("not empty") };
    let mut call = RawCall {
        path: path.to_string(),
        headers: Vec::new(),
        body: Bytes::new(),
        chunk_bytes: 0,
        end_stream: true,
        abandon: false,
    };
    let body = match framing {
        Framing::Plain => frame(false, &message),
        Framing::Dribbled => {
            // At most a few hundred tiny DATA frames: h2 answers a flood of them (each costs
            // the server more than it carries) with GOAWAY ENHANCE_YOUR_CALM, a deliberate
            // defence of the HTTP/2 layer rather than something to fuzz.
            call.chunk_bytes = rng.random_range(1..8);
            let mut message = message;
            message.truncate(512);
            frame(false, &message)
        }
        Framing::Truncated => {
            let extra = rng.random_range(1..1_000_000);
            frame_claiming(false, (message.len() as u32).saturating_add(extra), &message)
        }
        Framing::GarbageAfter => {
            let claimed = rng.random_range(0..=message.len()) as u32;
            let mut body = frame_claiming(false, claimed, &message);
            body.extend_from_slice(&random_bytes(rng, 8));
            body
        }
        Framing::TwoMessages => {
            let mut body = frame(false, &message);
            body.extend(frame(false, &message));
            body
        }
        Framing::Oversized => {
            let claimed = *[4 * 1024 * 1024 + 1, 64 * 1024 * 1024 + 1, u32::MAX].choose(rng).expect("not empty");
            let mut message = message;
            message.truncate(64 * 1024);
            frame_claiming(false, claimed, &message)
        }
        Framing::OversizedReal => {
            // Rarely: each one moves 4 MiB.
            if rng.random_bool(0.2) {
                let mut padded = Vec::with_capacity(4 * 1024 * 1024 + 16);
                // An unknown field holding 4 MiB, so the message is valid apart from its size.
                put_len(&mut padded, 999, &vec![0x5a; 4 * 1024 * 1024]);
                padded.extend_from_slice(&message);
                frame(false, &padded)
            } else {
                frame(false, &message)
            }
        }
        Framing::ShortHeader => {
            let mut body = frame(false, &message);
            body.truncate(rng.random_range(0..5));
            body
        }
        Framing::BadFlag => {
            let mut body = frame(false, &message);
            body[0] = rng.random_range(2..=255);
            body
        }
        Framing::CompressedNoEncoding => frame(true, &message),
        Framing::CompressedGarbage => {
            call.headers.push(("grpc-encoding".into(), encoding(rng).into()));
            frame(true, &message)
        }
        Framing::Bomb => {
            let name = encoding(rng);
            let (gzip, zstd) = bombs().choose(rng).expect("not empty");
            let bomb = if name == "gzip" { gzip } else { zstd };
            call.headers.push(("grpc-encoding".into(), name.into()));
            frame(true, bomb)
        }
        Framing::UnknownEncoding => {
            call.headers.push(("grpc-encoding".into(), b"br".to_vec()));
            frame(true, &message)
        }
        Framing::BadHeaders => {
            let header: (&str, &[u8]) = *[
                ("content-type", b"text/plain".as_slice()),
                ("content-type", b"application/grpc+json"),
                ("grpc-timeout", b"99999999999H"),
                ("grpc-timeout", b"-1S"),
                ("grpc-timeout", b"soon"),
                // No `te: trailers` (h2 refuses to send any other value of `te`).
                ("-te", b""),
                ("grpc-accept-encoding", b"bogus;q=2, ,,"),
            ]
            .choose(rng)
            .expect("not empty");
            call.headers.push((header.0.into(), header.1.to_vec()));
            frame(false, &message)
        }
        Framing::Abandoned | Framing::Unfinished => {
            let body = frame(false, &message);
            call.abandon = framing == Framing::Abandoned;
            call.end_stream = false;
            let keep = rng.random_range(0..=body.len());
            body[..keep].to_vec()
        }
    };
    call.body = Bytes::from(body);
    (framing, call)
}

fn encoding(rng: &mut StdRng) -> &'static str {
    if rng.random_bool(0.5) { "gzip" } else { "zstd" }
}

/// Compressed runs of zeros, as (gzip, zstd) pairs: one that inflates to just under the
/// largest decode limit (64 MiB: the server inflates it, then fails to decode it) and one
/// just over it (the server must stop inflating at the limit). A few hundred KiB on the wire.
fn bombs() -> &'static [(Vec<u8>, Vec<u8>); 2] {
    static BOMBS: OnceLock<[(Vec<u8>, Vec<u8>); 2]> = OnceLock::new();
    BOMBS.get_or_init(|| {
        [60 * 1024 * 1024, 65 * 1024 * 1024].map(|len| {
            use std::io::Write as _;
            let zeros = vec![0u8; len];
            let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gzip.write_all(&zeros).expect("writing to memory");
            let gzip = gzip.finish().expect("writing to memory");
            let zstd = zstd::encode_all(zeros.as_slice(), 3).expect("compressing in memory");
            (gzip, zstd)
        })
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn length_past_end_points_past_the_end() {
        let mut message = Vec::new();
        put_len(&mut message, 1, b"abc");
        put_tag(&mut message, 2, wire::VARINT);
        put_varint(&mut message, 5);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let broken = length_past_end(message.clone(), &mut rng);
            let (claimed, after) = wire::varint(&broken, 1).expect("a length");
            assert!(claimed > (broken.len() - after) as u64, "{broken:?}");
        }
    }

    #[test]
    fn huge_repeat_repeats_a_field() {
        let mut message = Vec::new();
        put_tag(&mut message, 2, wire::VARINT);
        put_varint(&mut message, 5);
        let repeated = huge_repeat(message, &mut StdRng::seed_from_u64(2));
        let fields = wire::fields(&repeated).expect("still well formed");
        assert!(fields.len() >= 10_000 && fields.iter().all(|field| field.number == 2), "{}", fields.len());
    }
}
