//! `RequestLog`: the replies to the last deduplicated metadata requests, so a proposal retried
//! after an ambiguous failure (a reset connection after the leader applied it, a leader change
//! mid-request) gets the outcome of its first application instead of being applied again.
//!
//! Part of the replicated state: every replica applies the same commands in the same order, so
//! every replica remembers and forgets the same requests, and the log rides in the snapshot.

use std::collections::VecDeque;

use flotilla_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::MetaReply;

/// Requests remembered. A retry comes within one proposal's timeout (seconds) of the first
/// attempt, so this only has to outlast the deduplicated commands (topic, replica and group
/// membership changes, never heartbeats or offset commits) proposed in that time.
pub const REQUESTS_REMEMBERED: usize = 4096;

/// Who proposed a command, unique in the cluster's life: the proposing node, a number drawn
/// when that node process started (a restarted node draws anew), and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub node: NodeId,
    pub incarnation: u64,
    pub sequence: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:x}/{}", self.node, self.incarnation, self.sequence)
    }
}

/// The replies to the last [`REQUESTS_REMEMBERED`] requests, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLog {
    replies: VecDeque<(RequestId, MetaReply)>,
}

impl RequestLog {
    /// The reply `request` got when it was applied, if it was and is still remembered.
    pub fn reply(&self, request: &RequestId) -> Option<&MetaReply> {
        // Linear: deduplicated commands are rare (administration and group membership), and
        // this runs once per such command.
        self.replies.iter().rev().find(|(id, _)| id == request).map(|(_, reply)| reply)
    }

    /// Remembers `reply` as the outcome of `request`, forgetting the oldest beyond the bound.
    pub fn remember(&mut self, request: RequestId, reply: MetaReply) {
        self.replies.push_back((request, reply));
        while self.replies.len() > REQUESTS_REMEMBERED {
            self.replies.pop_front();
        }
    }

    /// Requests remembered.
    pub fn len(&self) -> usize {
        self.replies.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetaResponse;

    fn id(sequence: u64) -> RequestId {
        RequestId { node: 1, incarnation: 7, sequence }
    }

    #[test]
    fn remembers_the_last_requests_only() {
        let mut log = RequestLog::default();
        for sequence in 0..=REQUESTS_REMEMBERED as u64 {
            log.remember(id(sequence), MetaResponse::Done.into());
        }
        assert_eq!(log.len(), REQUESTS_REMEMBERED);
        assert!(log.reply(&id(0)).is_none(), "the oldest is forgotten");
        assert_eq!(log.reply(&id(1)), Some(&MetaResponse::Done.into()));
        assert!(log.reply(&RequestId { node: 2, ..id(1) }).is_none(), "another node's request is another request");
    }
}
