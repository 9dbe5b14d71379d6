//! The GGUF reader on arbitrary bytes, then everything a loader reads from an opened file:
//! every metadata getter on every key, the tensor table and data, the model configuration and
//! the tokenizer (with a short encode/decode when one builds). No GPU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick::formats::gguf::GgufFile;
use wick::formats::gguf_writer::GgufWriter;
use wick::formats::tokenizer::{GgufVocab, Tokenizer};
use wick::model::config::ModelConfig;
use wick::model::weights::TensorStore;

fuzz_target!(|data: &[u8]| {
    let f = match GgufFile::from_bytes(data.to_vec()) {
        Ok(f) => f,
        Err(e) => {
            // Every error formats (it names the offset, key or tensor concerned).
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = format!("{f:?}");
    assert!(f.data_offset <= f.file_len() || f.tensors.is_empty());
    for (key, value) in &f.metadata {
        let _ = (
            value.as_u64(),
            value.as_i64(),
            value.as_f64(),
            value.as_bool(),
        );
        let _ = (
            value.as_str(),
            value.as_array(),
            value.type_id(),
            value.type_name(),
        );
        let _ = f.get_u64(key);
        let _ = f.get_i64(key);
        let _ = f.get_f64(key);
        let _ = f.get_bool(key);
        let _ = f.get_str(key);
        let _ = f.get_str_array(key);
        let _ = f.get_i64_array(key);
        let _ = f.get_f32_array(key);
    }
    let _ = f.architecture();
    for t in &f.tensors {
        // Validated at open: the data of every listed tensor lies inside the file.
        let bytes = f.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.size, "tensor {:?}", t.name);
        assert_eq!(f.tensor_bytes(&t.name).map(<[u8]>::len), Some(bytes.len()));
        let _ = t.n_elements();
        let _ = TensorStore::tensor(&f, &t.name);
    }
    let _ = f.tokenizer_vocab();

    let cfg = ModelConfig::from_gguf(&f);
    if let Err(e) = &cfg {
        let _ = e.to_string();
    }
    if let Ok(cfg) = cfg {
        assert!(cfg.n_heads > 0 && cfg.head_dim > 0 && cfg.vocab > 0);
        assert_eq!(cfg.rope_inv_freq.len(), cfg.rope_dim / 2);
        // NaN or infinite frequencies would make every logit garbage: the file must have
        // been refused instead.
        assert!(
            cfg.rope_inv_freq.iter().all(|f| f.is_finite()),
            "{:?}",
            cfg.rope_inv_freq
        );
    }

    if let Ok(vocab) = GgufVocab::from_gguf(&f) {
        // The metadata a vocabulary writes back must read back as the same vocabulary.
        let mut w = GgufWriter::new();
        for (k, v) in vocab.to_metadata() {
            w.add_meta(k, v);
        }
        let back = GgufFile::from_bytes(w.to_bytes()).expect("re-read of written vocabulary");
        assert_eq!(
            GgufVocab::from_gguf(&back).expect("vocabulary read back"),
            vocab
        );
        if let Ok(tok) = Tokenizer::from_gguf_vocab(&vocab) {
            for text in ["Hello world! 123", "<|im_start|>user\n\u{00e9}\u{1f600}"] {
                let ids = tok.encode(text).expect("encode of plain text");
                tok.decode(&ids).expect("decode of encoded ids");
            }
            let n = tok.vocab_size() as u32;
            let _ = tok.decode(&[0, n.saturating_sub(1), n]);
            for id in 0..n.min(64) {
                let _ = tok.token_bytes(id);
                let _ = tok.id_to_token(id);
            }
        }
    }
});
