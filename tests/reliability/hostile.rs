//! Hostile model files beyond the parser (tests/gguf.rs covers malformed GGUF structure and
//! the fuzz targets cover random bytes): files that parse but lie — about where tensor data
//! is, about shapes, vocabulary, context, heads, or a size the device cannot hold. Each must
//! be refused through `Model::load` with an error that names what is wrong, before anything
//! reaches the GPU; never a panic, a huge allocation, or a model that loads and computes
//! garbage.

use std::path::{Path, PathBuf};

use crate::support::Tiny;
use serde_json::json;
use wick::formats::gguf::{GgufError, GgufFile, MetaValue};
use wick::formats::gguf_writer::GgufWriter;
use wick::gpu::GpuOptions;
use wick::{Engine, EngineOptions, Error, LoadOptions, Model, Session};

fn engine() -> &'static Engine {
    static E: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    E.get_or_init(|| Engine::new().expect("GPU"))
}

fn write(dir: &Path, name: &str, w: &GgufWriter) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, w.to_bytes()).unwrap();
    p
}

fn load_on(engine: &Engine, path: &Path) -> wick::Result<Model> {
    Model::load(engine, path, LoadOptions::default())
}

/// Loads a file that must be refused; prints and returns the error.
fn refused(path: &Path) -> Error {
    match load_on(engine(), path) {
        Ok(m) => panic!("{} loaded: {m:?}", path.display()),
        Err(e) => {
            println!("{}: {e}", path.file_name().unwrap().to_string_lossy());
            e
        }
    }
}

fn model_error(e: &Error) -> &str {
    match e {
        Error::Model(m) => m,
        other => panic!("expected a model error, got {other:?}"),
    }
}

/// Position of a tensor info's offset field in a GGUF written by `GgufWriter`.
fn offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap();
    at + pat.len() + 4 + 8 * n_dims + 4
}

/// The builders make loadable models: every refusal below is caused by its one edit.
#[test]
fn unedited_tiny_files_load() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::default();
    let m = load_on(engine(), &write(dir.path(), "ok.gguf", &t.gguf())).unwrap();
    assert_eq!(m.config().vocab, 64);
    let hf = dir.path().join("hf");
    t.write_hf(&hf, &t.hf_config(), |_| {});
    let m = load_on(engine(), &hf).unwrap();
    assert_eq!(m.config().n_heads, 2);
    let sparse = dir.path().join("sparse.gguf");
    t.write_sparse_gguf(&sparse, |_, _| {}, |_| {});
    load_on(engine(), &sparse).unwrap();
}

/// A tensor offset that wraps around to the start of the file (offsets are relative to the
/// data section, so "into the header" is data_offset + offset overflowing u64).
#[test]
fn gguf_tensor_data_pointing_into_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Tiny::default().gguf().to_bytes();
    let data_offset = GgufFile::from_bytes(b.clone()).unwrap().data_offset;
    let at = offset_field(&b, "token_embd.weight", 2);
    b[at..at + 8].copy_from_slice(&0u64.wrapping_sub(data_offset).to_le_bytes());
    let p = dir.path().join("into_header.gguf");
    std::fs::write(&p, b).unwrap();
    let e = refused(&p);
    assert!(
        matches!(&e, Error::Gguf(GgufError::TensorOutOfRange { tensor, .. }) if tensor == "token_embd.weight"),
        "{e:?}"
    );
}

#[test]
fn gguf_tensor_data_overlapping_another_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Tiny::default().gguf().to_bytes();
    // blk.0.attn_q.weight (64 x 64 f32) moved onto the embedding's first bytes.
    let at = offset_field(&b, "blk.0.attn_q.weight", 2);
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    let p = dir.path().join("overlap.gguf");
    std::fs::write(&p, b).unwrap();
    let e = refused(&p);
    match &e {
        Error::Gguf(GgufError::OverlappingTensors { first, second, .. }) => {
            let mut names = [first.as_str(), second.as_str()];
            names.sort();
            assert_eq!(names, ["blk.0.attn_q.weight", "token_embd.weight"]);
        }
        other => panic!("{other:?}"),
    }
}

