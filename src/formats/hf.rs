//! Hugging Face checkpoints: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json` (memory-mapped; headers parsed by the safetensors crate),
//! `generation_config.json` and `tokenizer_config.json`. Tensors are served under GGUF names
//! (see [`gguf_to_hf`]) so one loader builds every architecture.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::store::{TensorRef, TensorStore};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// A safetensors file's parsed header: where the data starts and every tensor's dtype, shape
/// and byte range (validated by the safetensors crate: contiguous, inside the file).
pub struct SafetensorsHeader {
    /// Absolute offset of the data section (8 + the header's JSON length).
    pub data_start: usize,
    pub meta: safetensors::tensor::Metadata,
}

impl SafetensorsHeader {
    /// A tensor of `file` (the bytes this header was parsed from) by its Hugging Face name,
    /// shaped the GGUF way (dims reversed). None: no such tensor, or a range outside `file`.
    pub fn tensor<'a>(&self, file: &'a [u8], name: &str) -> Option<TensorRef<'a>> {
        let info = self.meta.info(name)?;
        let ggml_type = match info.dtype {
            safetensors::Dtype::F32 => GgmlType::F32,
            safetensors::Dtype::F16 => GgmlType::F16,
            safetensors::Dtype::BF16 => GgmlType::Bf16,
            _ => GgmlType::Other(u32::MAX),
        };
        let (a, b) = info.data_offsets;
        let data = file.get(self.data_start.checked_add(a)?..self.data_start.checked_add(b)?)?;
        Some(TensorRef {
            name: name.to_string(),
            dims: info.shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type,
            data,
        })
    }
}

/// Parses the header of a safetensors file held in `file`; `origin` (the path) names it in
/// errors.
pub fn parse_safetensors_header(file: &[u8], origin: &str) -> Result<SafetensorsHeader> {
    check_safetensors_ranges(file, origin)?;
    let (header, meta) = safetensors::SafeTensors::read_metadata(file)
        .map_err(|e| Error::Model(format!("{origin}: {e}")))?;
    Ok(SafetensorsHeader {
        data_start: 8 + header,
        meta,
    })
}

/// Parses a JSON document (`config.json`, `generation_config.json`, `tokenizer_config.json`,
/// the shard index); `origin` (the path) names it in errors.
pub fn parse_json(text: &str, origin: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Model(format!("{origin}: {e}")))
}

/// The shard file names of a `model.safetensors.index.json` (sorted, each once); `origin`
/// names it in errors. A name that would leave the model directory is an error.
pub fn parse_index_json(text: &str, origin: &str) -> Result<Vec<String>> {
    let idx = parse_json(text, origin)?;
    let map = idx["weight_map"]
        .as_object()
        .ok_or_else(|| Error::Model(format!("{origin}: no weight_map")))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    if let Some(f) = files
        .iter()
        .find(|f| f.contains('/') || f.contains('\\') || f.starts_with('.'))
    {
        return Err(Error::Model(format!(
            "{origin}: shard name {f:?} leaves the directory"
        )));
    }
    Ok(files)
}

struct Shard {
    mmap: memmap2::Mmap,
    header: SafetensorsHeader,
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
    parse_json(&text, &path.display().to_string())
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
    let header = parse_safetensors_header(&mmap, &path.display().to_string())?;
    Ok(Shard { mmap, header })
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
            let text = std::fs::read_to_string(&sharded).map_err(|e| Error::io(&sharded, e))?;
            for f in parse_index_json(&text, &sharded.display().to_string())? {
                shards.push(open_shard(&dir.join(f))?);
            }
        } else {
            return Err(Error::Model(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        }
        for (i, s) in shards.iter().enumerate() {
            for name in s.header.meta.tensors().keys() {
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
        shard.header.tensor(&shard.mmap, hf_name)
    }

    /// End-of-sequence ids from generation_config.json (else config.json).
    pub fn eos_ids(&self) -> Vec<u32> {
        eos_ids(&self.config, self.generation_config.as_ref())
    }

    pub fn chat_template(&self) -> Option<String> {
        chat_template(self.tokenizer_config.as_ref()?)
    }
}

/// End-of-sequence ids from a parsed generation_config.json (else config.json).
pub fn eos_ids(config: &Value, generation_config: Option<&Value>) -> Vec<u32> {
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
    let g = generation_config.map(from).unwrap_or_default();
    if g.is_empty() {
        from(config)
    } else {
        g
    }
}

/// The `chat_template` string of a parsed tokenizer_config.json.
pub fn chat_template(tokenizer_config: &Value) -> Option<String> {
    tokenizer_config["chat_template"]
        .as_str()
        .map(str::to_string)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file: header JSON for one F16 tensor of shape [2, 3], then its 12 bytes.
    fn tiny_safetensors() -> Vec<u8> {
        let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}"#;
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend((0..12u8).collect::<Vec<u8>>());
        f
    }

    #[test]
    fn safetensors_header_and_tensor_bytes() {
        let f = tiny_safetensors();
        let h = parse_safetensors_header(&f, "m.safetensors").unwrap();
        let t = h.tensor(&f, "w").unwrap();
        assert_eq!(t.dims, [3, 2]);
        assert_eq!(t.ggml_type, GgmlType::F16);
        assert_eq!(t.data, (0..12u8).collect::<Vec<u8>>());
        assert!(h.tensor(&f, "missing").is_none());
        // Bytes that are not the file the header came from: no tensor rather than a panic.
        assert!(h.tensor(&f[..20], "w").is_none());
        let e = parse_safetensors_header(&f[..f.len() - 1], "m.safetensors")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("model: m.safetensors: "), "{e}");
    }

    #[test]
    fn index_lists_each_shard_once_and_refuses_escapes() {
        let idx = r#"{"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}}"#;
        assert_eq!(
            parse_index_json(idx, "i.json").unwrap(),
            ["s1.safetensors", "s2.safetensors"]
        );
        for bad in ["../x.safetensors", "sub/x.safetensors", "a\\\\b", ".hidden"] {
            let idx = format!(r#"{{"weight_map": {{"a": "{bad}"}}}}"#);
            let e = parse_index_json(&idx, "i.json").unwrap_err().to_string();
            assert!(e.contains("leaves the directory"), "{bad}: {e}");
        }
        let e = parse_index_json("{}", "i.json").unwrap_err().to_string();
        assert!(e.contains("i.json: no weight_map"), "{e}");
        let e = parse_index_json("{", "i.json").unwrap_err().to_string();
        assert!(e.contains("i.json: EOF"), "{e}");
    }

    #[test]
    fn eos_ids_prefer_generation_config() {
        let config = serde_json::json!({"eos_token_id": 2});
        let generation = serde_json::json!({"eos_token_id": [7, 8]});
        assert_eq!(eos_ids(&config, Some(&generation)), [7, 8]);
        assert_eq!(eos_ids(&config, None), [2]);
        assert_eq!(eos_ids(&config, Some(&serde_json::json!({}))), [2]);
    }
}
