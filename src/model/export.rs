//! Writing a model as GGUF (`wick quantize`): from a Hugging Face directory or another GGUF,
//! matrices converted to one type or one of llama.cpp's mixes ([`QuantTarget`]), in the
//! layout llama.cpp's converter produces so that both wick and llama.cpp load the result:
//! - llama.cpp tensor names, 1-D tensors (norms, biases) in F32;
//! - for the llama architecture (Llama, Mistral) the rows of `attn_q` / `attn_k` permuted
//!   from Hugging Face's half-split RoPE pairs to adjacent pairs (llama.cpp rope type NORM);
//!   qwen2/qwen3 keep the half-split layout (rope type NEOX), as llama.cpp's converter does;
//! - RoPE scaling as `rope.scaling.type = linear` or, for per-frequency scaling (Llama 3),
//!   a `rope_freqs.weight` tensor of divisors;
//! - the tokenizer (`tokenizer.*` metadata copied from a GGUF source, or converted from
//!   `tokenizer.json`) and the chat template;
//! - every enum-like value (architecture, file type, RoPE scaling type, tokenizer model and
//!   pre-tokenizer) under a name llama.cpp accepts (tests/llama_cpp.rs pins them against
//!   llama.cpp b10587's lists).
//!
//! Rows whose length is not a multiple of the target's block fall back as llama.cpp does
//! ([`quant::storage_type_for_rows`]). Tensors are produced one at a time while the file is
//! written, and the file replaces its target atomically.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, MetaValue};
use crate::formats::gguf_writer::GgufWriter;
use crate::formats::hf::HfCheckpoint;
use crate::formats::tokenizer::{llama_cpp_pre_name, GgufVocab};
use crate::model::config::{Arch, ModelConfig};
use crate::model::quant_mix::QuantTarget;
use crate::model::weights::{tensor_manifest, TensorStore};
use crate::quant::{self, GgmlType};

/// What [`quantize_to_gguf`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeReport {
    /// GGUF `general.architecture` written.
    pub architecture: String,
    pub tensors: usize,
    /// Tensor count per GGML type name.
    pub types: BTreeMap<String, usize>,
    pub file_bytes: u64,
    /// Whether tokenizer metadata was written (a directory without tokenizer.json has none).
    pub tokenizer: bool,
    /// Whether Q/K rows were permuted for adjacent-pair RoPE.
    pub permuted_qk: bool,
}

/// The `general.architecture` wick writes for `arch`: llama.cpp runs Mistral (without a
/// sliding window) as `llama`.
pub fn gguf_architecture(arch: Arch) -> &'static str {
    match arch {
        Arch::Llama | Arch::Mistral => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
    }
}