/// Writes the tiny Hugging Face directory with the safetensors header edited.
fn hf_with_header(dir: &Path, patch: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let t = Tiny::default();
    let p = dir.join("hf");
    t.write_hf(&p, &t.hf_config(), patch);
    p
}

#[test]
fn safetensors_tensors_overlapping() {
    let dir = tempfile::tempdir().unwrap();
    // o_proj (64 x 64, the same size as q_proj) pointed at q_proj's bytes.
    let p = hf_with_header(dir.path(), |h| {
        let q = h["model.layers.0.self_attn.q_proj.weight"]["data_offsets"].clone();
        h["model.layers.0.self_attn.o_proj.weight"]["data_offsets"] = q;
    });
    let e = refused(&p);
    let m = model_error(&e);
    assert!(m.contains("overlap"), "{m}");
    assert!(
        m.contains("model.layers.0.self_attn.q_proj.weight")
            && m.contains("model.layers.0.self_attn.o_proj.weight"),
        "{m}"
    );
}

#[test]
fn safetensors_tensor_past_the_end_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = hf_with_header(dir.path(), |h| {
        // The final norm (64 f32) placed 1 MiB further than the file goes.
        h["model.norm.weight"]["data_offsets"] = json!([1 << 20, (1 << 20) + 256]);
    });
    let e = refused(&p);
    let m = model_error(&e);
    assert!(
        m.contains("\"model.norm.weight\"") && m.contains("run past the end"),
        "{m}"
    );
}

#[test]
fn safetensors_shape_disagreeing_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = hf_with_header(dir.path(), |h| {
        h["model.norm.weight"]["shape"] = json!([128]);
    });
    let e = refused(&p);
    let m = model_error(&e);
    assert!(
        m.contains("\"model.norm.weight\"")
            && m.contains("needs 512 bytes")
            && m.contains("hold 256"),
        "{m}"
    );
}

#[test]
fn tensor_shape_disagreeing_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let w = Tiny::default().gguf_edited(|name, dims| {
        if name == "blk.0.ffn_up.weight" {
            *dims = vec![64, 96];
        }
    });
    let e = refused(&write(dir.path(), "shape.gguf", &w));
    let m = model_error(&e);
    assert!(
        m.contains("blk.0.ffn_up.weight has shape [64, 96], expected [64, 128]"),
        "{m}"
    );
    // The Hugging Face form: config.json promises a wider FFN than the tensors have.
    let t = Tiny::default();
    let mut cfg = t.hf_config();
    cfg["intermediate_size"] = json!(160);
    let hf = dir.path().join("hf");
    t.write_hf(&hf, &cfg, |_| {});
    let e = refused(&hf);
    let m = model_error(&e);
    assert!(
        m.contains("blk.0.ffn_gate.weight has shape [64, 128], expected [64, 160]"),
        "{m}"
    );
}

#[test]
fn vocabulary_larger_than_the_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = (0..100)
        .map(|i| MetaValue::String(format!("t{i}")))
        .collect();
    let w = Tiny::default()
        .gguf()
        .meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
        .meta("tokenizer.ggml.tokens", MetaValue::Array(tokens));
    let e = refused(&write(dir.path(), "vocab.gguf", &w));
    let m = model_error(&e);
    assert!(
        m.contains("the tokenizer has 100 tokens but the embedding only 64 rows"),
        "{m}"
    );
    // Hugging Face: a tokenizer.json of 100 tokens beside a 64-row embedding.
    let t = Tiny::default();
    let hf = dir.path().join("hf");
    t.write_hf(&hf, &t.hf_config(), |_| {});
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..100).map(|i| (format!("t{i}"), json!(i))).collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(hf.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let e = refused(&hf);
    let m = model_error(&e);
    assert!(
        m.contains("tokenizer.json has 100 tokens but the embedding only 64 rows"),
        "{m}"
    );
}

