//! Model configuration: one generic decoder with per-architecture options, read from GGUF
//! metadata and validated before anything touches the GPU.

use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

/// Which dimensions of a head form a rotated RoPE pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: llama.cpp's "norm" mode, used by GGUF llama (whose Q/K weights were
    /// permuted at conversion).
    Adjacent,
    /// Pairs `(i, i + rot_dim/2)`: HF transformers' `rotate_half` ("neox" mode).
    HalfSplit,
}

impl RopeStyle {
    /// Whether pairs are `(i, i + rot_dim/2)` (what the kernels and the reference take).
    pub fn half_split(self) -> bool {
        self == RopeStyle::HalfSplit
    }
}

/// Architectures wick runs; they share one decoder and differ only in [`ModelConfig`] options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Mistral,
}

impl Arch {
    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "mistral" => Some(Arch::Mistral),
            _ => None,
        }
    }
}

/// Everything the runtime needs to know about a decoder-only transformer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
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
    /// Rotated dimensions per head (the rest pass through).
    pub rope_dim: usize,
    #[serde(skip)]
    pub rope_style: RopeStyle,
    /// Precomputed inverse frequencies (scaling already applied), `rope_dim / 2` values.
    pub rope_inv_freq: Vec<f32>,
    pub rms_eps: f32,
    /// No separate output matrix: the LM head is the token embedding.
    pub tied_output: bool,
    /// Q/K/V projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub sliding_window: Option<usize>,
}

/// Largest context wick accepts from a file; anything above is treated as corrupt.
pub const MAX_CONTEXT: usize = 1 << 24;
/// Largest head size the attention kernels support.
pub const MAX_HEAD_DIM: usize = 256;

/// Most decoder blocks wick accepts (the largest published models have a few hundred);
/// anything above is treated as corrupt rather than looked for tensor by tensor.
pub const MAX_LAYERS: usize = 4096;

pub use crate::formats::MAX_DIM;

