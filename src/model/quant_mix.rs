//! What `wick quantize --type`, `--quantize` and synthetic models quantise matrices to: one
//! GGML type for every matrix, or one of llama.cpp's K-quant mixes, whose type depends on
//! the tensor's role, layer and row length.
//!
//! The mixes reproduce llama.cpp b10587's choices (src/llama-quant.cpp:
//! `llama_tensor_get_type` -> `llama_tensor_get_type_impl`, then `tensor_type_fallback`) for
//! LLAMA_FTYPE_MOSTLY_Q4_K_M and Q5_K_M, without an importance matrix or overrides, for the
//! dense architectures wick loads (llama, qwen2, qwen3; no experts, so none of the
//! n_expert branches apply; no fused attn_qkv):
//! - every matrix starts as the mix's base type, Q4_K (Q4_K_M) or Q5_K (Q5_K_M)
//!   (`llama_ftype_get_default_type`);
//! - `output.weight`, and `token_embd.weight` when there is no `output.weight` (tied
//!   embeddings: llama.cpp quantises the shared tensor as the output): Q8_0 when its rows are
//!   not a multiple of the base type's 256-value block, else Q6_K;
//! - `attn_v.weight` of layer i: Q6_K when `use_more_bits(i, n_layers)`; in llama.cpp's 70B
//!   models (llama with 80 layers and grouped KV heads, qwen2 with 80 layers) Q4_K becomes
//!   Q5_K (its `LLM_TYPE_70B` rule);
//! - `ffn_down.weight` of layer i: Q6_K when `use_more_bits(i, n_layers)`;
//! - everything else (token_embd when untied, attn_q/k/output, ffn_gate/up): the base type;
//! - then rows that are not a multiple of the chosen type's block fall back
//!   ([`quant::storage_type_for_rows`]: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16).
//!
//! llama.cpp counts attn_v and ffn_down tensors in its tensor order (sorted by layer number)
//! rather than reading the layer from the name; for a dense model the two are the same.
//! When this was written, files from f32 GGUFs of llama (4, 32 and 80 layers, and the
//! goldens' llama_gqa), qwen2 and qwen3 shapes were compared with llama.cpp's own
//! `llama_model_quantize` (built outside this repository): same types, file type and tensor
//! bytes for both mixes.

use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig};
use crate::quant::{self, GgmlType};

/// llama.cpp's K-quant mixes that wick writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantMix {
    Q4KM,
    Q5KM,
}

impl QuantMix {
    pub const ALL: [QuantMix; 2] = [QuantMix::Q4KM, QuantMix::Q5KM];

    /// llama.cpp's name (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        match self {
            QuantMix::Q4KM => "Q4_K_M",
            QuantMix::Q5KM => "Q5_K_M",
        }
    }

    /// The type of every matrix the rules do not single out.
    pub fn base(self) -> GgmlType {
        match self {
            QuantMix::Q4KM => GgmlType::Q4K,
            QuantMix::Q5KM => GgmlType::Q5K,
        }
    }
}

/// The layers whose attn_v and ffn_down get more bits: the first and last eighth, and every
/// third layer in between (llama.cpp's `use_more_bits`, in integer arithmetic).
pub fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// Whether llama.cpp types a model of `cfg` as `LLM_TYPE_70B` (src/models/llama.cpp: 80
/// layers with fewer KV heads than heads; src/models/qwen2.cpp: 80 layers; qwen3 never).
fn is_llama_cpp_70b(cfg: &ModelConfig) -> bool {
    match cfg.arch {
        Arch::Llama | Arch::Mistral => cfg.n_layers == 80 && cfg.n_heads != cfg.n_kv_heads,
        Arch::Qwen2 => cfg.n_layers == 80,
        Arch::Qwen3 => false,
    }
}

/// What to quantise a model's matrices to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantTarget {
    /// Every matrix in this type (rows that do not fit its blocks fall back).
    Type(GgmlType),
    /// A per-tensor mix.
    Mix(QuantMix),
}

impl From<GgmlType> for QuantTarget {
    fn from(t: GgmlType) -> Self {
        QuantTarget::Type(t)
    }
}

impl From<QuantMix> for QuantTarget {
    fn from(m: QuantMix) -> Self {
        QuantTarget::Mix(m)
    }
}

impl std::str::FromStr for QuantTarget {
    type Err = Error;