#[test]
fn context_length_of_2_pow_40() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Tiny::default().gguf();
    w.set_meta("llama.context_length", MetaValue::U64(1 << 40));
    let e = refused(&write(dir.path(), "ctx.gguf", &w));
    let m = model_error(&e);
    assert!(
        m.contains("context_length 1099511627776 exceeds wick's limit of 16777216"),
        "{m}"
    );
    let t = Tiny::default();
    let mut cfg = t.hf_config();
    cfg["max_position_embeddings"] = json!(1u64 << 40);
    let hf = dir.path().join("hf");
    t.write_hf(&hf, &cfg, |_| {});
    let m = model_error(&refused(&hf)).to_string();
    assert!(m.contains("context_length 1099511627776 exceeds"), "{m}");
    // Asking a sane model for such a context, at load or per session.
    let ok = write(dir.path(), "ok.gguf", &Tiny::default().gguf());
    let e = Model::load(
        engine(),
        &ok,
        LoadOptions {
            ctx: Some(1 << 40),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("--ctx 1099511627776 exceeds the model's context length 256")),
        "{e}"
    );
    let model = load_on(engine(), &ok).unwrap();
    let Err(e) = Session::with_context(&model, 1 << 40) else {
        panic!("a session of 2^40 tokens was created");
    };
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("a context of 1099511627776 tokens exceeds the model's context length 256")),
        "{e}"
    );
}

/// Edits one metadata value of the tiny GGUF and returns the load error's message.
fn gguf_meta_error(key: &str, value: MetaValue) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Tiny::default().gguf();
    w.set_meta(key, value);
    model_error(&refused(&write(dir.path(), "meta.gguf", &w))).to_string()
}

/// Edits config.json of the tiny Hugging Face directory and returns the load error's message.
fn hf_config_error(key: &str, value: serde_json::Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::default();
    let mut cfg = t.hf_config();
    cfg[key] = value;
    let hf = dir.path().join("hf");
    t.write_hf(&hf, &cfg, |_| {});
    model_error(&refused(&hf)).to_string()
}

#[test]
fn zero_attention_heads() {
    let m = gguf_meta_error("llama.attention.head_count", MetaValue::U32(0));
    assert!(m.contains("head_count is 0"), "{m}");
    let m = hf_config_error("num_attention_heads", json!(0));
    assert!(m.contains("head_count is 0"), "{m}");
}

#[test]
fn zero_kv_heads() {
    let m = gguf_meta_error("llama.attention.head_count_kv", MetaValue::U32(0));
    assert!(m.contains("head_count_kv is 0"), "{m}");
    let m = hf_config_error("num_key_value_heads", json!(0));
    assert!(m.contains("head_count_kv is 0"), "{m}");
}

#[test]
fn heads_not_dividing_the_width() {
    // 64 / 3: no head size, and no explicit one to fall back on.
    let m = gguf_meta_error("llama.attention.head_count", MetaValue::U32(3));
    assert!(
        m.contains("llama.embedding_length 64 is not a multiple of llama.attention.head_count 3"),
        "{m}"
    );
    let m = hf_config_error("num_attention_heads", json!(3));
    assert!(
        m.contains("hidden_size 64 is not a multiple of num_attention_heads 3"),
        "{m}"
    );
    // KV heads that do not divide the query heads.
    let m = gguf_meta_error("llama.attention.head_count_kv", MetaValue::U32(3));
    assert!(
        m.contains("head_count 2 is not a multiple of head_count_kv 3"),
        "{m}"
    );
}

/// Sizes that would make the loader allocate (a frequency table of 2^40 entries) or search
/// (2^40 blocks of tensors) before it noticed anything wrong.
#[test]
fn absurd_head_size_and_block_count() {
    let m = gguf_meta_error("llama.attention.key_length", MetaValue::U64(1 << 40));
    assert!(
        m.contains("head_dim 1099511627776 must be even and at most 256"),
        "{m}"
    );
    let m = gguf_meta_error("llama.rope.dimension_count", MetaValue::U64(1 << 40));
    assert!(m.contains("rope dimension 1099511627776"), "{m}");
    let m = hf_config_error("head_dim", json!(1u64 << 40));
    assert!(m.contains("head_dim 1099511627776"), "{m}");
    let m = gguf_meta_error("llama.block_count", MetaValue::U64(1 << 40));
    assert!(
        m.contains("block_count 1099511627776 exceeds wick's limit of 4096"),
        "{m}"
    );
    // A plausible count with the blocks missing: a bounded list, not 4096 x 9 lines.
    let m = gguf_meta_error("llama.block_count", MetaValue::U32(4000));
    assert!(m.contains("missing tensor blk.1.attn_norm.weight"), "{m}");
    assert!(m.len() < 2000, "{} bytes of message", m.len());
}

