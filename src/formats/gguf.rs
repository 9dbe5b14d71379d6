//! GGUF reader (placeholder until the reader lands).

/// A malformed or unsupported GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{0}")]
    Other(String),
}
