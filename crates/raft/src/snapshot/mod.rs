//! Snapshots in bounded pieces: what openraft moves between nodes as a group's snapshot data.
//!
//! A snapshot is a sequence of *frames* (each one application-defined, self-describing and
//! bounded: a section of a part's state, a run of retained records). The sender packs frames
//! into *chunks* of about [`CHUNK_BYTES`] and sends them one RPC at a time, each with its own
//! deadline; the receiver writes each chunk to a staging area in its engine as it arrives.
//! Neither side ever holds the whole snapshot in memory, and no deadline covers the whole
//! transfer. Installing then reads the staged chunks back frame by frame ([`staging`]).

pub(crate) mod keys;
pub(crate) mod staging;

use std::io;

/// Frames packed into one chunk up to about this many bytes (a larger frame travels alone).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Where the frames of a snapshot come from, read lazily: a partition's source reads retained
/// records through an engine view as the transfer asks for them.
pub trait FrameSource: Send + 'static {
    /// The next frame, or `None` after the last. May block on storage.
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>>;
}

/// A [`FrameSource`] over any iterator of frames.
pub struct IterFrames<I>(pub I);

impl<I: Iterator<Item = io::Result<Vec<u8>>> + Send + 'static> FrameSource for IterFrames<I> {
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.0.next().transpose()
    }
}

/// A group's snapshot data as openraft carries it (`RaftStateMachine::SnapshotData`).
pub struct GroupSnapshot {
    body: Body,
}

enum Body {
    /// To be sent: frames read on demand. `blocking`: reading them blocks on real I/O, so the
    /// sender reads on a blocking thread.
    Source { frames: Box<dyn FrameSource>, blocking: bool, peeked: Option<Vec<u8>> },
    /// Received: `chunks` chunks staged in this node's engine.
    Staged { chunks: u64 },
    /// No data: the partition "builds" a snapshot only to let openraft purge its log; the
    /// data of an actual transfer is read fresh when one starts.
    MetaOnly,
}

impl std::fmt::Debug for GroupSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.body {
            Body::Source { blocking, .. } => write!(f, "GroupSnapshot::Source(blocking: {blocking})"),
            Body::Staged { chunks } => write!(f, "GroupSnapshot::Staged({chunks} chunks)"),
            Body::MetaOnly => write!(f, "GroupSnapshot::MetaOnly"),
        }
    }
}

impl GroupSnapshot {
    /// Snapshot data to send, read from `frames`.
    pub fn source(frames: Box<dyn FrameSource>, blocking: bool) -> Self {
        GroupSnapshot { body: Body::Source { frames, blocking, peeked: None } }
    }

    /// Snapshot data received into the staging area.
    pub(crate) fn staged(chunks: u64) -> Self {
        GroupSnapshot { body: Body::Staged { chunks } }
    }

    /// A snapshot that has only its metadata.
    pub(crate) fn meta_only() -> Self {
        GroupSnapshot { body: Body::MetaOnly }
    }

    /// Staged chunks, if this snapshot was received.
    pub(crate) fn staged_chunks(&self) -> Option<u64> {
        match self.body {
            Body::Staged { chunks } => Some(chunks),
            _ => None,
        }
    }

    /// Whether reading the next chunk blocks on real I/O.
    pub fn blocks(&self) -> bool {
        matches!(self.body, Body::Source { blocking: true, .. })
    }

    /// The next chunk to send: frames packed up to about [`CHUNK_BYTES`] (one oversized frame
    /// alone), or `None` once every frame has been sent.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Body::Source { frames, peeked, .. } = &mut self.body else {
            return Err(io::Error::other("only a snapshot being sent has chunks to read"));
        };
        let mut chunk = Vec::new();
        loop {
            let frame = match peeked.take() {
                Some(frame) => frame,
                None => match frames.next_frame()? {
                    Some(frame) => frame,
                    None => break,
                },
            };
            if !chunk.is_empty() && chunk.len() + 4 + frame.len() > CHUNK_BYTES {
                *peeked = Some(frame);
                break;
            }
            push_frame(&mut chunk, &frame);
            if chunk.len() >= CHUNK_BYTES {
                break;
            }
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}

/// Appends one length-prefixed frame to `chunk`.
fn push_frame(chunk: &mut Vec<u8>, frame: &[u8]) {
    let length = u32::try_from(frame.len()).expect("frames are bounded far below 4 GiB");
    chunk.extend_from_slice(&length.to_le_bytes());
    chunk.extend_from_slice(frame);
}

/// The frames of one chunk.
pub(crate) fn split_frames(chunk: &[u8]) -> io::Result<Vec<&[u8]>> {
    let mut frames = Vec::new();
    let mut rest = chunk;
    while !rest.is_empty() {
        let (length, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "snapshot chunk ends inside a frame header"))?;
        let length = u32::from_le_bytes(*length) as usize;
        if tail.len() < length {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot frame of {length} bytes runs past the end of its chunk ({} left)", tail.len()),
            ));
        }
        let (frame, after) = tail.split_at(length);
        frames.push(frame);
        rest = after;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(sizes: &[usize]) -> GroupSnapshot {
        let frames: Vec<io::Result<Vec<u8>>> =
            sizes.iter().enumerate().map(|(i, size)| Ok(vec![i as u8; *size])).collect();
        GroupSnapshot::source(Box::new(IterFrames(frames.into_iter())), false)
    }

    #[test]
    fn chunks_pack_frames_up_to_the_bound_and_split_back_exactly() {
        let sizes = [10, CHUNK_BYTES / 2, CHUNK_BYTES / 2, 3 * CHUNK_BYTES, 0, 7];
        let mut snapshot = frames(&sizes);
        let mut chunks = Vec::new();
        while let Some(chunk) = snapshot.next_chunk().expect("chunk") {
            chunks.push(chunk);
        }
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES + 4 || split_frames(c).expect("frames").len() == 1));
        let back: Vec<Vec<u8>> =
            chunks.iter().flat_map(|c| split_frames(c).expect("frames")).map(<[u8]>::to_vec).collect();
        let expected: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, size)| vec![i as u8; *size]).collect();
        assert_eq!(back, expected, "every frame, in order, byte for byte");
        assert_eq!(chunks.len(), 4, "10+half | half | 3 MiB alone | 0+7");
    }

    #[test]
    fn an_empty_snapshot_has_no_chunks_and_a_torn_chunk_is_refused() {
        assert!(frames(&[]).next_chunk().expect("chunk").is_none());
        let mut chunk = Vec::new();
        push_frame(&mut chunk, b"hello");
        assert!(split_frames(&chunk[..chunk.len() - 1]).is_err());
        assert!(split_frames(&chunk[..2]).is_err());
    }
}
