//! The builder's error type.

/// Why a build or import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The Dockerfile (or a `--change` line) did not parse; `file` names it.
    #[error("{file}:{error}")]
    Parse {
        /// File name shown in front of `line:col`.
        file: String,
        /// The parser's error, with position.
        error: parser::ParseError,
    },
    /// An instruction is valid but wrong here; `at` is `file:line:col`.
    #[error("{at}: {message}")]
    Instruction {
        /// `file:line:col`.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] snapshotter::StoreError),
    /// Anything else, with its message.
    #[error("{0}")]
    Other(String),
}

/// The crate's result type.
pub type Result<T, E = BuildError> = std::result::Result<T, E>;
