//! Golden files of stored formats: a test helper, used by every crate that stores something.
//!
//! Each golden file holds the bytes a known value was stored as when its format version was
//! current. A test decodes the file and compares it with the value (so a change that makes old
//! data unreadable fails), and encodes the value and compares it with the file (so a change of
//! encoding that still happens to decode, such as two fields of one type swapped, fails too).
//! A deliberate new version adds a new golden file and keeps the old one decoding.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};

use crate::{Versioned, decode_versioned, encode_versioned};

/// Environment variable that makes [`check`] (re)write missing or differing golden files
/// instead of failing: `FLOTILLA_BLESS_GOLDEN=1 cargo test`. Only for a new format version.
pub const BLESS_ENV: &str = "FLOTILLA_BLESS_GOLDEN";

/// Checks that `value` is stored as the bytes in `dir/name.bin` and that those bytes decode to
/// `value`, with [`encode_versioned`] and [`decode_versioned`].
pub fn check<T: Versioned + PartialEq + Debug>(dir: &Path, name: &str, value: &T) {
    check_with(dir, name, value, encode_versioned, decode_versioned);
}

/// Checks that `dir/name.bin`, written under an older version of `T`'s format, still decodes
/// to `value` (only decodes: this build writes the newer version, checked by [`check`]).
pub fn check_older<T: Versioned + PartialEq + Debug>(dir: &Path, name: &str, value: &T) {
    let path: PathBuf = dir.join(format!("{name}.bin"));
    let golden =
        std::fs::read(&path).unwrap_or_else(|err| panic!("golden file {} cannot be read: {err}", path.display()));
    let decoded = decode_versioned::<T>(&golden).unwrap_or_else(|err| {
        panic!(
            "golden file {} of an older {} version no longer decodes: {err}. Data stored by earlier builds would be \
             unreadable (ARCHITECTURE.md, \"Stored formats\")",
            path.display(),
            T::FORMAT
        )
    });
    assert_eq!(&decoded, value, "golden file {} decodes to a different value", path.display());
}

/// [`check`] for formats with an encoding of their own (such as Raft log entries).
pub fn check_with<T: PartialEq + Debug>(
    dir: &Path,
    name: &str,
    value: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, io::Error>,
) {
    let path: PathBuf = dir.join(format!("{name}.bin"));
    let encoded = encode(value);
    let bless = std::env::var_os(BLESS_ENV).is_some();
    let golden = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if bless && err.kind() == io::ErrorKind::NotFound => {
            write(&path, &encoded);
            return;
        }
        Err(err) => panic!(
            "golden file {} cannot be read ({err}); a new format gets its file with {BLESS_ENV}=1",
            path.display()
        ),
    };
    let decoded = decode(&golden).unwrap_or_else(|err| {
        panic!(
            "golden file {} no longer decodes: {err}. Data stored by earlier builds would be unreadable; bump the \
             format version and keep reading the old one (ARCHITECTURE.md, \"Stored formats\")",
            path.display()
        )
    });
    assert_eq!(
        &decoded,
        value,
        "golden file {} decodes to a different value: the format changed meaning without a new version",
        path.display()
    );
    if encoded != golden {
        if bless {
            write(&path, &encoded);
            return;
        }
        panic!(
            "{} is now encoded differently from golden file {} ({} bytes, was {}): a format change needs a new \
             version and a new golden file",
            std::any::type_name::<T>(),
            path.display(),
            encoded.len(),
            golden.len()
        );
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|err| panic!("creating {}: {err}", parent.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|err| panic!("writing golden file {}: {err}", path.display()));
}
