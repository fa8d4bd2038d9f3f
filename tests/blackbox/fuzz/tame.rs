//! The two kinds of request the fuzzer must not send as generated, and what it sends instead.
//! Each check decodes the request exactly as the server will (the same generated prost types),
//! so whatever the server would act on has been looked at.
//!
//! - Raft payloads on the peer port. The peer port trusts its peers: it has no
//!   authentication yet, and a Raft message or proposal that decodes is acted on. Random bytes
//!   often are valid postcard — `[0, 0, 0, 0]` proposed to the metadata group is "register node
//!   0 with no addresses", after which topics get replicas on a node that does not exist (the
//!   first fuzz run found exactly that). A forged, well-formed command is an attack the network
//!   must keep out, not malformed input, so every payload the server would decode is replaced
//!   by one that cannot decode: eleven or more continuation bytes, an overlong varint, which
//!   every openraft message and command refuses on its first field.
//! - Topics of many partitions. A topic within the limit (10,000 partitions) is legal; one of
//!   a few thousand partitions is a capacity test (DESIGN.md §6), and on 2 cores its replicas
//!   take minutes to create and delete, which would turn this test into a load test. Valid
//!   creations keep at most [`TOPIC_PARTITIONS_MAX`] partitions; counts over the limit stay.

use bytes::Bytes;
use flotilla_proto::raft::v1::{BatchRequest, ProposeRequest, SnapshotChunkRequest};
use flotilla_proto::v1::CreateTopicRequest;
use flotilla_types::Limits;
use prost::Message;

/// Most partitions of a topic the fuzzer creates.
pub const TOPIC_PARTITIONS_MAX: u32 = 8;

/// Bytes no Raft message or command decodes from.
const UNDECODABLE: [u8; 16] = [0x80; 16];

/// `request` for method `path`, with what must not be sent replaced (see the module doc).
pub fn tame(path: &str, request: Vec<u8>) -> Vec<u8> {
    match path {
        "/flotilla.v1.AdminService/CreateTopic" => rewrite::<CreateTopicRequest>(request, |create| {
            let legal = 1..=Limits::default().partitions_max;
            if create.partitions > TOPIC_PARTITIONS_MAX && legal.contains(&create.partitions) {
                create.partitions = 1 + create.partitions % TOPIC_PARTITIONS_MAX;
                return true;
            }
            false
        }),
        "/raft.v1.RaftTransport/Batch" => rewrite::<BatchRequest>(request, |batch| {
            let mut changed = false;
            for message in &mut batch.messages {
                changed |= defuse(&mut message.payload);
            }
            changed
        }),
        "/raft.v1.RaftTransport/SnapshotChunk" => {
            // Without a decodable header no transfer starts, so the frames of `data` are never
            // installed (and a chunk naming another transfer is refused).
            rewrite::<SnapshotChunkRequest>(request, |chunk| defuse(&mut chunk.header))
        }
        "/raft.v1.RaftTransport/Propose" => rewrite::<ProposeRequest>(request, |propose| defuse(&mut propose.command)),
        _ => request,
    }
}

/// Decodes `request` as `M`; if that works and `change` changed it, re-encodes it. Requests
/// that do not decode go out as they are: the server refuses them before looking inside.
fn rewrite<M: Message + Default>(request: Vec<u8>, change: impl FnOnce(&mut M) -> bool) -> Vec<u8> {
    let Ok(mut message) = M::decode(request.as_slice()) else { return request };
    if change(&mut message) { message.encode_to_vec() } else { request }
}

/// Makes `payload` undecodable unless it already is; returns whether it changed.
fn defuse(payload: &mut Bytes) -> bool {
    let undecodable = payload.len() >= 11 && payload[..11].iter().all(|&byte| byte >= 0x80);
    if !undecodable {
        *payload = Bytes::from_static(&UNDECODABLE);
    }
    !undecodable
}

#[cfg(test)]
mod tests {
    use flotilla_proto::raft::v1::GroupMessage;

    use super::*;

    #[test]
    fn decodable_payloads_and_big_topics_are_replaced() {
        let batch = BatchRequest {
            from_node: 1,
            to_node: 2,
            messages: vec![GroupMessage { group_id: 0, kind: 1, payload: Bytes::from_static(&[0, 0, 0, 0]) }],
        };
        let tamed = BatchRequest::decode(tame("/raft.v1.RaftTransport/Batch", batch.encode_to_vec()).as_slice())
            .expect("still a batch");
        assert_eq!(tamed.messages[0].payload, Bytes::from_static(&UNDECODABLE));
        let create = CreateTopicRequest { name: "t".into(), partitions: 5000, ..Default::default() };
        let tamed = CreateTopicRequest::decode(
            tame("/flotilla.v1.AdminService/CreateTopic", create.encode_to_vec()).as_slice(),
        )
        .expect("still a creation");
        assert!(tamed.partitions <= TOPIC_PARTITIONS_MAX, "{}", tamed.partitions);
        let over = CreateTopicRequest { name: "t".into(), partitions: 10_001, ..Default::default() };
        let bytes = over.encode_to_vec();
        assert_eq!(tame("/flotilla.v1.AdminService/CreateTopic", bytes.clone()), bytes, "over the limit stays");
        let garbage = vec![0xff, 0x01];
        assert_eq!(tame("/raft.v1.RaftTransport/Propose", garbage.clone()), garbage);
    }
}
