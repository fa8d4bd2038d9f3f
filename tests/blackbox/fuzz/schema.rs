//! What there is to fuzz, read from the descriptor set the server itself serves for reflection
//! (`flotilla_proto::FILE_DESCRIPTOR_SET`): every method of every service, and a generator of
//! request messages that follows each method's input type field by field. A service or method
//! added to the protos is fuzzed without anyone touching this test.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use super::wire::{self, put_len, put_tag, put_varint};

/// Which port serves a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    /// The client gRPC port (`--listen`).
    Client,
    /// The Raft peer port (`--peer-listen`).
    Peer,
}

/// One RPC.
#[derive(Debug, Clone)]
pub struct Method {
    /// `/package.Service/Method`.
    pub path: String,
    /// Fully qualified input type, e.g. `.flotilla.v1.ProduceRequest`.
    pub input: String,
    /// Where it is served.
    pub port: Port,
}

/// Values the generator prefers for fields with a given meaning, so that a good share of the
/// requests get past validation and reach the code behind it.
#[derive(Debug, Clone, Default)]
pub struct Dictionary {
    /// Topic names (existing ones and a few that may be created).
    pub topics: Vec<String>,
    /// Consumer group names.
    pub groups: Vec<String>,
    /// Node ids.
    pub nodes: Vec<u64>,
    /// Raft group ids of the metadata group and of partitions.
    pub raft_groups: Vec<u64>,
    /// Offsets near the real ones.
    pub offsets: Vec<u64>,
    /// Member ids and epochs of live group members.
    pub members: Vec<u64>,
}

/// The services and message types of the API.
#[derive(Debug)]
pub struct Schema {
    messages: BTreeMap<String, DescriptorProto>,
    methods: Vec<Method>,
}

/// Nesting depth of generated messages; the protos have no recursive types, so this only
/// guards against one being added.
const DEPTH_MAX: usize = 6;
/// A repeated field stops growing past this many bytes: large enough to pass the 4 MiB
/// default decode limit, small enough to generate quickly.
const MESSAGE_BYTES_BUDGET: usize = 6 * 1024 * 1024;

