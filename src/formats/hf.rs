//! Hugging Face checkpoints: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json` (memory-mapped; headers parsed by the safetensors crate),
//! `generation_config.json` and `tokenizer_config.json`. Tensors are served under GGUF names
//! (see [`gguf_to_hf`]) so one loader builds every architecture.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::weights::{TensorRef, TensorStore};
use crate::quant::GgmlType;

struct Shard {
    mmap: memmap2::Mmap,
    data_start: usize,
    meta: safetensors::tensor::Metadata,
}

/// An opened Hugging Face model directory.
pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub config: Value,
    pub generation_config: Option<Value>,
    pub tokenizer_config: Option<Value>,
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    index: HashMap<String, usize>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Model(format!("{}: {e}", path.display())))
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only; a file truncated underneath us is the same hazard
    // every mmap-based loader (llama.cpp, safetensors) accepts.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    check_safetensors_ranges(&mmap, &path.display().to_string())?;
    let (header, meta) = safetensors::SafeTensors::read_metadata(&mmap)
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    Ok(Shard {
        data_start: 8 + header,
        mmap,
        meta,
    })
}

impl HfCheckpoint {
    pub fn open(dir: &Path) -> Result<HfCheckpoint> {
        let config = read_json(&dir.join("config.json"))?;
        let generation_config = read_json_opt(&dir.join("generation_config.json"))?;
        let tokenizer_config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        let single = dir.join("model.safetensors");
        let sharded = dir.join("model.safetensors.index.json");
        if single.exists() {
            shards.push(open_shard(&single)?);
        } else if sharded.exists() {
            let idx = read_json(&sharded)?;
            let map = idx["weight_map"]
                .as_object()
                .ok_or_else(|| Error::Model(format!("{}: no weight_map", sharded.display())))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            for f in &files {
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(Error::Model(format!(
                        "{}: shard name {f:?} leaves the directory",
                        sharded.display()
                    )));
                }
                shards.push(open_shard(&dir.join(f))?);
            }
        } else {
            return Err(Error::Model(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        }
        for (i, s) in shards.iter().enumerate() {
            for name in s.meta.tensors().keys() {
                if index.insert(name.clone(), i).is_some() {
                    return Err(Error::Model(format!("tensor {name} appears in two shards")));
                }
            }
        }
        Ok(HfCheckpoint {
            dir: dir.to_path_buf(),
            config,
            generation_config,
            tokenizer_config,
            shards,
            index,
        })
    }

    /// A tensor by its Hugging Face name, shaped the GGUF way (dims reversed).
    pub fn hf_tensor(&self, hf_name: &str) -> Option<TensorRef<'_>> {
        let shard = &self.shards[*self.index.get(hf_name)?];
        let info = shard.meta.info(hf_name)?;
        let ggml_type = match info.dtype {
            safetensors::Dtype::F32 => GgmlType::F32,
            safetensors::Dtype::F16 => GgmlType::F16,
            safetensors::Dtype::BF16 => GgmlType::Bf16,
            _ => GgmlType::Other(u32::MAX),
        };
        let (a, b) = info.data_offsets;
        let data = shard.mmap.get(shard.data_start + a..shard.data_start + b)?;
        Some(TensorRef {
            name: hf_name.to_string(),
            dims: info.shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type,
            data,
        })
    }

    /// End-of-sequence ids from generation_config.json (else config.json).
    pub fn eos_ids(&self) -> Vec<u32> {
        let from = |v: &Value| -> Vec<u32> {
            match &v["eos_token_id"] {
                Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u32))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let g = self
            .generation_config
            .as_ref()
            .map(from)
            .unwrap_or_default();
        if g.is_empty() {
            from(&self.config)
        } else {
            g
        }
    }

    pub fn chat_template(&self) -> Option<String> {
        self.tokenizer_config.as_ref()?["chat_template"]
            .as_str()
            .map(str::to_string)
    }
}

/// The Hugging Face name of a GGUF tensor name.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let hf_tail = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_tail}"))
}

impl TensorStore for HfCheckpoint {
    fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let mut t = self.hf_tensor(&gguf_to_hf(name)?)?;
        t.name = name.to_string();
        Some(t)
    }

    fn tokenizer_vocab(&self) -> Option<usize> {
        None
    }
}

/// Bytes per element of a safetensors dtype name (None: unknown or sub-byte).
fn safetensors_dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// Names what is wrong with a safetensors header's tensor ranges before the safetensors crate
/// (whose messages say "invalid offset" or "incomplete metadata" without saying how) checks
/// the rest: a range running backwards or past the end of the data, a range whose length
/// disagrees with the tensor's shape and dtype, and two tensors whose data overlap. A header
/// this cannot read is left to the crate's own errors.
pub fn check_safetensors_ranges(file: &[u8], origin: &str) -> Result<()> {
    let bad = |m: String| Err(Error::Model(format!("{origin}: {m}")));
    let Some(len) = file.get(..8) else {
        return Ok(());
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    // The crate refuses headers over 100 MB itself; don't parse those here.
    if n > 100_000_000 || 8 + n > file.len() as u64 {
        return Ok(());
    }
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&file[8..8 + n as usize])
    else {
        return Ok(());
    };
    let data_len = file.len() as u64 - 8 - n;
    let mut ranges: Vec<(u64, u64, &str)> = Vec::new();
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info["data_offsets"].as_array();
        let (Some(a), Some(b)) = (
            offsets.and_then(|o| o.first()).and_then(Value::as_u64),
            offsets.and_then(|o| o.get(1)).and_then(Value::as_u64),
        ) else {
            continue;
        };
        if b < a {
            return bad(format!(
                "tensor {name:?}: data_offsets [{a}, {b}] end before they start"
            ));
        }
        if b > data_len {
            return bad(format!(
                "tensor {name:?}: data_offsets [{a}, {b}] run past the end of the {data_len}-byte data section"
            ));
        }
        let shape: Option<Vec<u64>> = info["shape"]
            .as_array()
            .and_then(|s| s.iter().map(Value::as_u64).collect());
        let dtype = info["dtype"].as_str().unwrap_or("");
        if let (Some(shape), Some(elem)) = (shape, safetensors_dtype_bytes(dtype)) {
            let need = shape.iter().try_fold(elem, |acc, &d| acc.checked_mul(d));
            if need != Some(b - a) {
                return bad(format!(
                    "tensor {name:?}: shape {shape:?} of {dtype} needs {} bytes but data_offsets [{a}, {b}] hold {}",
                    need.map_or("more than 2^64".to_string(), |v| v.to_string()),
                    b - a
                ));
            }
        }
        ranges.push((a, b, name));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        let ((_, end, first), (start, _, second)) = (w[0], w[1]);
        if end > start {
            return bad(format!(
                "tensors {first:?} and {second:?} overlap: {first:?} ends at data byte {end}, {second:?} starts at {start}"
            ));
        }
    }
    Ok(())
}