#[test]
fn rope_scaling_that_makes_frequencies_infinite() {
    let m = hf_config_error(
        "rope_scaling",
        json!({"rope_type": "linear", "factor": 0.0}),
    );
    assert!(
        m.contains("RoPE frequencies are not 16 positive finite"),
        "{m}"
    );
}

/// An embedding larger than the device's memory (the adapter's own figure), declared by a
/// sparse file: refused by name before any GPU buffer exists.
#[test]
fn embedding_larger_than_the_device() {
    let usage = engine().gpu().memory_usage();
    let Some(budget) = usage.budget else {
        println!("this backend reports no device memory: covered by the budget test below");
        return;
    };
    // Rows wide enough that the vocabulary stays under wick's 2^24 limit; heads of 32.
    let mut hidden = 64usize;
    while (budget / (hidden as u64 * 4)) >= (1 << 23) {
        hidden *= 2;
    }
    let vocab = budget / (hidden as u64 * 4) + 1;
    let t = Tiny {
        hidden,
        heads: hidden / 32,
        ..Tiny::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge_embedding.gguf");
    let len = t.write_sparse_gguf(
        &p,
        |name, dims| {
            if name == "token_embd.weight" {
                dims[1] = vocab;
            }
        },
        |_| {},
    );
    assert!(len > budget);
    let e = refused(&p);
    match &e {
        Error::OutOfMemory(m) => {
            assert!(m.contains("token_embd.weight"), "{m}");
            assert!(m.contains(&format!("{vocab} x {hidden} f32")), "{m}");
            assert!(m.contains("does not fit"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing was reserved (nor, since the check comes first, allocated).
    let after = engine().gpu().memory_usage();
    assert!(after.reserved <= budget);
}

/// The same against a budget set below the device's memory (so it runs identically on every
/// adapter), then a model that fits loads on the same engine; and a row wider than one
/// storage binding.
#[test]
fn embedding_larger_than_the_memory_budget() {
    let small = Engine::with_options(EngineOptions {
        gpu: GpuOptions {
            memory_budget: Some(1 << 20),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = Tiny {
        vocab: 8192,
        ..Tiny::default()
    };
    let p = write(dir.path(), "big.gguf", &big.gguf());
    let e = load_on(&small, &p).unwrap_err();
    println!("{e}");
    assert!(
        matches!(&e, Error::OutOfMemory(m) if m.contains("token_embd.weight (8192 x 64 f32) needs 2097156 bytes") && m.contains("does not fit")),
        "{e}"
    );
    assert_eq!(small.gpu().memory_usage().reserved, 0);
    let ok = load_on(
        &small,
        &write(dir.path(), "ok.gguf", &Tiny::default().gguf()),
    )
    .unwrap();
    let usage = small.gpu().memory_usage();
    assert_eq!(usage.models, 1);
    assert_eq!(usage.model_bytes, ok.weights().total_bytes());
    drop(ok);
    assert_eq!(small.gpu().memory_usage().reserved, 0);

    let narrow = Engine::with_options(EngineOptions {
        gpu: GpuOptions {
            max_binding_override: Some(128),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let e = load_on(&narrow, &p).unwrap_err();
    println!("{e}");
    assert!(
        matches!(&e, Error::Model(m) if m.contains("token_embd.weight: one row (256 bytes) does not fit the device's 128-byte binding limit")),
        "{e}"
    );
}

/// NaN and infinite weights are values, not a malformed file: the model loads (what it
/// computes is the runtime's to report).
#[test]
fn nan_and_inf_weights_load() {
    let dir = tempfile::tempdir().unwrap();
    let w = Tiny::default().gguf_with(|name, n| {
        let mut v = crate::support::values(name, n);
        match name {
            "token_embd.weight" => v[5] = f32::NAN,
            "blk.0.attn_q.weight" => v[0] = f32::INFINITY,
            "blk.0.ffn_norm.weight" => v[3] = f32::NEG_INFINITY,
            _ => {}
        }
        v
    });
    let m = load_on(engine(), &write(dir.path(), "nan.gguf", &w)).unwrap();
    Session::new(&m).unwrap();
}