impl Schema {
    /// Reads `flotilla_proto::FILE_DESCRIPTOR_SET`: the `flotilla.v1` services are client
    /// RPCs, the `raft.v1` ones peer RPCs.
    pub fn load() -> anyhow::Result<Schema> {
        let set =
            FileDescriptorSet::decode(flotilla_proto::FILE_DESCRIPTOR_SET).context("decoding the descriptor set")?;
        let mut messages = BTreeMap::new();
        let mut methods = Vec::new();
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                collect_messages(&format!(".{package}"), message, &mut messages);
            }
            let port = match package {
                "flotilla.v1" => Port::Client,
                "raft.v1" => Port::Peer,
                other => bail!("the descriptor set has package {other:?}: which port serves it?"),
            };
            for service in &file.service {
                for method in &service.method {
                    methods.push(Method {
                        path: format!("/{package}.{}/{}", service.name(), method.name()),
                        input: method.input_type().to_string(),
                        port,
                    });
                }
            }
        }
        for method in &methods {
            if !messages.contains_key(&method.input) {
                bail!("{} takes {}, which the descriptor set does not define", method.path, method.input);
            }
        }
        Ok(Schema { messages, methods })
    }

    /// Every RPC, client and peer.
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// A random instance of message type `name`, encoded: each field present or not, values
    /// from the dictionary or from the edges of their type (u64::MAX, empty and huge
    /// strings, invalid UTF-8, unknown enum values), repeated fields 0 to a few times, and
    /// sometimes encodings a plain encoder would not choose (unpacked repeated scalars,
    /// fields out of order or twice, unknown fields).
    pub fn generate(&self, name: &str, dictionary: &Dictionary, rng: &mut StdRng) -> Vec<u8> {
        self.message(name, dictionary, rng, 0)
    }

    fn message(&self, name: &str, dictionary: &Dictionary, rng: &mut StdRng, depth: usize) -> Vec<u8> {
        let Some(descriptor) = self.messages.get(name) else { return Vec::new() };
        let mut out = Vec::new();
        // One member of each real oneof (proto3 `optional` is a synthetic oneof of one field).
        let mut oneof_pick: BTreeMap<i32, i32> = BTreeMap::new();
        for field in &descriptor.field {
            if let Some(index) = field.oneof_index
                && !field.proto3_optional()
            {
                let members: Vec<i32> = descriptor
                    .field
                    .iter()
                    .filter(|f| f.oneof_index == Some(index) && !f.proto3_optional())
                    .map(|f| f.number())
                    .collect();
                oneof_pick.entry(index).or_insert_with(|| *members.choose(rng).expect("a oneof has members"));
            }
        }
        let mut fields: Vec<&FieldDescriptorProto> = descriptor.field.iter().collect();
        if rng.random_bool(0.1) {
            fields.reverse();
        }
        for field in fields {
            let in_oneof = field.oneof_index.is_some() && !field.proto3_optional();
            if in_oneof && oneof_pick.get(&field.oneof_index()) != Some(&field.number()) {
                continue;
            }
            let present = in_oneof || rng.random_bool(0.8);
            if !present {
                continue;
            }
            let count = if field.label() == Label::Repeated { repeat_count(rng, depth) } else { 1 };
            if field.label() == Label::Repeated && is_packable(field.r#type()) && rng.random_bool(0.7) {
                let mut packed = Vec::new();
                for _ in 0..count {
                    self.scalar(field, dictionary, rng, &mut packed);
                    if packed.len() > MESSAGE_BYTES_BUDGET {
                        break;
                    }
                }
                put_len(&mut out, u64::from(field.number().unsigned_abs()), &packed);
            } else {
                for _ in 0..count {
                    self.field(field, dictionary, rng, depth, &mut out);
                    if out.len() > MESSAGE_BYTES_BUDGET {
                        break;
                    }
                }
            }
            if rng.random_bool(0.03) {
                // A non-repeated field sent twice: the last one wins, or for messages they merge.
                self.field(field, dictionary, rng, depth, &mut out);
            }
        }
        if rng.random_bool(0.1) {
            // An unknown field, which a decoder must skip.
            let number = rng.random_range(100..20_000);
            match rng.random_range(0..3) {
                0 => {
                    put_tag(&mut out, number, wire::VARINT);
                    put_varint(&mut out, rng.random());
                }
                1 => put_len(&mut out, number, &random_bytes(rng, 32)),
                _ => {
                    put_tag(&mut out, number, wire::FIXED64);
                    out.extend_from_slice(&rng.random::<u64>().to_le_bytes());
                }
            }
        }
        out
    }

    fn field(
        &self,
        field: &FieldDescriptorProto,
        dictionary: &Dictionary,
        rng: &mut StdRng,
        depth: usize,
        out: &mut Vec<u8>,
    ) {
        let number = u64::from(field.number().unsigned_abs());
        match field.r#type() {
            Type::Message | Type::Group => {
                let nested = if depth < DEPTH_MAX {
                    self.message(field.type_name(), dictionary, rng, depth + 1)
                } else {
                    Vec::new()
                };
                put_len(out, number, &nested);
            }
            Type::String => put_len(out, number, &string_value(field.name(), dictionary, rng)),
            Type::Bytes => put_len(out, number, &bytes_value(rng)),
            Type::Double | Type::Fixed64 | Type::Sfixed64 => put_tag(out, number, wire::FIXED64),
            Type::Float | Type::Fixed32 | Type::Sfixed32 => put_tag(out, number, wire::FIXED32),
            _ => put_tag(out, number, wire::VARINT),
        }
        if !matches!(field.r#type(), Type::Message | Type::Group | Type::String | Type::Bytes) {
            self.scalar(field, dictionary, rng, out);
        }
    }

    /// The value of a scalar field, without its tag.
    fn scalar(&self, field: &FieldDescriptorProto, dictionary: &Dictionary, rng: &mut StdRng, out: &mut Vec<u8>) {
        match field.r#type() {
            Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                out.extend_from_slice(&integer_value(field.name(), dictionary, rng).to_le_bytes());
            }
            Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                out.extend_from_slice(&(integer_value(field.name(), dictionary, rng) as u32).to_le_bytes());
            }
            Type::Bool => put_varint(out, *[0, 1, 1, 2, u64::MAX].choose(rng).expect("not empty")),
            Type::Enum => put_varint(out, *[0, 1, 2, 3, 4, 5, 99, u64::MAX].choose(rng).expect("not empty")),
            Type::Sint32 | Type::Sint64 => {
                let value = integer_value(field.name(), dictionary, rng) as i64;
                put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
            }
            Type::Int32 | Type::Uint32 if rng.random_bool(0.9) => {
                // Mostly 32-bit values; sometimes a 64-bit one, which decoders truncate.
                put_varint(out, u64::from(integer_value(field.name(), dictionary, rng) as u32));
            }
            _ => put_varint(out, integer_value(field.name(), dictionary, rng)),
        }
    }
}

fn collect_messages(scope: &str, message: &DescriptorProto, into: &mut BTreeMap<String, DescriptorProto>) {
    let name = format!("{scope}.{}", message.name());
    for nested in &message.nested_type {
        collect_messages(&name, nested, into);
    }
    into.insert(name, message.clone());
}