impl ModelConfig {
    /// q rows of the QKV projection.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// k (and v) rows of the QKV projection.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Attention softmax scale.
    pub fn attn_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Reads the configuration of a GGUF model (architectures llama, qwen2, qwen3).
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig> {
        let arch_name = f
            .architecture()
            .ok_or_else(|| Error::Model("GGUF has no general.architecture".into()))?
            .to_string();
        let arch = Arch::from_gguf_name(&arch_name).ok_or_else(|| {
            Error::Model(format!(
                "architecture {arch_name:?} is not supported (wick runs llama, qwen2, qwen3)"
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            let v = f
                .get_u64(&key(k))?
                .ok_or_else(|| Error::Model(format!("GGUF lacks {}", key(k))))?;
            usize::try_from(v)
                .map_err(|_| Error::Model(format!("{} = {v} is out of range", key(k))))
        };
        let opt =
            |k: &str| -> Result<Option<usize>> { Ok(f.get_u64(&key(k))?.map(|v| v as usize)) };
        let n_layers = req("block_count")?;
        let hidden = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = opt("attention.head_count_kv")?.unwrap_or(n_heads);
        let ffn = req("feed_forward_length")?;
        let context_len = req("context_length")?;
        let head_dim = match opt("attention.key_length")? {
            Some(d) => d,
            None if n_heads > 0 && !hidden.is_multiple_of(n_heads) => {
                return Err(Error::Model(format!(
                    "invalid configuration: {} {hidden} is not a multiple of {} {n_heads} and {} is absent, so the head size is undefined",
                    key("embedding_length"),
                    key("attention.head_count"),
                    key("attention.key_length")
                )))
            }
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        let rope_dim = opt("rope.dimension_count")?.unwrap_or(head_dim);
        let rope_theta = f.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
        let rms_eps = f
            .get_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5) as f32;
        let embd = f
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::Model("GGUF lacks tensor token_embd.weight".into()))?;
        let vocab = embd.dims.get(1).copied().unwrap_or(0) as usize;
        let tied_output = f.tensor("output.weight").is_none();
        let qkv_bias = f.tensor("blk.0.attn_q.bias").is_some();
        let qk_norm = f.tensor("blk.0.attn_q_norm.weight").is_some();
        // llama.cpp's converter permutes llama Q/K rows for adjacent-pair rotation; qwen
        // GGUFs keep Hugging Face's half-split ("neox") layout.
        let rope_style = match arch {
            Arch::Llama | Arch::Mistral => RopeStyle::Adjacent,
            Arch::Qwen2 | Arch::Qwen3 => RopeStyle::HalfSplit,
        };
        // RoPE scaling: `rope.scaling.type` linear (positions divided by the factor), or a
        // `rope_freqs.weight` tensor of per-frequency divisors (how llama.cpp's converter
        // stores Llama 3 scaling).
        let mut rope_inv_freq = Vec::new();
        let scaling = f.get_str(&key("rope.scaling.type"))?.unwrap_or("none");
        let factor = f.get_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0) as f32;
        // (A rope dimension beyond any head size is left for `validated` to refuse, before a
        // table of that many frequencies is allocated.)
        if rope_dim > 0
            && rope_dim.is_multiple_of(2)
            && rope_dim <= MAX_HEAD_DIM
            && rope_theta > 0.0
        {
            let mut inv = crate::kernels::rope::inv_freq(rope_theta, rope_dim);
            match scaling {
                "none" => {}
                "linear" if factor.is_finite() && factor > 0.0 => {
                    inv.iter_mut().for_each(|v| *v /= factor)
                }
                other => {
                    return Err(Error::Model(format!(
                        "rope scaling {other:?} (factor {factor}) is not supported"
                    )))
                }
            }
            if let Some(t) = f.tensor("rope_freqs.weight") {
                let data = f.tensor_data(t);
                let factors = (t.ggml_type == crate::quant::GgmlType::F32
                    && t.dims == [inv.len() as u64])
                .then(|| crate::quant::dequantize(t.ggml_type, data, inv.len()).ok())
                .flatten()
                .filter(|v| v.iter().all(|x| x.is_finite() && *x > 0.0))
                .ok_or_else(|| {
                    Error::Model(format!(
                        "rope_freqs.weight must be {} positive F32 values",
                        inv.len()
                    ))
                })?;
                inv.iter_mut().zip(&factors).for_each(|(v, f)| *v /= f);
            }
            rope_inv_freq = inv;
        }
        let cfg = ModelConfig {
            arch,
            n_layers,
            hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn,
            vocab,
            context_len,
            rope_theta,
            rope_dim,
            rope_style,
            rope_inv_freq,
            rms_eps,
            tied_output,
            qkv_bias,
            qk_norm,
            sliding_window: opt("attention.sliding_window")?,
        };
        cfg.validated()
    }

    /// Reads a Hugging Face `config.json` (Llama, Qwen2, Qwen3, Mistral).
    pub fn from_hf(c: &serde_json::Value) -> Result<ModelConfig> {
        let class = c["architectures"][0].as_str().unwrap_or("");
        let arch = match class {
            "LlamaForCausalLM" => Arch::Llama,
            "Qwen2ForCausalLM" => Arch::Qwen2,
            "Qwen3ForCausalLM" => Arch::Qwen3,
            "MistralForCausalLM" => Arch::Mistral,
            other => {
                return Err(Error::Model(format!(
                    "config.json architecture {other:?} is not supported (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM)"
                )))
            }
        };
        let num = |k: &str| -> Result<usize> {
            c[k].as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| Error::Model(format!("config.json lacks {k}")))
        };
        let hidden = num("hidden_size")?;
        let n_heads = num("num_attention_heads")?;
        let n_kv_heads = c["num_key_value_heads"]
            .as_u64()
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = match c["head_dim"].as_u64() {
            Some(d) => d as usize,
            None if n_heads > 0 && !hidden.is_multiple_of(n_heads) => {
                return Err(Error::Model(format!(
                    "invalid configuration: config.json hidden_size {hidden} is not a multiple of num_attention_heads {n_heads} and head_dim is absent, so the head size is undefined"
                )))
            }
            None => hidden.checked_div(n_heads).unwrap_or(0),
        };
        let rope = &c["rope_parameters"];
        let rope_theta = rope["rope_theta"]
            .as_f64()
            .or(c["rope_theta"].as_f64())
            .unwrap_or(10000.0) as f32;
        let scaling = if rope.is_object() {
            rope
        } else {
            &c["rope_scaling"]
        };
        let kind = scaling["rope_type"]
            .as_str()
            .or(scaling["type"].as_str())
            .unwrap_or("default");
        // A head size beyond the limit is refused by `validated`; don't build its table first.
        let mut inv = if head_dim <= MAX_HEAD_DIM {
            crate::kernels::rope::inv_freq(rope_theta, head_dim)
        } else {
            Vec::new()
        };
        match kind {
            "default" => {}
            "linear" => {
                let f = scaling["factor"].as_f64().unwrap_or(1.0) as f32;
                inv.iter_mut().for_each(|v| *v /= f);
            }
            "llama3" => {
                let f = scaling["factor"].as_f64().unwrap_or(8.0);
                let lo = scaling["low_freq_factor"].as_f64().unwrap_or(1.0);
                let hi = scaling["high_freq_factor"].as_f64().unwrap_or(4.0);
                let orig = scaling["original_max_position_embeddings"]
                    .as_f64()
                    .unwrap_or(8192.0);
                let (lo_wl, hi_wl) = (orig / lo, orig / hi);
                for v in inv.iter_mut() {
                    let wl = 2.0 * std::f64::consts::PI / *v as f64;
                    let x = *v as f64;
                    *v = if wl < hi_wl {
                        x
                    } else if wl > lo_wl {
                        x / f
                    } else {
                        let smooth = (orig / wl - lo) / (hi - lo);
                        (1.0 - smooth) * x / f + smooth * x
                    } as f32;
                }
            }
            other => {
                return Err(Error::Model(format!(
                    "rope scaling {other:?} is not supported"
                )))
            }
        }
        let tied = c["tie_word_embeddings"].as_bool().unwrap_or(false);
        let cfg = ModelConfig {
            arch,
            n_layers: num("num_hidden_layers")?,
            hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: num("intermediate_size")?,
            vocab: num("vocab_size")?,
            context_len: num("max_position_embeddings")?,
            rope_theta,
            rope_dim: head_dim,
            rope_style: RopeStyle::HalfSplit,
            rope_inv_freq: inv,
            rms_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            tied_output: tied,
            qkv_bias: arch == Arch::Qwen2 || c["attention_bias"].as_bool().unwrap_or(false),
            qk_norm: arch == Arch::Qwen3,
            sliding_window: if c["use_sliding_window"].as_bool() == Some(false) {
                None
            } else {
                c["sliding_window"].as_u64().map(|v| v as usize)
            },
        };
        cfg.validated()
    }

