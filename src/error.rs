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
    Gguf(#[from] GgufError),
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

/// Dimensions a GGUF tensor may have (ggml's GGML_MAX_DIMS; `formats::gguf::MAX_DIMS`).
pub const GGUF_MAX_DIMS: usize = 4;

// The GGUF reader's error lives here, with the crate-wide error that wraps it, so this
// module depends on nothing else in the crate (`formats::gguf` re-exports it).
/// A malformed or unsupported GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("truncated file: {what} at offset {offset} needs {needed} bytes, file is {file_len}")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("not a GGUF file: magic {found:02x?} (expected \"GGUF\")")]
    BadMagic { found: Vec<u8> },
    #[error("big-endian GGUF (version {version} byte-swapped) is not supported")]
    BigEndian { version: u32 },
    #[error("unsupported GGUF version {version} (only 2 and 3 are read)")]
    UnsupportedVersion { version: u32 },
    #[error("{what} at offset {offset}: string length {len} exceeds the {remaining} bytes left")]
    StringTooLong {
        what: String,
        offset: u64,
        len: u64,
        remaining: u64,
    },
    #[error("{what} at offset {offset}: invalid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata {key:?} at offset {offset}: unknown value type {type_id}")]
    UnknownValueType {
        key: String,
        offset: u64,
        type_id: u32,
    },
    #[error("metadata {key:?} at offset {offset}: bool byte {value} is neither 0 nor 1")]
    InvalidBool { key: String, offset: u64, value: u8 },
    #[error("metadata {key:?} at offset {offset}: arrays nested deeper than {max}")]
    ArrayTooDeep {
        key: String,
        offset: u64,
        max: usize,
    },
    #[error("metadata {key:?} at offset {offset}: array of {len} elements cannot fit in the {remaining} bytes left")]
    ArrayTooLong {
        key: String,
        offset: u64,
        len: u64,
        remaining: u64,
    },
    #[error("{count} metadata entries cannot fit in the {remaining} bytes left")]
    TooManyMetadata { count: u64, remaining: u64 },
    #[error("{count} tensor infos cannot fit in the {remaining} bytes left")]
    TooManyTensors { count: u64, remaining: u64 },
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("general.alignment {value} is not a non-zero power of two")]
    BadAlignment { value: u64 },
    #[error("metadata {key:?} is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("tensor {tensor:?}: {n_dims} dimensions (must be 1..={max})", max = GGUF_MAX_DIMS)]
    BadDimCount { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?}: a zero dimension in {dims:?}")]
    ZeroDim { tensor: String, dims: Vec<u64> },
    #[error("tensor {tensor:?}: dimensions {dims:?} overflow")]
    DimOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor {tensor:?}: unknown ggml type id {type_id} (size unknown)")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?}: row of {ne0} elements is not a whole number of {ggml_type} blocks of {block}")]
    PartialBlock {
        tensor: String,
        ggml_type: String,
        ne0: u64,
        block: u64,
    },
    #[error("tensor {tensor:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor {tensor:?}: {size} bytes at data offset {offset} exceed the {data_len}-byte data section")]
    TensorOutOfRange {
        tensor: String,
        offset: u64,
        size: u64,
        data_len: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap at data offset {offset}")]
    OverlappingTensors {
        first: String,
        second: String,
        offset: u64,
    },
    #[error("duplicate tensor name {tensor:?}")]
    DuplicateTensor { tensor: String },
}