fn is_packable(kind: Type) -> bool {
    !matches!(kind, Type::String | Type::Bytes | Type::Message | Type::Group)
}

/// Mostly a few; now and then, at the top level, many (a huge repeated count, within
/// reason for the run time).
fn repeat_count(rng: &mut StdRng, depth: usize) -> usize {
    if depth > 0 {
        return rng.random_range(0..4);
    }
    match rng.random_range(0..100) {
        0..60 => rng.random_range(0..3),
        60..95 => rng.random_range(3..20),
        95..99 => rng.random_range(20..2_000),
        _ => rng.random_range(2_000..120_000),
    }
}

fn integer_value(name: &str, dictionary: &Dictionary, rng: &mut StdRng) -> u64 {
    let hinted: &[u64] = if name.contains("node") || name == "responder_id" {
        &dictionary.nodes
    } else if name == "group_id" || name == "group_ids" {
        &dictionary.raft_groups
    } else if name.contains("offset") || name == "seq" || name == "base_sequence" {
        &dictionary.offsets
    } else if name.starts_with("member") {
        &dictionary.members
    } else {
        &[]
    };
    if !hinted.is_empty() && rng.random_bool(0.6) {
        return *hinted.choose(rng).expect("not empty");
    }
    match rng.random_range(0..10) {
        0..4 => rng.random_range(0..4),
        4 => rng.random_range(4..20_000),
        5 => *[u64::from(u32::MAX), u64::from(u32::MAX) + 1, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 31) - 1]
            .choose(rng)
            .expect("not empty"),
        // A negative int32/int64 (ten bytes on the wire).
        6 => (-(rng.random_range(1..1_000_000i64))) as u64,
        _ => rng.random(),
    }
}

/// Strings: dictionary names, the edges of the naming rules, control characters, invalid
/// UTF-8 (which a protobuf decoder must refuse for a `string` field) and, rarely, a megabyte.
fn string_value(name: &str, dictionary: &Dictionary, rng: &mut StdRng) -> Vec<u8> {
    let hinted: &[String] = if name.contains("topic") || name == "name" {
        &dictionary.topics
    } else if name == "group" {
        &dictionary.groups
    } else {
        &[]
    };
    if !hinted.is_empty() && rng.random_bool(0.6) {
        return hinted.choose(rng).expect("not empty").clone().into_bytes();
    }
    let config =
        ["retention.ms", "retention.bytes", "max.message.bytes", "cleanup.policy", "1000", "-1", "1e9", "0x10"];
    match rng.random_range(0..12) {
        0 => Vec::new(),
        1 => config.choose(rng).expect("not empty").as_bytes().to_vec(),
        2 => b".".to_vec(),
        3 => vec![b'a'; rng.random_range(240..260)],
        4 => vec![0xff, 0xfe, b'x'],
        // A UTF-16 surrogate encoded as if it were UTF-8: not valid UTF-8.
        5 => vec![b'a', 0xed, 0xa0, 0x80],
        6 => b"nul\0inside".to_vec(),
        7 => "топик-😀".as_bytes().to_vec(),
        8 if rng.random_bool(0.05) => vec![b'z'; 1024 * 1024],
        9 => format!("fz-{}", rng.random_range(0..8)).into_bytes(),
        _ => (0..rng.random_range(1..40)).map(|_| rng.random_range(b' '..=b'~')).collect(),
    }
}

fn bytes_value(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..10) {
        0 => Vec::new(),
        1 if rng.random_bool(0.1) => vec![0; 512 * 1024],
        2 => vec![0; rng.random_range(1..64)],
        _ => random_bytes(rng, 64),
    }
}

/// Up to `max` random bytes.
pub fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    (0..len).map(|_| rng.random()).collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn the_schema_lists_every_service_and_generates_decodable_requests() {
        let schema = Schema::load().expect("descriptor set");
        let paths: Vec<&str> = schema.methods().iter().map(|method| method.path.as_str()).collect();
        for expected in ["/flotilla.v1.ProduceService/Produce", "/raft.v1.RaftTransport/Batch"] {
            assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
        }
        // Generated requests are protobuf at the top level, whatever they say.
        let mut rng = StdRng::seed_from_u64(7);
        let dictionary = Dictionary { topics: vec!["t".into()], ..Dictionary::default() };
        for method in schema.methods() {
            for _ in 0..20 {
                let bytes = schema.generate(&method.input, &dictionary, &mut rng);
                assert!(wire::fields(&bytes).is_some(), "{}: {bytes:?}", method.path);
            }
        }
    }
}