/// Reorders the rows of a Q or K projection (or its bias, `row_len` 1) from Hugging Face's
/// half-split RoPE layout to the adjacent-pair layout: within each head, row `p * hd/2 + i`
/// moves to `2i + p` (llama.cpp's converter `permute`).
pub fn permute_for_adjacent_rope(x: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    let rows = x.len() / row_len;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0; x.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for p in 0..2 {
                let (dst, src) = (h * hd + 2 * i + p, h * hd + p * half + i);
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&x[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

enum Source {
    Gguf(GgufFile),
    Hf(HfCheckpoint),
}

impl Source {
    fn store(&self) -> &dyn TensorStore {
        match self {
            Source::Gguf(g) => g,
            Source::Hf(h) => h,
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Converts the model at `input` (GGUF file or Hugging Face directory) into a GGUF at
/// `output` whose matrices are `target`, a type or a mix (see the module docs).
pub fn quantize_to_gguf(
    input: &Path,
    output: &Path,
    target: impl Into<QuantTarget>,
) -> Result<QuantizeReport> {
    let target = target.into();
    target.check()?;
    if same_file(input, output) {
        return Err(Error::InvalidArgument(format!(
            "{}: the output would overwrite the input",
            output.display()
        )));
    }
    let (src, cfg) = if input.is_dir() {
        let ck = HfCheckpoint::open(input)?;
        let cfg = ModelConfig::from_hf(&ck.config)?;
        (Source::Hf(ck), cfg)
    } else {
        let g = GgufFile::open(input)?;
        let cfg = ModelConfig::from_gguf(&g)?;
        (Source::Gguf(g), cfg)
    };
    let store = src.store();
    // Hugging Face rows are half-split; llama.cpp's llama rotates adjacent pairs.
    let permute_qk =
        matches!(src, Source::Hf(_)) && matches!(cfg.arch, Arch::Llama | Arch::Mistral);
    let tokenizer = tokenizer_metadata(&src, &cfg)?;
    let name = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    write_model_gguf(store, &cfg, &name, tokenizer, permute_qk, target, output)
}

/// The `tokenizer.*` metadata of a source: copied from a GGUF, converted from a Hugging Face
/// directory's `tokenizer.json`, or empty (with a warning) when it has none.
fn tokenizer_metadata(src: &Source, cfg: &ModelConfig) -> Result<Vec<(String, MetaValue)>> {
    let mut out = Vec::new();
    match src {
        Source::Gguf(g) => {
            for (key, v) in &g.metadata {
                if !key.starts_with("tokenizer.") {
                    continue;
                }
                // A file an older wick wrote may say `gpt2`; write the name llama.cpp knows.
                let v = match (key.as_str(), v) {
                    ("tokenizer.ggml.pre", MetaValue::String(pre)) => {
                        MetaValue::String(llama_cpp_pre_name(pre).to_string())
                    }
                    _ => v.clone(),
                };
                out.push((key.clone(), v));
            }
        }
        Source::Hf(ck) => {
            let tj = ck.dir.join("tokenizer.json");
            if tj.exists() {
                let mut vocab = GgufVocab::from_tokenizer_json(&tj, Some(cfg.vocab))?;
                if vocab.tokens.len() > cfg.vocab {
                    return Err(Error::Model(format!(
                        "tokenizer.json has {} tokens but the embedding only {} rows",
                        vocab.tokens.len(),
                        cfg.vocab
                    )));
                }
                if vocab.chat_template.is_none() {
                    vocab.chat_template = ck.chat_template();
                }
                if vocab.eos.is_none() {
                    vocab.eos = ck.eos_ids().first().copied();
                }
                out = vocab.to_metadata();
            } else {
                log::warn!(
                    "{}: no tokenizer.json; the GGUF serves token ids only",
                    ck.dir.display()
                );
            }
        }
    }
    Ok(out)
}

/// Writes the tensors of `store` (a model of `cfg`) as a GGUF at `output` whose matrices are
/// `target` (a type, or a mix resolved per tensor), with `tokenizer` metadata (may be empty)
/// and, when `permute_qk`, the Q/K rows permuted from half-split to adjacent-pair RoPE.
pub fn write_model_gguf(
    store: &dyn TensorStore,
    cfg: &ModelConfig,
    name: &str,
    tokenizer: Vec<(String, MetaValue)>,
    permute_qk: bool,
    target: impl Into<QuantTarget>,
    output: &Path,
) -> Result<QuantizeReport> {
    let target = target.into();
    target.check()?;
    let arch = gguf_architecture(cfg.arch);

    // Every tensor must be present and well-shaped before anything is written.
    let manifest = tensor_manifest(cfg);
    let mut problems = Vec::new();
    for (name, dims, _) in &manifest {
        match store.tensor(name) {
            None => problems.push(format!("missing tensor {name}")),
            Some(t) if t.dims != dims.iter().map(|&d| d as u64).collect::<Vec<_>>() => {
                problems.push(format!("{name} has shape {:?}, expected {dims:?}", t.dims))
            }
            Some(t) if t.ggml_type.block_layout().is_none() => problems.push(format!(
                "{name} has unsupported type {}",
                t.ggml_type.name()
            )),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        return Err(Error::Model(format!("{name}: {}", problems.join("; "))));
    }

    let mut w = GgufWriter::new();
    let u32_of = |v: usize| MetaValue::U32(u32::try_from(v).unwrap_or(u32::MAX));
    w.add_meta("general.architecture", MetaValue::String(arch.into()));
    w.add_meta("general.name", MetaValue::String(name.into()));
    w.add_meta("general.file_type", MetaValue::U32(target.file_type()));
    w.add_meta("general.quantization_version", MetaValue::U32(2));
    let k = |s: &str| format!("{arch}.{s}");
    w.add_meta(k("vocab_size"), u32_of(cfg.vocab));
    w.add_meta(k("context_length"), u32_of(cfg.context_len));
    w.add_meta(k("embedding_length"), u32_of(cfg.hidden));
    w.add_meta(k("block_count"), u32_of(cfg.n_layers));
    w.add_meta(k("feed_forward_length"), u32_of(cfg.ffn));
    w.add_meta(k("attention.head_count"), u32_of(cfg.n_heads));
    w.add_meta(k("attention.head_count_kv"), u32_of(cfg.n_kv_heads));
    w.add_meta(k("attention.key_length"), u32_of(cfg.head_dim));
    w.add_meta(k("attention.value_length"), u32_of(cfg.head_dim));
    w.add_meta(k("rope.dimension_count"), u32_of(cfg.rope_dim));
    w.add_meta(k("rope.freq_base"), MetaValue::F32(cfg.rope_theta));
    w.add_meta(
        k("attention.layer_norm_rms_epsilon"),
        MetaValue::F32(cfg.rms_eps),
    );
    if let Some(win) = cfg.sliding_window {
        w.add_meta(k("attention.sliding_window"), u32_of(win));
    }
    // RoPE scaling, recovered from the scaled inverse frequencies.
    let base = crate::kernels::rope::inv_freq(cfg.rope_theta, cfg.rope_dim);
    let divisors: Vec<f32> = base
        .iter()
        .zip(&cfg.rope_inv_freq)
        .map(|(b, s)| b / s)
        .collect();
    let near = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(b.abs());
    let mut rope_freqs = None;
    if divisors.iter().any(|&d| !near(d, 1.0)) {
        if divisors.iter().all(|&d| near(d, divisors[0])) {
            w.add_meta(k("rope.scaling.type"), MetaValue::String("linear".into()));
            w.add_meta(k("rope.scaling.factor"), MetaValue::F32(divisors[0]));
        } else {
            rope_freqs = Some(divisors);
        }
    }

    // Tokenizer and chat template.
    let has_tokenizer = !tokenizer.is_empty();
    for (key, v) in tokenizer {
        w.add_meta(key, v);
    }

    // Tensor directory: types decided now, bytes produced while writing.
    let mut types = BTreeMap::new();
    let mut plan: BTreeMap<String, GgmlType> = BTreeMap::new();
    for (name, dims, matrix) in &manifest {
        let dims64: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        let t = if *matrix {
            target.matrix_type(cfg, name, dims[0])
        } else {
            GgmlType::F32
        };
        w.add_deferred_tensor(name.clone(), &dims64, t);
        plan.insert(name.clone(), t);
        *types.entry(t.name()).or_insert(0) += 1;
    }
    if let Some(d) = &rope_freqs {
        let bytes: Vec<u8> = d.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor("rope_freqs.weight", &[d.len() as u64], GgmlType::F32, bytes);
        *types.entry(GgmlType::F32.name()).or_insert(0) += 1;
    }

    let heads_of = |name: &str| -> Option<usize> {
        if !permute_qk {
            return None;
        }
        let tail = name.rsplit_once("attn_")?.1;
        match tail {
            "q.weight" | "q.bias" => Some(cfg.n_heads),
            "k.weight" | "k.bias" => Some(cfg.n_kv_heads),
            _ => None,
        }
    };
    w.write_streaming(output, |name| {
        let t = store
            .tensor(name)
            .ok_or_else(|| Error::Model(format!("tensor {name} vanished while writing")))?;
        let to = plan[name];
        let row_len = t.dims[0] as usize;
        let elems = t.n_elements() as usize;
        match heads_of(name) {
            Some(heads) => {
                let x = quant::dequantize(t.ggml_type, t.data, elems)?;
                let row = if t.dims.len() == 1 { 1 } else { row_len };
                quant::quantize(to, &permute_for_adjacent_rope(&x, heads, row))
            }
            None => Ok(quant::convert(t.ggml_type, t.data, elems, row_len, to)?.1),
        }
    })?;
    let file_bytes = std::fs::metadata(output)
        .map_err(|e| Error::io(output, e))?
        .len();
    Ok(QuantizeReport {
        architecture: arch.into(),
        tensors: manifest.len() + rope_freqs.is_some() as usize,
        types,
        file_bytes,
        tokenizer: has_tokenizer,
        permuted_qk: permute_qk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_moves_half_split_pairs_next_to_each_other() {
        // One head of dim 8, rows of length 1: HF rows 0..4 are the first halves of pairs
        // (i, i+4); GGUF wants (0,4,1,5,2,6,3,7).
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(
            permute_for_adjacent_rope(&x, 1, 1),
            vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]
        );
        // Two heads, rows of length 2: each head permuted on its own, rows kept whole.
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let p = permute_for_adjacent_rope(&x, 2, 2);
        assert_eq!(&p[..8], &[0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
        assert_eq!(&p[8..], &[8.0, 9.0, 12.0, 13.0, 10.0, 11.0, 14.0, 15.0]);
    }
}
