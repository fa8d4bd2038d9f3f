//! Errors of the storage layer.

/// A storage operation failed. Callers treat any of these as fatal for the Raft group that
/// hit it: openraft stops the group rather than continue on a disk it cannot trust.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The underlying engine reported an I/O or database error.
    #[error("storage engine error during {operation}: {message}")]
    Engine { operation: &'static str, message: String },
    /// An injected fault (simulation only).
    #[error("injected storage fault during {operation}")]
    Injected { operation: &'static str },
}

impl From<StorageError> for std::io::Error {
    fn from(err: StorageError) -> Self {
        std::io::Error::other(err)
    }
}
