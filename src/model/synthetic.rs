//! Synthetic models: the real shapes of common checkpoints with random weights, generated in
//! memory without any file, for `wick bench --synthetic` and `wick synth`.
//!
//! Speed depends on shapes and formats, not on values, so the layers of a synthetic model
//! share one set of random tensors per (role, shape, type): generating Llama-3-8B needs the
//! host memory of one layer (two for a mix such as Q4_K_M, whose types differ by layer), not
//! of the model. Values are scaled by 1/√k (norm weights 1) so
//! activations stay of order one through every layer.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::kernels::rope::RopeStyle;
use crate::model::config::{Arch, ModelConfig};
use crate::model::quant_mix::QuantTarget;
use crate::model::weights::{tensor_manifest, TensorRef, TensorStore};
use crate::quant::{self, GgmlType};

/// A named architecture shape.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub arch: Arch,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context_len: usize,
    pub rope_theta: f32,
    pub tied: bool,
}

/// The shapes `--synthetic` accepts (from the models' published configs).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m",
        arch: Arch::Llama,
        n_layers: 30,
        hidden: 576,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        ffn: 1536,
        vocab: 49152,
        context_len: 8192,
        rope_theta: 100000.0,
        tied: true,
    },
    Preset {
        name: "qwen2.5-0.5b",
        arch: Arch::Qwen2,
        n_layers: 24,
        hidden: 896,
        n_heads: 14,
        n_kv_heads: 2,
        head_dim: 64,
        ffn: 4864,
        vocab: 151936,
        context_len: 32768,
        rope_theta: 1000000.0,
        tied: true,
    },
    Preset {
        name: "qwen3-0.6b",
        arch: Arch::Qwen3,
        n_layers: 28,
        hidden: 1024,
        n_heads: 16,
        n_kv_heads: 8,
        head_dim: 128,
        ffn: 3072,
        vocab: 151936,
        context_len: 40960,
        rope_theta: 1000000.0,
        tied: true,
    },
    Preset {
        name: "llama3.2-1b",
        arch: Arch::Llama,
        n_layers: 16,
        hidden: 2048,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 64,
        ffn: 8192,
        vocab: 128256,
        context_len: 131072,
        rope_theta: 500000.0,
        tied: true,
    },
    Preset {
        name: "llama3-8b",
        arch: Arch::Llama,
        n_layers: 32,
        hidden: 4096,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
        ffn: 14336,
        vocab: 128256,
        context_len: 8192,
        rope_theta: 500000.0,
        tied: false,
    },
];

impl Preset {
    pub fn by_name(name: &str) -> Result<Preset> {
        PRESETS
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
                Error::InvalidArgument(format!(
                    "unknown preset {name:?} (one of {})",
                    names.join(", ")
                ))
            })
    }

    /// The configuration of this preset. GGUF conventions: llama-architecture presets rotate
    /// adjacent pairs, as a llama.cpp-converted file would.
    pub fn config(&self) -> Result<ModelConfig> {
        ModelConfig {
            arch: self.arch,
            n_layers: self.n_layers,
            hidden: self.hidden,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            ffn: self.ffn,
            vocab: self.vocab,
            context_len: self.context_len,
            rope_theta: self.rope_theta,
            rope_dim: self.head_dim,
            rope_style: match self.arch {
                Arch::Llama | Arch::Mistral => RopeStyle::Adjacent,
                Arch::Qwen2 | Arch::Qwen3 => RopeStyle::HalfSplit,
            },
            rope_inv_freq: Vec::new(),
            rms_eps: 1e-5,
            tied_output: self.tied,
            qkv_bias: self.arch == Arch::Qwen2,
            qk_norm: self.arch == Arch::Qwen3,
            sliding_window: None,
        }
        .validated()
    }
}

/// In-memory random tensors for a preset, served under GGUF names.
pub struct SyntheticStore {
    cfg: ModelConfig,
    /// GGUF name -> (dims, type, key into `data`).
    tensors: HashMap<String, (Vec<u64>, GgmlType, String)>,
    data: HashMap<String, Vec<u8>>,
}

/// The role of a tensor without its layer number (`blk.7.attn_q.weight` -> `attn_q.weight`).
fn role(name: &str) -> &str {
    name.strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .map_or(name, |(_, tail)| tail)
}

