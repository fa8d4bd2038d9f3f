//! The binary encodings of everything the Raft layer stores or sends: postcard over serde, and
//! for anything that reaches a disk, postcard behind a format version ([`Versioned`]).
//!
//! Postcard is not self-describing: a struct that gains a field, or fields that change type,
//! decode old bytes as garbage or not at all. So every stored value starts with one byte, the
//! version of its format, and a reader refuses a version it does not know with an error that
//! names the format and both versions, instead of misreading it. The upgrade rule (what a
//! format change must do) is in ARCHITECTURE.md under "Stored formats".

use std::io;

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
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    postcard::from_bytes(bytes).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decoding {} from {} bytes: {err}", std::any::type_name::<T>(), bytes.len()),
        )
    })
}

/// A value stored on disk (or in a snapshot section), with the version of its format.
///
/// Bump [`Versioned::VERSION`] whenever the encoding of the type changes in any way (a field
/// added, removed, reordered or retyped; an enum variant inserted anywhere but at the end),
/// and keep reading the old version in [`Versioned::decode_older`] or write down that old
/// data becomes unreadable. The golden files (`tests/golden/` of each crate, checked by
/// [`crate::golden`]) fail when an encoding changes without that.
pub trait Versioned: Serialize + DeserializeOwned {
    /// The format's name in error messages, e.g. "partition index entry".
    const FORMAT: &'static str;
    /// The version this build writes. Versions start at 1; 0 is never written.
    const VERSION: u8;

    /// Decodes `bytes` written under an older `version` (between 1 and `VERSION - 1`). The
    /// default knows no older version.
    fn decode_older(version: u8, bytes: &[u8]) -> Result<Self, io::Error> {
        let _ = bytes;
        Err(unreadable_version(Self::FORMAT, version, Self::VERSION))
    }
}

/// The error for a format version this build cannot read.
pub fn unreadable_version(format: &str, found: u8, current: u8) -> io::Error {
    let why = if found > current {
        "it was written by a newer build of Flotilla; run that build (or newer) on this data"
    } else {
        "this build no longer reads that version"
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("stored {format} has format version {found}; this build reads up to version {current}: {why}"),
    )
}

/// Encodes `value` as its format version followed by its postcard bytes.
pub fn encode_versioned<T: Versioned>(value: &T) -> Vec<u8> {
    encode_with_version(T::VERSION, value)
}

/// Decodes bytes made by [`encode_versioned`] by this build or an older one.
pub fn decode_versioned<T: Versioned>(bytes: &[u8]) -> Result<T, io::Error> {
    let (version, body) = split_version(T::FORMAT, bytes)?;
    if version == T::VERSION {
        decode_body(T::FORMAT, version, body)
    } else if version == 0 || version > T::VERSION {
        Err(unreadable_version(T::FORMAT, version, T::VERSION))
    } else {
        T::decode_older(version, body)
    }
}

/// [`encode_versioned`] for a type this crate cannot implement [`Versioned`] for (openraft's
/// votes and log ids): `version`, then the postcard bytes.
pub fn encode_with_version<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(version);
    match postcard::to_io(value, &mut out) {
        Ok(_) => out,
        Err(err) => panic!("encoding {} must not fail: {err}", std::any::type_name::<T>()),
    }
}

/// Decodes bytes made by [`encode_with_version`] with exactly version `current`.
pub fn decode_with_version<T: DeserializeOwned>(format: &str, current: u8, bytes: &[u8]) -> Result<T, io::Error> {
    let (version, body) = split_version(format, bytes)?;
    if version != current {
        return Err(unreadable_version(format, version, current));
    }
    decode_body(format, version, body)
}

fn split_version<'a>(format: &str, bytes: &'a [u8]) -> Result<(u8, &'a [u8]), io::Error> {
    match bytes.split_first() {
        Some((&version, body)) => Ok((version, body)),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, format!("stored {format} is empty"))),
    }
}

fn decode_body<T: DeserializeOwned>(format: &str, version: u8, body: &[u8]) -> Result<T, io::Error> {
    postcard::from_bytes(body).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decoding stored {format} (format version {version}, {} bytes): {err}", body.len() + 1),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        a: u32,
        b: String,
    }

    impl Versioned for Thing {
        const FORMAT: &'static str = "test thing";
        const VERSION: u8 = 2;

        fn decode_older(version: u8, bytes: &[u8]) -> Result<Self, io::Error> {
            match version {
                // Version 1 had only `a`.
                1 => Ok(Thing { a: decode(bytes)?, b: "upgraded".into() }),
                _ => Err(unreadable_version(Self::FORMAT, version, Self::VERSION)),
            }
        }
    }

    #[test]
    fn round_trips_and_reads_older_versions_through_the_upgrade() {
        let thing = Thing { a: 7, b: "x".into() };
        let bytes = encode_versioned(&thing);
        assert_eq!(bytes[0], 2);
        assert_eq!(decode_versioned::<Thing>(&bytes).expect("decodes"), thing);
        let mut old = vec![1];
        old.extend(encode(&9u32));
        assert_eq!(decode_versioned::<Thing>(&old).expect("upgrades"), Thing { a: 9, b: "upgraded".into() });
    }

    #[test]
    fn a_newer_or_unknown_version_is_a_clear_error_not_a_misread() {
        let mut newer = encode_versioned(&Thing { a: 1, b: "y".into() });
        newer[0] = 3;
        let err = decode_versioned::<Thing>(&newer).expect_err("newer");
        let message = err.to_string();
        assert!(message.contains("test thing") && message.contains("version 3") && message.contains("up to version 2"));
        assert!(message.contains("newer build"), "{message}");
        let err = decode_versioned::<Thing>(&[0, 1, 2]).expect_err("version 0 is never written");
        assert!(err.to_string().contains("format version 0"), "{err}");
        assert!(decode_versioned::<Thing>(&[]).is_err(), "empty");
    }
}