    /// A llama.cpp-style name, case-insensitive: a type [`quant::parse_quant_type`] accepts
    /// (`q4_0`, `q6_k`, `f16`, ...) or a mix (`q4_k_m`, `q5_k_m`).
    fn from_str(name: &str) -> Result<Self> {
        if let Some(m) = QuantMix::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name.trim()))
        {
            return Ok(QuantTarget::Mix(m));
        }
        quant::parse_quant_type(name.trim())
            .map(QuantTarget::Type)
            .map_err(|_| {
                let names: Vec<String> = quant::QUANTIZE_TARGETS
                    .iter()
                    .map(|t| t.name())
                    .chain(QuantMix::ALL.iter().map(|m| m.name().to_string()))
                    .map(|n| n.to_ascii_lowercase())
                    .collect();
                Error::InvalidArgument(format!(
                    "unknown quantisation type {name:?} (one of {})",
                    names.join(", ")
                ))
            })
    }
}

impl QuantTarget {
    /// llama.cpp's name: `Q4_K_M`, `Q8_0`, `F16`.
    pub fn name(&self) -> String {
        match self {
            QuantTarget::Type(t) => t.name(),
            QuantTarget::Mix(m) => m.name().to_string(),
        }
    }

    /// An error unless wick can write this target.
    pub fn check(&self) -> Result<()> {
        match self {
            QuantTarget::Type(t) if !quant::QUANTIZE_TARGETS.contains(t) => Err(
                Error::InvalidArgument(format!("cannot write {} tensors", t.name())),
            ),
            _ => Ok(()),
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) for a file written with this target.
    /// A single K-quant is the "_S" (small) file type of its family, as all its matrices
    /// are that type; Q6_K has only one.
    pub fn file_type(&self) -> u32 {
        match self {
            QuantTarget::Mix(QuantMix::Q4KM) => 15,
            QuantTarget::Mix(QuantMix::Q5KM) => 17,
            QuantTarget::Type(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q4K => 14, // Q4_K_S
                GgmlType::Q5K => 16, // Q5_K_S
                GgmlType::Q6K => 18,
                GgmlType::Bf16 => 32,
                _ => 0,
            },
        }
    }

    /// The type matrix `name` (GGUF name, rows of `row_len` values) of a model of `cfg` is
    /// stored in (see the module docs for the mixes).
    pub fn matrix_type(&self, cfg: &ModelConfig, name: &str, row_len: usize) -> GgmlType {
        let t = match self {
            QuantTarget::Type(t) => *t,
            QuantTarget::Mix(m) => mix_type(*m, cfg, name, row_len),
        };
        quant::storage_type_for_rows(t, row_len)
    }
}

/// The type llama.cpp's rules give matrix `name` under `mix`, before the row-length fallback.
fn mix_type(mix: QuantMix, cfg: &ModelConfig, name: &str, row_len: usize) -> GgmlType {
    let base = mix.base();
    let is_output = name == "output.weight" || (cfg.tied_output && name == "token_embd.weight");
    if is_output {
        let block = base.block_layout().map_or(1, |(be, _)| be);
        return if row_len.is_multiple_of(block) {
            GgmlType::Q6K
        } else {
            GgmlType::Q8_0
        };
    }
    // "blk.<layer>.<role>"
    let Some((layer, role)) = name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(l, role)| Some((l.parse::<usize>().ok()?, role)))
    else {
        return base;
    };
    let more_bits = use_more_bits(layer, cfg.n_layers);
    match role {
        "attn_v.weight" if more_bits => GgmlType::Q6K,
        "attn_v.weight" if base == GgmlType::Q4K && is_llama_cpp_70b(cfg) => GgmlType::Q5K,
        "ffn_down.weight" if more_bits => GgmlType::Q6K,
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synthetic::Preset;

    fn config(arch: Arch, n_layers: usize, hidden: usize, heads: (usize, usize)) -> ModelConfig {
        let (n_heads, n_kv_heads) = heads;
        Preset {
            name: "test",
            arch,
            n_layers,
            hidden,
            n_heads,
            n_kv_heads,
            head_dim: 64,
            ffn: 4 * hidden,
            vocab: 1000,
            context_len: 1024,
            rope_theta: 10000.0,
            tied: false,
        }
        .config()
        .unwrap()
    }

    #[test]
    fn more_bits_layers() {
        let picked = |n: usize| -> Vec<usize> { (0..n).filter(|&i| use_more_bits(i, n)).collect() };
        // n/8 = 4, 7n/8 = 28, and (i - 4) % 3 == 2 in between.
        assert_eq!(
            picked(32),
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        // n/8 = 0, 7n/8 = 3: layer 3, and layer 2 by the third rule.
        assert_eq!(picked(4), [2, 3]);
        // SmolLM2-135M: n/8 = 3, 7n/8 = 26.
        assert_eq!(
            picked(30),
            [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
        assert_eq!(picked(1), [0]);
    }

    /// (tensor, row length) -> type, for Q4_K_M and Q5_K_M, on model shapes chosen to reach
    /// every rule. Expected values worked out by hand from llama.cpp b10587's
    /// src/llama-quant.cpp (see the module docs).
    #[test]
    fn mix_rules_table() {
        use GgmlType::*;
        let llama8b = ModelConfig {
            vocab: 128256,
            ffn: 14336,
            ..config(Arch::Llama, 32, 4096, (32, 8))
        };
        let llama4 = config(Arch::Llama, 4, 256, (4, 2));
        let smollm = ModelConfig {
            tied_output: true,
            ..config(Arch::Llama, 30, 576, (9, 3))
        };
        let qwen05 = ModelConfig {
            tied_output: true,
            ..config(Arch::Qwen2, 24, 896, (14, 2))
        };
        let llama1b = ModelConfig {
            tied_output: true,
            ..config(Arch::Llama, 16, 2048, (32, 8))
        };
        let llama70 = config(Arch::Llama, 80, 8192, (64, 8));
        let llama65 = config(Arch::Llama, 80, 8192, (64, 64));
        let qwen72 = config(Arch::Qwen2, 80, 8192, (64, 64));
        let qwen3_80 = config(Arch::Qwen3, 80, 8192, (64, 8));
        // (model, tensor, row length, Q4_K_M type, Q5_K_M type)
        let table: &[(&ModelConfig, &str, usize, GgmlType, GgmlType)] = &[
            // Llama-3-8B: untied embedding in the base type, output Q6_K.
            (&llama8b, "token_embd.weight", 4096, Q4K, Q5K),
            (&llama8b, "output.weight", 4096, Q6K, Q6K),
            (&llama8b, "blk.0.attn_q.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.0.attn_k.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.0.attn_output.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.0.ffn_gate.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.0.ffn_up.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.0.attn_v.weight", 4096, Q6K, Q6K),
            (&llama8b, "blk.3.attn_v.weight", 4096, Q6K, Q6K),
            (&llama8b, "blk.4.attn_v.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.5.attn_v.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.6.attn_v.weight", 4096, Q6K, Q6K),
            (&llama8b, "blk.26.attn_v.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.27.attn_v.weight", 4096, Q6K, Q6K),
            (&llama8b, "blk.28.attn_v.weight", 4096, Q6K, Q6K),
            (&llama8b, "blk.31.attn_v.weight", 4096, Q6K, Q6K),
            (&llama8b, "blk.0.ffn_down.weight", 14336, Q6K, Q6K),
            (&llama8b, "blk.7.ffn_down.weight", 14336, Q4K, Q5K),
            (&llama8b, "blk.9.ffn_down.weight", 14336, Q6K, Q6K),
            (&llama8b, "blk.9.ffn_up.weight", 4096, Q4K, Q5K),
            (&llama8b, "blk.30.ffn_down.weight", 14336, Q6K, Q6K),
            // Four layers: layers 2 and 3 get more bits.
            (&llama4, "blk.0.attn_v.weight", 256, Q4K, Q5K),
            (&llama4, "blk.1.ffn_down.weight", 1024, Q4K, Q5K),
            (&llama4, "blk.2.attn_v.weight", 256, Q6K, Q6K),
            (&llama4, "blk.3.ffn_down.weight", 1024, Q6K, Q6K),
            // SmolLM2-135M: rows of 576 fit no K-quant block. Tied embedding as the output,
            // Q6_K -> Q8_0 (rows not whole 256-blocks); Q4_K -> Q5_0, Q5_K -> Q5_1,
            // Q6_K -> Q8_0; ffn_down's rows of 1536 do fit.
            (&smollm, "token_embd.weight", 576, Q8_0, Q8_0),
            (&smollm, "blk.0.attn_q.weight", 576, Q5_0, Q5_1),
            (&smollm, "blk.0.attn_v.weight", 576, Q8_0, Q8_0),
            (&smollm, "blk.3.attn_v.weight", 576, Q5_0, Q5_1),
            (&smollm, "blk.5.attn_v.weight", 576, Q8_0, Q8_0),
            (&smollm, "blk.0.ffn_gate.weight", 576, Q5_0, Q5_1),
            (&smollm, "blk.0.ffn_down.weight", 1536, Q6K, Q6K),
            (&smollm, "blk.3.ffn_down.weight", 1536, Q4K, Q5K),
            // Qwen2.5-0.5B: rows of 896 (3.5 blocks), ffn_down rows of 4864 (19 blocks).
            (&qwen05, "token_embd.weight", 896, Q8_0, Q8_0),
            (&qwen05, "blk.3.attn_q.weight", 896, Q5_0, Q5_1),
            (&qwen05, "blk.0.ffn_down.weight", 4864, Q6K, Q6K),
            (&qwen05, "blk.3.ffn_down.weight", 4864, Q4K, Q5K),
            (&qwen05, "blk.5.ffn_down.weight", 4864, Q6K, Q6K),
            // Llama-3.2-1B: tied embedding with whole blocks -> Q6_K.
            (&llama1b, "token_embd.weight", 2048, Q6K, Q6K),
            (&llama1b, "blk.2.attn_v.weight", 2048, Q4K, Q5K),
            // llama.cpp's 70B rule: attn_v Q4_K -> Q5_K outside the more-bits layers.
            (&llama70, "blk.10.attn_v.weight", 8192, Q5K, Q5K),
            (&llama70, "blk.12.attn_v.weight", 8192, Q6K, Q6K),
            (&llama70, "blk.10.ffn_down.weight", 32768, Q4K, Q5K),
            (&llama65, "blk.10.attn_v.weight", 8192, Q4K, Q5K),
            (&qwen72, "blk.10.attn_v.weight", 8192, Q5K, Q5K),
            (&qwen3_80, "blk.10.attn_v.weight", 8192, Q4K, Q5K),
        ];
        for &(cfg, name, k, q4, q5) in table {
            for (mix, want) in [(QuantMix::Q4KM, q4), (QuantMix::Q5KM, q5)] {
                let got = QuantTarget::Mix(mix).matrix_type(cfg, name, k);
                assert_eq!(
                    got,
                    want,
                    "{} {name} (k {k}) of a {:?} model with {} layers",
                    mix.name(),
                    cfg.arch,
                    cfg.n_layers
                );
            }
        }
        // Single types apply to every matrix, with the same fallback.
        let q6 = QuantTarget::Type(Q6K);
        assert_eq!(q6.matrix_type(&llama8b, "blk.4.attn_v.weight", 4096), Q6K);
        assert_eq!(q6.matrix_type(&smollm, "blk.4.attn_q.weight", 576), Q8_0);
        let q5 = QuantTarget::Type(Q5K);
        assert_eq!(q5.matrix_type(&llama8b, "output.weight", 4096), Q5K);
        assert_eq!(q5.matrix_type(&smollm, "blk.4.attn_q.weight", 576), Q5_1);
        // Rows that are not whole 32-blocks end in F16.
        assert_eq!(q5.matrix_type(&smollm, "blk.4.attn_q.weight", 40), F16);
    }

    #[test]
    fn names_and_file_types() {
        let parse = |s: &str| s.parse::<QuantTarget>();
        assert_eq!(parse("q4_k_m").unwrap(), QuantTarget::Mix(QuantMix::Q4KM));
        assert_eq!(parse("Q5_K_M").unwrap(), QuantTarget::Mix(QuantMix::Q5KM));
        assert_eq!(parse("q6_k").unwrap(), QuantTarget::Type(GgmlType::Q6K));
        assert_eq!(parse("q4_0").unwrap(), QuantTarget::Type(GgmlType::Q4_0));
        let e = parse("q3_k_m").unwrap_err().to_string();
        assert!(
            e.contains("q4_k_m") && e.contains("q5_k") && e.contains("q8_0"),
            "{e}"
        );
        // llama.cpp's llama_ftype values (include/llama.h).
        assert_eq!(parse("q4_k_m").unwrap().file_type(), 15);
        assert_eq!(parse("q5_k_m").unwrap().file_type(), 17);
        assert_eq!(parse("q5_k").unwrap().file_type(), 16);
        assert_eq!(parse("q6_k").unwrap().file_type(), 18);
        assert_eq!(parse("q4_k").unwrap().file_type(), 14);
        for t in quant::QUANTIZE_TARGETS {
            let target = QuantTarget::Type(t);
            assert_eq!(parse(&t.name()).unwrap(), target);
            assert!(target.check().is_ok());
        }
        assert!(QuantTarget::Type(GgmlType::Q2K).check().is_err());
        assert_eq!(QuantTarget::Mix(QuantMix::Q4KM).name(), "Q4_K_M");
    }
}