impl SyntheticStore {
    /// Random weights for `preset`, matrices in `quant`: one type (rows that do not fit its
    /// blocks fall back as in [`quant::storage_type_for_rows`]) or a mix, whose type is
    /// resolved per tensor as `wick quantize` would ([`QuantTarget::matrix_type`]); vectors
    /// in F32.
    pub fn new(
        preset: &Preset,
        quant: impl Into<QuantTarget>,
        seed: u64,
    ) -> Result<SyntheticStore> {
        let quant = quant.into();
        quant.check().map_err(|_| {
            Error::InvalidArgument(format!("synthetic weights cannot be {}", quant.name()))
        })?;
        let cfg = preset.config()?;
        let mut tensors = HashMap::new();
        let mut data: HashMap<String, Vec<u8>> = HashMap::new();
        for (name, dims, matrix) in tensor_manifest(&cfg) {
            let ty = if matrix {
                quant.matrix_type(&cfg, &name, dims[0])
            } else {
                GgmlType::F32
            };
            let key = format!("{}|{dims:?}|{}", role(&name), ty.name());
            if !data.contains_key(&key) {
                let elems: usize = dims.iter().product();
                let bytes = if matrix {
                    let seed = seed ^ (data.len() as u64).wrapping_mul(0x9E37_79B9);
                    quant::random_weights(ty, elems, seed, 1.0 / (dims[0] as f32).sqrt())?
                } else if name.ends_with(".bias") {
                    vec![0u8; elems * 4]
                } else {
                    (0..elems).flat_map(|_| 1.0f32.to_le_bytes()).collect()
                };
                data.insert(key.clone(), bytes);
            }
            tensors.insert(name, (dims.iter().map(|&d| d as u64).collect(), ty, key));
        }
        Ok(SyntheticStore { cfg, tensors, data })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}

impl TensorStore for SyntheticStore {
    fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let (dims, ty, key) = self.tensors.get(name)?;
        Some(TensorRef {
            name: name.to_string(),
            dims: dims.clone(),
            ggml_type: *ty,
            data: self.data.get(key)?,
        })
    }

    fn tokenizer_vocab(&self) -> Option<usize> {
        None
    }
}

/// `v` with `[PAD<i>]` tokens (type unused) appended up to `n` tokens, for presets whose
/// vocabulary is larger than the tokenizer's (as llama.cpp's converter pads).
pub fn padded_vocab(
    v: &crate::formats::tokenizer::GgufVocab,
    n: usize,
) -> crate::formats::tokenizer::GgufVocab {
    let mut v = v.clone();
    if v.token_types.len() < v.tokens.len() {
        v.token_types
            .resize(v.tokens.len(), crate::formats::tokenizer::TOKEN_TYPE_NORMAL);
    }
    for i in v.tokens.len()..n {
        v.tokens.push(format!("[PAD{i}]"));
        v.token_types
            .push(crate::formats::tokenizer::TOKEN_TYPE_UNUSED);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_valid_configs_and_complete_stores() {
        for p in PRESETS {
            let cfg = p.config().unwrap();
            assert_eq!(cfg.q_dim(), p.n_heads * p.head_dim, "{}", p.name);
        }
        // A small one end to end: every manifest tensor present with the right size.
        let p = Preset::by_name("smollm2-135m").unwrap();
        let s = SyntheticStore::new(&p, GgmlType::Q4_0, 1).unwrap();
        for (name, dims, _) in tensor_manifest(s.config()) {
            let t = s.tensor(&name).unwrap();
            let elems: u64 = dims.iter().map(|&d| d as u64).product();
            assert_eq!(
                t.ggml_type.bytes_for(elems),
                Some(t.data.len() as u64),
                "{name}"
            );
        }
        assert!(Preset::by_name("gpt-5").is_err());
    }

    /// A mix resolves per tensor, and layers still share the data of equal (role, shape,
    /// type): SmolLM2's ffn_down is Q6_K in layers 0 and 1 (the same data) and Q4_K in
    /// layer 3; its rows of 576 fall back (attn_q Q4_K -> Q5_0, attn_v Q6_K -> Q8_0).
    #[test]
    fn mixes_resolve_per_tensor() {
        let p = Preset::by_name("smollm2-135m").unwrap();
        let s = SyntheticStore::new(&p, crate::model::QuantMix::Q4KM, 1).unwrap();
        let t = |name: &str| s.tensor(name).unwrap();
        let ty = |name: &str| t(name).ggml_type;
        assert_eq!(ty("token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q5_0);
        assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.3.attn_v.weight"), GgmlType::Q5_0);
        assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q6K);
        assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::Q4K);
        let data = |name: &str| t(name).data.as_ptr();
        assert_eq!(data("blk.0.ffn_down.weight"), data("blk.1.ffn_down.weight"));
        assert_ne!(data("blk.0.ffn_down.weight"), data("blk.3.ffn_down.weight"));
        for (name, dims, _) in tensor_manifest(s.config()) {
            let t = t(&name);
            let elems: u64 = dims.iter().map(|&d| d as u64).product();
            assert_eq!(
                t.ggml_type.bytes_for(elems),
                Some(t.data.len() as u64),
                "{name}"
            );
        }
        // Types without a quantiser are refused.
        assert!(SyntheticStore::new(&p, GgmlType::Q2K, 1).is_err());
    }
}
