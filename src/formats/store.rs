//! Where a loader reads model tensors from: GGUF files directly, Hugging Face checkpoints
//! through a name map ([`super::hf`]), synthetic models in memory; all under GGUF names.

use super::gguf::GgufFile;
use crate::quant::GgmlType;

/// One tensor as a loader sees it, named and shaped the GGUF way (dims fastest first).
#[derive(Debug, Clone)]
pub struct TensorRef<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: &'a [u8],
}

impl TensorRef<'_> {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A source of model tensors under GGUF names (GGUF files directly, Hugging Face
/// checkpoints through a name map).
pub trait TensorStore {
    fn tensor(&self, name: &str) -> Option<TensorRef<'_>>;
    /// Tokenizer vocabulary size, when the store knows it (checked against the embedding).
    fn tokenizer_vocab(&self) -> Option<usize>;
}

impl TensorStore for GgufFile {
    fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let t = GgufFile::tensor(self, name)?;
        Some(TensorRef {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
            data: self.tensor_data(t),
        })
    }

    fn tokenizer_vocab(&self) -> Option<usize> {
        self.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
    }
}