    /// Checks the numbers are coherent and fills derived fields.
    pub fn validated(mut self) -> Result<ModelConfig> {
        let mut problems = Vec::new();
        for (name, v) in [
            ("block_count", self.n_layers),
            ("embedding_length", self.hidden),
            ("head_count", self.n_heads),
            ("head_count_kv", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("feed_forward_length", self.ffn),
            ("vocab", self.vocab),
            ("context_length", self.context_len),
        ] {
            if v == 0 {
                problems.push(format!("{name} is 0"));
            }
        }
        for (name, v) in [
            ("embedding_length", self.hidden),
            ("head_count", self.n_heads),
            ("head_count_kv", self.n_kv_heads),
            ("feed_forward_length", self.ffn),
            ("vocab", self.vocab),
        ] {
            if v > MAX_DIM {
                problems.push(format!("{name} {v} exceeds wick's limit of {MAX_DIM}"));
            }
        }
        if self.n_layers > MAX_LAYERS {
            problems.push(format!(
                "block_count {} exceeds wick's limit of {MAX_LAYERS}",
                self.n_layers
            ));
        }
        if self.n_kv_heads > 0 && !self.n_heads.is_multiple_of(self.n_kv_heads) {
            problems.push(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim > MAX_HEAD_DIM {
            problems.push(format!(
                "head_dim {} must be even and at most {MAX_HEAD_DIM}",
                self.head_dim
            ));
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            problems.push(format!(
                "rope dimension {} must be even and at most head_dim {}",
                self.rope_dim, self.head_dim
            ));
        }
        if self.context_len > MAX_CONTEXT {
            problems.push(format!(
                "context_length {} exceeds wick's limit of {MAX_CONTEXT}",
                self.context_len
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            problems.push(format!(
                "rope theta {} is not a positive number",
                self.rope_theta
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            problems.push(format!("rms epsilon {} is invalid", self.rms_eps));
        }
        if !problems.is_empty() {
            return Err(Error::Model(format!(
                "invalid configuration: {}",
                problems.join("; ")
            )));
        }
        if self.rope_inv_freq.is_empty() {
            self.rope_inv_freq = crate::kernels::rope::inv_freq(self.rope_theta, self.rope_dim);
        }
        // Scaling parameters (a zero factor, equal llama3 frequency factors) can turn the
        // frequencies into infinities or NaN, which would make every logit NaN.
        if self.rope_inv_freq.len() != self.rope_dim / 2
            || self
                .rope_inv_freq
                .iter()
                .any(|f| !(f.is_finite() && *f > 0.0))
        {
            return Err(Error::Model(format!(
                "invalid configuration: the RoPE frequencies are not {} positive finite numbers (check the rope scaling parameters)",
                self.rope_dim / 2
            )));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(extra: serde_json::Value) -> ModelConfig {
        let mut c = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
            "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        ModelConfig::from_hf(&c).unwrap()
    }

    /// A tiny llama GGUF (1 layer, hidden 32, 4 heads of 8) with `extra` metadata and
    /// tensors added.
    fn tiny_gguf(
        extra: &[(&str, crate::formats::gguf::MetaValue)],
        tensors: &[(&str, Vec<f32>)],
    ) -> Result<ModelConfig> {
        use crate::formats::gguf::MetaValue::{String as S, U32};
        use crate::quant::GgmlType;
        let mut w = crate::formats::gguf_writer::GgufWriter::new()
            .meta("general.architecture", S("llama".into()))
            .meta("llama.block_count", U32(1))
            .meta("llama.context_length", U32(256))
            .meta("llama.embedding_length", U32(32))
            .meta("llama.feed_forward_length", U32(64))
            .meta("llama.attention.head_count", U32(4))
            .tensor(
                "token_embd.weight",
                &[32, 8],
                GgmlType::F32,
                vec![0u8; 32 * 8 * 4],
            );
        for (k, v) in extra {
            w.add_meta(*k, v.clone());
        }
        for (name, values) in tensors {
            let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.add_tensor(*name, &[values.len() as u64], GgmlType::F32, bytes);
        }
        ModelConfig::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap())
    }

    /// Fuzzer find (gguf target): `rope_freqs.weight` divisors that are positive but
    /// subnormal turned the inverse frequencies into inf, and the config was accepted.
    #[test]
    fn rope_freqs_giving_infinite_frequencies_are_refused() {
        let divisors = vec![1.6456546e19, 1.8989621e28, 1.6e-42, 1.4e-42];
        let e = tiny_gguf(&[], &[("rope_freqs.weight", divisors)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RoPE frequencies are not"), "{e}");
        // Sane divisors still load.
        let ok = tiny_gguf(&[], &[("rope_freqs.weight", vec![1.0, 1.0, 2.0, 8.0])]).unwrap();
        assert_eq!(ok.rope_inv_freq.len(), 4);
        assert_eq!(
            ok.rope_inv_freq[3],
            crate::kernels::rope::inv_freq(10000.0, 8)[3] / 8.0
        );
    }

    #[test]
    fn tiny_linear_scaling_factor_is_refused() {
        use crate::formats::gguf::MetaValue::{String as S, F32};
        let e = tiny_gguf(
            &[
                ("llama.rope.scaling.type", S("linear".into())),
                ("llama.rope.scaling.factor", F32(1e-45)),
            ],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("RoPE frequencies are not"), "{e}");
        let c = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 16, "max_position_embeddings": 64,
            "rope_scaling": {"type": "linear", "factor": -2.0}});
        let e = ModelConfig::from_hf(&c).unwrap_err().to_string();
        assert!(e.contains("RoPE frequencies are not"), "{e}");
    }

    /// A huge head_dim or rope dimension is refused by name before its frequency table (one
    /// f32 per pair of dimensions) is allocated: 2^40 would ask for 2 TiB.
    #[test]
    fn huge_head_dim_is_refused_without_allocating() {
        let c = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 16, "max_position_embeddings": 64, "head_dim": 1u64 << 40});
        let e = ModelConfig::from_hf(&c).unwrap_err().to_string();
        assert!(
            e.contains("head_dim 1099511627776 must be even and at most 256"),
            "{e}"
        );
        use crate::formats::gguf::MetaValue::U64;
        let e = tiny_gguf(&[("llama.rope.dimension_count", U64(1 << 40))], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rope dimension 1099511627776 must be even"),
            "{e}"
        );
    }

    /// Llama 3.1's `llama3` scaling (factor 8, low 1, high 4, original 8192), checked per
    /// band against the definition: wavelengths under 8192/4 keep their frequency, over
    /// 8192/1 are divided by 8, and in between the divisor moves smoothly (and monotonically)
    /// from 1 to 8 as `smooth = (8192/wavelength - 1) / 3` falls from 1 to 0.
    #[test]
    fn llama3_rope_scaling_bands() {
        let base = hf(serde_json::json!({}));
        let scaled = hf(
            serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}),
        );
        assert_eq!(base.rope_inv_freq.len(), 64);
        let mut last_divisor = 1.0f64;
        let (mut high, mut mid, mut low) = (0, 0, 0);
        for (b, s) in base.rope_inv_freq.iter().zip(&scaled.rope_inv_freq) {
            let wavelength = 2.0 * std::f64::consts::PI / *b as f64;
            let divisor = *b as f64 / *s as f64;
            if wavelength < 2048.0 {
                assert_eq!(divisor, 1.0);
                high += 1;
            } else if wavelength > 8192.0 {
                assert!((divisor - 8.0).abs() < 1e-5, "{divisor}");
                low += 1;
            } else {
                let smooth = (8192.0 / wavelength - 1.0) / 3.0;
                let want = 1.0 / ((1.0 - smooth) / 8.0 + smooth);
                assert!((divisor - want).abs() < 1e-4 * want, "{divisor} vs {want}");
                mid += 1;
            }
            assert!(divisor >= last_divisor - 1e-6, "divisors must not decrease");
            last_divisor = divisor;
        }
        // All three bands are exercised by Llama 3.1's shape.
        assert!(high > 0 && mid > 0 && low > 0, "{high} {mid} {low}");
        assert_eq!(base.rope_inv_freq[0], 1.0);

        let linear = hf(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 2.0}}));
        for (b, s) in base.rope_inv_freq.iter().zip(&linear.rope_inv_freq) {
            assert_eq!(*s, b / 2.0);
        }
        let yarn = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 16, "max_position_embeddings": 64,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        let e = ModelConfig::from_hf(&yarn).unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
    }
}
