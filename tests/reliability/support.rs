//! Tiny model files for the reliability tests: a one-block Llama (hidden 64, 2 heads, 1 KV
//! head, FFN 128, vocabulary 64) as a GGUF (optionally with every tensor's data a hole of a
//! sparse file, so a header can claim gigabytes without writing them) or as a Hugging Face
//! directory, plus the synthetic golden checkpoints.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use wick::formats::gguf::MetaValue;
use wick::formats::gguf_writer::GgufWriter;
use wick::model::synthetic::Preset;
use wick::model::weights::tensor_manifest;
use wick::model::{Arch, ModelConfig};
use wick::quant::GgmlType;

/// The shape of a tiny Llama.
#[derive(Debug, Clone, Copy)]
pub struct Tiny {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context: usize,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny {
            layers: 1,
            hidden: 64,
            heads: 2,
            kv_heads: 1,
            ffn: 128,
            vocab: 64,
            context: 256,
        }
    }
}

/// Deterministic small weights (norms 1), distinct per tensor.
pub fn values(name: &str, n: usize) -> Vec<f32> {
    if name.contains("norm") {
        return vec![1.0; n];
    }
    let salt = name
        .bytes()
        .fold(0x9E37_79B9u32, |h, b| h.rotate_left(5) ^ b as u32);
    (0..n as u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761).wrapping_add(salt) >> 8;
            ((x % 2001) as f32 / 1000.0 - 1.0) * 0.25
        })
        .collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Tiny {
    pub fn config(&self) -> ModelConfig {
        Preset {
            name: "tiny",
            arch: Arch::Llama,
            n_layers: self.layers,
            hidden: self.hidden,
            n_heads: self.heads,
            n_kv_heads: self.kv_heads,
            head_dim: self.hidden / self.heads,
            ffn: self.ffn,
            vocab: self.vocab,
            context_len: self.context,
            rope_theta: 10000.0,
            tied: true,
        }
        .config()
        .expect("a valid tiny configuration")
    }

    /// GGUF name and dims (fastest first) of every tensor.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        tensor_manifest(&self.config())
            .into_iter()
            .map(|(n, d, _)| (n, d.iter().map(|&x| x as u64).collect()))
            .collect()
    }

    fn meta(&self) -> GgufWriter {
        GgufWriter::new()
            .meta("general.architecture", MetaValue::String("llama".into()))
            .meta("llama.block_count", MetaValue::U32(self.layers as u32))
            .meta("llama.embedding_length", MetaValue::U32(self.hidden as u32))
            .meta(
                "llama.attention.head_count",
                MetaValue::U32(self.heads as u32),
            )
            .meta(
                "llama.attention.head_count_kv",
                MetaValue::U32(self.kv_heads as u32),
            )
            .meta("llama.feed_forward_length", MetaValue::U32(self.ffn as u32))
            .meta("llama.context_length", MetaValue::U64(self.context as u64))
            .meta("llama.rope.freq_base", MetaValue::F32(10000.0))
            .meta(
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::F32(1e-5),
            )
    }

    /// An F32 GGUF of this shape; `data(name, n)` gives each tensor's values.
    pub fn gguf_with(&self, data: impl Fn(&str, usize) -> Vec<f32>) -> GgufWriter {
        let mut w = self.meta();
        for (name, dims) in self.tensors() {
            let n = dims.iter().product::<u64>() as usize;
            w.add_tensor(&name, &dims, GgmlType::F32, f32_bytes(&data(&name, n)));
        }
        w
    }

    pub fn gguf(&self) -> GgufWriter {
        self.gguf_with(values)
    }

    /// An F32 GGUF of this shape with some tensors' dims edited (data sized to match).
    pub fn gguf_edited(&self, edit: impl Fn(&str, &mut Vec<u64>)) -> GgufWriter {
        let mut w = self.meta();
        for (name, mut dims) in self.tensors() {
            edit(&name, &mut dims);
            let n = dims.iter().product::<u64>() as usize;
            w.add_tensor(&name, &dims, GgmlType::F32, f32_bytes(&values(&name, n)));
        }
        w
    }

    /// Writes a GGUF of this shape whose tensor data are all holes of a sparse file (zeros
    /// that take no disk space), with `dims` possibly edited per tensor. Returns the file size.
    pub fn write_sparse_gguf(
        &self,
        path: &Path,
        edit: impl Fn(&str, &mut Vec<u64>),
        meta: impl Fn(&mut GgufWriter),
    ) -> u64 {
        let mut w = self.meta();
        meta(&mut w);
        let align = 32u64;
        let mut data_len = 0u64;
        for (name, mut dims) in self.tensors() {
            edit(&name, &mut dims);
            w.add_deferred_tensor(&name, &dims, GgmlType::F32);
            data_len += (dims.iter().product::<u64>() * 4).next_multiple_of(align);
        }
        // The writer emits the header and its padding, then stops at the first deferred
        // tensor: exactly the bytes before the data section.
        let mut head = Vec::new();
        assert!(w.write_to(&mut head).is_err());
        assert_eq!(head.len() as u64 % align, 0);
        let f = std::fs::File::create(path).unwrap();
        use std::io::Write;
        (&f).write_all(&head).unwrap();
        let len = head.len() as u64 + data_len;
        f.set_len(len).unwrap();
        len
    }

    /// config.json of this shape (edit it through the returned value before writing).
    pub fn hf_config(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "num_hidden_layers": self.layers,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.context,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": true,
        })
    }

    /// The safetensors tensors of this shape: Hugging Face name, row-major shape, F32 bytes.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<u64>, Vec<u8>)> {
        self.tensors()
            .into_iter()
            .map(|(name, dims)| {
                let n = dims.iter().product::<u64>() as usize;
                let hf = wick::formats::hf::gguf_to_hf(&name).unwrap();
                let shape = dims.iter().rev().copied().collect();
                (hf, shape, f32_bytes(&values(&name, n)))
            })
            .collect()
    }

    /// A Hugging Face directory `dir` with `config` and a model.safetensors of this shape,
    /// whose header can be edited by `patch` after the offsets are laid out.
    pub fn write_hf(&self, dir: &Path, config: &Value, patch: impl Fn(&mut Value)) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string(config).unwrap(),
        )
        .unwrap();
        write_safetensors(&dir.join("model.safetensors"), &self.hf_tensors(), patch);
    }
}

/// A safetensors file of F32 `tensors`, the header edited by `patch` before writing.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<u64>, Vec<u8>)],
    patch: impl Fn(&mut Value),
) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, bytes) in tensors {
        let a = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [a, data.len()]}),
        );
    }
    let mut header = Value::Object(header);
    patch(&mut header);
    let mut text = serde_json::to_string(&header).unwrap().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// A synthetic golden checkpoint (random-weight Hugging Face directory) by name:
/// llama_gqa, qwen2_bias_tied, qwen3_qknorm.
pub fn golden(name: &str) -> PathBuf {
    crate::common::shared().join("goldens/synthetic").join(name)
}
