//! The crate-wide error type. Every fallible public call returns [`Result`]; nothing in the
//! engine panics on bad input or on a GPU fault.

use std::path::PathBuf;

/// Everything that can go wrong in wick, named so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter matched (or none exists at all).
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The device refused to open with the requested features/limits.
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),
    /// A validation, out-of-memory or internal error reported by wgpu.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// Not enough GPU memory: a model or session that does not fit in what is left of the
    /// device's memory (checked before anything is allocated), or an allocation the driver
    /// refused.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
    /// The device was lost (driver reset, destroyed, out of memory on some backends).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// The adapter lacks something a kernel needs.
    #[error("unsupported on this adapter: {0}")]
    Unsupported(String),
    /// A shape or size that does not fit the operation.
    #[error("shape error: {0}")]
    Shape(String),
    /// A kernel's shader failed to build (preprocessing, parsing, validation).
    #[error("shader error in {family}: {message}")]
    Shader { family: String, message: String },
    /// A malformed or unsupported GGUF file.
    #[error("GGUF: {0}")]
    Gguf(#[from] crate::formats::gguf::GgufError),
    /// A problem with a model's configuration or tensors.
    #[error("model: {0}")]
    Model(String),
    /// Fetching a model failed: the network, the server's certificate, a checksum, or a
    /// build without the `download` feature.
    #[error("download: {0}")]
    Download(String),
    /// Tokenizer construction or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An invalid argument passed to the API or CLI.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An I/O error with the path that caused it.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
