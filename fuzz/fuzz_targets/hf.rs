//! The Hugging Face directory loader's parsers on arbitrary bytes. The first byte picks the
//! file the rest stands for (seeds are that byte followed by a real file):
//! - 0: `config.json` → the model configuration, end-of-sequence ids;
//! - 1: `model.safetensors` → its header, then every tensor's bytes through the header;
//! - 2: `model.safetensors.index.json` → the shard names;
//! - 3: `tokenizer_config.json` / `generation_config.json` → chat template, eos ids.
//!
//! No GPU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick::formats::hf;
use wick::model::config::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(config) = hf::parse_json(text, "config.json") else {
                return;
            };
            let _ = hf::eos_ids(&config, None);
            if let Ok(cfg) = ModelConfig::from_hf(&config) {
                assert!(cfg.n_heads > 0 && cfg.head_dim > 0 && cfg.vocab > 0);
                assert_eq!(cfg.rope_inv_freq.len(), cfg.rope_dim / 2);
                // NaN or infinite frequencies would make every logit garbage: the config
                // must have been refused instead.
                assert!(
                    cfg.rope_inv_freq.iter().all(|f| f.is_finite()),
                    "{:?}",
                    cfg.rope_inv_freq
                );
                let _ = (cfg.q_dim(), cfg.kv_dim(), cfg.attn_scale());
            }
        }
        1 => {
            let Ok(header) = hf::parse_safetensors_header(rest, "model.safetensors") else {
                return;
            };
            for (name, _) in header.meta.tensors() {
                let t = header
                    .tensor(rest, &name)
                    .expect("a tensor the header validated lies inside the file");
                let _ = t.n_elements();
                assert!(t.data.len() <= rest.len());
            }
            assert!(header.tensor(rest, "no such tensor").is_none());
        }
        2 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(files) = hf::parse_index_json(text, "model.safetensors.index.json") {
                for f in files {
                    assert!(!f.contains('/') && !f.contains('\\') && !f.starts_with('.'));
                }
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(v) = hf::parse_json(text, "tokenizer_config.json") else {
                return;
            };
            let _ = hf::chat_template(&v);
            let _ = hf::eos_ids(&serde_json::Value::Null, Some(&v));
        }
    }
});
