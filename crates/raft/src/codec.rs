//! The binary encoding of everything the Raft layer stores or sends: postcard over serde.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes `value`. Infallible for the types we encode (no maps with non-string keys issues,
/// no unsized streams); a failure is a bug and says which type.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_allocvec(value) {
        Ok(bytes) => bytes,
        Err(err) => panic!("encoding {} must not fail: {err}", std::any::type_name::<T>()),
    }
}

/// Decodes bytes made by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    postcard::from_bytes(bytes).map_err(|err| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("decoding {} from {} bytes: {err}", std::any::type_name::<T>(), bytes.len()),
        )
    })
}
