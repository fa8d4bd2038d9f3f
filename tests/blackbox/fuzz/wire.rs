//! The protobuf wire format at the level a fuzzer needs: writing tags, varints and
//! length-delimited fields by hand (so a message can say things no encoder would), and
//! splitting an encoded message into its top-level fields (so a mutation can pick one).

/// Wire type of a varint field.
pub const VARINT: u8 = 0;
/// Wire type of an 8-byte field.
pub const FIXED64: u8 = 1;
/// Wire type of a length-delimited field.
pub const LEN: u8 = 2;
/// Wire type of a group start (deprecated, still parsed by decoders).
pub const START_GROUP: u8 = 3;
/// Wire type of a group end.
pub const END_GROUP: u8 = 4;
/// Wire type of a 4-byte field.
pub const FIXED32: u8 = 5;

/// Appends `value` as a base-128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends the tag of field `number` with `wire_type`.
pub fn put_tag(out: &mut Vec<u8>, number: u64, wire_type: u8) {
    put_varint(out, (number << 3) | u64::from(wire_type));
}

/// Appends a length-delimited field.
pub fn put_len(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_tag(out, number, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One top-level field of an encoded message: where it starts and ends, and where its
/// length varint is (length-delimited fields only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field number.
    pub number: u64,
    /// The wire type.
    pub wire_type: u8,
    /// Offset of the tag.
    pub start: usize,
    /// One past the last byte of the field.
    pub end: usize,
    /// For length-delimited fields: the range of the length varint.
    pub length_at: Option<(usize, usize)>,
}

/// Splits `bytes` into its top-level fields; `None` if it is not a well-formed message at the
/// top level (nested messages are not looked into).
pub fn fields(bytes: &[u8]) -> Option<Vec<Field>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let (tag, after) = varint(bytes, at)?;
        at = after;
        let number = tag >> 3;
        let wire_type = (tag & 7) as u8;
        let mut length_at = None;
        match wire_type {
            VARINT => at = varint(bytes, at)?.1,
            FIXED64 => at = at.checked_add(8)?,
            FIXED32 => at = at.checked_add(4)?,
            LEN => {
                let (len, after) = varint(bytes, at)?;
                length_at = Some((at, after));
                at = after.checked_add(usize::try_from(len).ok()?)?;
            }
            _ => return None,
        }
        if at > bytes.len() || number == 0 {
            return None;
        }
        out.push(Field { number, wire_type, start, end: at, length_at });
    }
    Some(out)
}

/// Reads a varint at `at`: its value and the offset after it.
pub fn varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some((value, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_what_we_write() {
        let mut message = Vec::new();
        put_tag(&mut message, 1, VARINT);
        put_varint(&mut message, u64::MAX);
        put_len(&mut message, 3, b"hello");
        put_tag(&mut message, 4, FIXED32);
        message.extend_from_slice(&[1, 2, 3, 4]);
        let found = fields(&message).expect("well formed");
        let numbers: Vec<(u64, u8)> = found.iter().map(|field| (field.number, field.wire_type)).collect();
        assert_eq!(numbers, vec![(1, VARINT), (3, LEN), (4, FIXED32)]);
        assert_eq!(found[1].length_at, Some((12, 13)));
        assert_eq!(found[2].end, message.len());
        assert_eq!(fields(&message[..message.len() - 1]), None, "a torn fixed32");
    }
}
