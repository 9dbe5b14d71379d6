//! Model file formats: GGUF (read and write), Hugging Face checkpoints, tokenizers and chat
//! templates, and the tensor-store interface loaders read through.

pub mod chat_template;
pub mod gguf;
pub mod gguf_writer;
pub mod hf;
pub mod store;
pub mod tokenizer;

pub use store::{TensorRef, TensorStore};

/// Largest width, head count, FFN size or vocabulary wick accepts: products of any two stay
/// far from overflowing, and real models are orders of magnitude below.
pub const MAX_DIM: usize = 1 << 24;
