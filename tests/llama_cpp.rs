//! GGUF files wick writes load in llama.cpp and give the same perplexity.
//!
//! - `written_names_are_llama_cpp_names` (no GPU, no llama.cpp): every enum-like metadata value
//!   wick writes (architecture, file type, RoPE scaling type, tokenizer model, pre-tokenizer)
//!   is one llama.cpp b10587 accepts, checked against llama.cpp's own lists copied below, and
//!   the spellings wick used to write are still read.
//! - `llama_cpp_perplexity_matches_wick` (needs llama.cpp's `llama-perplexity`, built CPU-only
//!   by scripts/build-llama-cpu.sh, at `$WICK_LLAMA_PERPLEXITY`): `wick quantize` of a random
//!   Llama checkpoint (Q/K rows permuted on export; to q4_0) and a random Qwen2 one (q/k/v
//!   biases, tied head; to q8_0), each with a GPT-2-style byte-level BPE tokenizer.json trained
//!   here on a generated text; then `llama-perplexity -c 128` against `wick perplexity --ctx
//!   128` (llama.cpp's chunked method) on the same file and text, which must agree to 0.1%,
//!   and wick's perplexity of the GGUF against that of the checkpoint itself. Without the
//!   binary the test says why and passes, unless `WICK_REQUIRE_LLAMA=1` (CI): then it fails.

pub mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::tensor::TensorView;
use serde_json::json;
use wick::formats::gguf::{GgufFile, MetaValue};
use wick::formats::gguf_writer::GgufWriter;
use wick::formats::tokenizer::{llama_cpp_pre_name, GgufVocab, PreTokenizerKind};
use wick::model::config::Arch;
use wick::model::export::{gguf_architecture, quantize_to_gguf};
use wick::model::quant_mix::{QuantMix, QuantTarget};
use wick::quant::{GgmlType, QUANTIZE_TARGETS};

// ---- llama.cpp b10587's accepted names, read from its source ----

/// What llama.cpp b10587 accepts, read from the source tarball in the shared folder
/// (`peers/llama.cpp-b10587-src.tar.xz`) rather than copied into this repository.
struct LlamaCppNames {
    /// `tokenizer.ggml.pre` values of the `tokenizer_pre == "..."` chain in
    /// src/llama-vocab.cpp (anything else is "unknown pre-tokenizer type").
    pre: Vec<String>,
    /// `tokenizer.ggml.model` values (`tokenizer_model == "..."`, same file).
    tokenizer_models: Vec<String>,
    /// `general.architecture` values (`{ LLM_ARCH_..., "name" }` in src/llama-arch.cpp).
    architectures: Vec<String>,
    /// `<arch>.rope.scaling.type` values (`{ LLAMA_ROPE_SCALING_TYPE_..., "name" }` in
    /// src/llama-model.cpp).
    rope_scaling: Vec<String>,
    /// `llama_ftype` names and values (`LLAMA_FTYPE_<NAME> = <value>` in include/llama.h).
    ftypes: Vec<(String, u32)>,
}

/// The llama.cpp source tarball, or None (with the reason printed) when the name check
/// should be skipped; panics instead when `WICK_REQUIRE_LLAMA=1`.
fn llama_cpp_tarball() -> Option<PathBuf> {
    let name = "peers/llama.cpp-b10587-src.tar.xz";
    let found = std::env::var_os("WICK_LLAMA_TARBALL")
        .map(PathBuf::from)
        .into_iter()
        .chain(common::shared_dir().map(|d| d.join(name)))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("no llama.cpp source tarball ({name} in WICK_SHARED or ../shared; or WICK_LLAMA_TARBALL)");
        if std::env::var("WICK_REQUIRE_LLAMA").is_ok_and(|v| v == "1") {
            panic!("WICK_REQUIRE_LLAMA=1 but {msg}");
        }
        eprintln!("skipping the llama.cpp name check: {msg}");
    }
    found
}

/// The quoted strings following `marker` on each line of `text` that contains it.
fn quoted_after(text: &str, marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let Some(open) = rest.find('"') else { break };
            if !rest[..open].trim().is_empty() {
                break;
            }
            let Some(len) = rest[open + 1..].find('"') else {
                break;
            };
            out.push(rest[open + 1..open + 1 + len].to_string());
            rest = &rest[open + 1 + len + 1..];
        }
    }
    out
}

impl LlamaCppNames {
    fn read(tarball: &Path) -> LlamaCppNames {
        let file = |path: &str| run(Command::new("tar").arg("-xJOf").arg(tarball).arg(path));
        let vocab = file("llama.cpp/src/llama-vocab.cpp");
        let arch = file("llama.cpp/src/llama-arch.cpp");
        let model = file("llama.cpp/src/llama-model.cpp");
        let header = file("llama.cpp/include/llama.h");
        let names = LlamaCppNames {
            pre: quoted_after(&vocab, "tokenizer_pre =="),
            tokenizer_models: quoted_after(&vocab, "tokenizer_model =="),
            architectures: arch
                .lines()
                .filter_map(|l| {
                    let l = l.trim().strip_prefix("{ LLM_ARCH_")?;
                    Some(l.split('"').nth(1)?.to_string())
                })
                .collect(),
            rope_scaling: model
                .lines()
                .filter_map(|l| {
                    let l = l.trim().strip_prefix("{ LLAMA_ROPE_SCALING_TYPE_")?;
                    Some(l.split('"').nth(1)?.to_string())
                })
                .collect(),
            ftypes: header
                .lines()
                .filter_map(|l| {
                    let l = l.trim().strip_prefix("LLAMA_FTYPE_")?;
                    let (name, value) = l.split_once('=')?;
                    let value = value.trim().split(|c: char| !c.is_ascii_digit()).next()?;
                    Some((name.trim().to_string(), value.parse().ok()?))
                })
                .collect(),
        };
        // The parse found the lists (a changed source layout must fail loudly, not pass).
        assert!(
            names.pre.len() > 50 && names.pre.contains(&"llama-bpe".into()),
            "{:?}",
            names.pre
        );
        assert!(
            names.tokenizer_models.contains(&"gpt2".into()),
            "{:?}",
            names.tokenizer_models
        );
        assert!(names.architectures.len() > 50 && names.architectures.contains(&"qwen3".into()));
        assert!(
            names.rope_scaling.contains(&"yarn".into()),
            "{:?}",
            names.rope_scaling
        );
        assert!(
            names.ftypes.contains(&("MOSTLY_Q4_K_M".into(), 15)),
            "{:?}",
            names.ftypes
        );
        names
    }

    fn has_pre(&self, s: &str) -> bool {
        self.pre.iter().any(|p| p == s)
    }
}

// ---- deterministic inputs ----

/// splitmix64 -> uniform in [-1, 1).
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// A generated English-like text of `words` words (made-up words from syllables, sentences,
/// some numbers, paragraphs), the same for the same seed.
fn generated_text(seed: u64, words: usize) -> String {
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "ter", "an", "su", "ri", "ve", "dor", "pen", "ul", "sa", "no", "tri",
        "gal", "be", "os", "fen", "ma", "ish",
    ];
    let mut s = seed;
    let mut unit = move || (uniform(&mut s) + 1.0) * 0.5;
    let mut pick = move |n: usize| (unit() * n as f32) as usize % n;
    // A lexicon of 150 words with a skewed (Zipf-like) choice, so BPE finds merges.
    let lexicon: Vec<String> = (0..150)
        .map(|_| (0..1 + pick(3)).map(|_| SYL[pick(SYL.len())]).collect())
        .collect();
    let mut out = String::new();
    let mut in_sentence = 0;
    for i in 0..words {
        let w = if pick(12) == 0 {
            format!("{}", 1 + pick(2000))
        } else {
            // The cube of a uniform index: a few words common, most rare.
            let r = pick(1000) as f32 / 1000.0;
            lexicon[((r * r * r) * lexicon.len() as f32) as usize].clone()
        };
        if in_sentence == 0 {
            let mut c = w.chars();
            let first = c.next().unwrap().to_ascii_uppercase();
            out.push(first);
            out.extend(c);
        } else {
            out.push_str(&w);
        }
        in_sentence += 1;
        if in_sentence > 4 + pick(9) {
            out.push_str(if pick(5) == 0 { "?" } else { "." });
            in_sentence = 0;
            out.push(if pick(6) == 0 { '\n' } else { ' ' });
        } else if i + 1 < words {
            out.push_str(if pick(10) == 0 { ", " } else { " " });
        }
    }
    out.push('\n');
    out
}

/// Trains a GPT-2-style byte-level BPE (`ByteLevel` pre-tokenizer with the GPT-2 regex, no
/// prefix space) of `vocab` ids on `text` with the tokenizers crate and writes it as
/// `dir/tokenizer.json`, with a `tokenizer_config.json` naming `<|endoftext|>` as BOS/EOS;
/// with `add_bos` both files say BOS is added.
fn write_tokenizer(dir: &Path, text: &str, vocab: usize, add_bos: bool) {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{
        AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
        TokenizerBuilder,
    };
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
        .build();
    let mut tok = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .unwrap();
    tok.train(&mut trainer, text.lines()).unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    if add_bos {
        // So wick reading the directory adds BOS as the GGUF's add_bos_token says.
        let bos = TemplateProcessing::builder()
            .try_single("<|endoftext|> $A")
            .unwrap()
            .special_tokens(vec![("<|endoftext|>", eot)])
            .build()
            .unwrap();
        tok.with_post_processor(Some(bos));
    }
    std::fs::create_dir_all(dir).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "add_bos_token": add_bos})
        .to_string(),
    )
    .unwrap();
}

/// Shapes of the test checkpoints: tiny, so lavapipe and llama.cpp's CPU backend take
/// seconds; rows of 128 are whole blocks of every type wick writes (Q4_K falls back).
const HIDDEN: usize = 128;
const FFN: usize = 256;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 32;
const LAYERS: usize = 2;
const VOCAB: usize = 512;
const CONTEXT: usize = 256;

/// Writes a random Hugging Face checkpoint (`LlamaForCausalLM` or `Qwen2ForCausalLM`, the
/// latter with q/k/v biases and a tied LM head) to `dir`. The attention and FFN outputs are
/// scaled down so the residual stream stays near the embedding, and logits are of order one:
/// a calm network whose perplexity (several hundred) reacts to its weights without
/// amplifying rounding noise into chaos.
fn write_checkpoint(dir: &Path, arch: Arch, seed: u64, extra: serde_json::Value) {
    let qwen = arch == Arch::Qwen2;
    let mut s = seed;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let mut st = s;
        s = s.wrapping_add(0x1234_5678);
        let bytes = (0..n)
            .flat_map(|_| (offset + scale * uniform(&mut st)).to_le_bytes())
            .collect();
        tensors.push((name, shape, bytes));
    };
    // Uniform with variance 1/cols: each output has the variance of one input.
    let unit = |cols: usize| (3.0 / cols as f32).sqrt();
    let (qd, kvd) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    // A tied LM head reads the embedding: scaled so logits are of order one, with the
    // layer outputs scaled alike so the residual stream keeps the same proportions.
    let emb = if qwen { unit(HIDDEN) } else { 1.0 };
    add(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        emb,
        0.0,
    );
    for l in 0..LAYERS {
        let p = |t: &str| format!("model.layers.{l}.{t}");
        // q and k larger, so attention is peaked and depends on position (RoPE).
        add(
            p("self_attn.q_proj.weight"),
            vec![qd, HIDDEN],
            2.0 * unit(HIDDEN),
            0.0,
        );
        add(
            p("self_attn.k_proj.weight"),
            vec![kvd, HIDDEN],
            2.0 * unit(HIDDEN),
            0.0,
        );
        add(
            p("self_attn.v_proj.weight"),
            vec![kvd, HIDDEN],
            unit(HIDDEN),
            0.0,
        );
        add(
            p("self_attn.o_proj.weight"),
            vec![HIDDEN, qd],
            0.5 * unit(qd) * emb,
            0.0,
        );
        add(
            p("mlp.gate_proj.weight"),
            vec![FFN, HIDDEN],
            unit(HIDDEN),
            0.0,
        );
        add(
            p("mlp.up_proj.weight"),
            vec![FFN, HIDDEN],
            unit(HIDDEN),
            0.0,
        );
        add(
            p("mlp.down_proj.weight"),
            vec![HIDDEN, FFN],
            0.5 * unit(FFN) * emb,
            0.0,
        );
        if qwen {
            add(p("self_attn.q_proj.bias"), vec![qd], 0.5, 0.0);
            add(p("self_attn.k_proj.bias"), vec![kvd], 0.5, 0.0);
            add(p("self_attn.v_proj.bias"), vec![kvd], 0.2, 0.0);
        }
        add(p("input_layernorm.weight"), vec![HIDDEN], 0.1, 1.0);
        add(p("post_attention_layernorm.weight"), vec![HIDDEN], 0.1, 1.0);
    }
    add("model.norm.weight".into(), vec![HIDDEN], 0.1, 1.0);
    if !qwen {
        add(
            "lm_head.weight".into(),
            vec![VOCAB, HIDDEN],
            unit(HIDDEN),
            0.0,
        );
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            let v = TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap();
            (n.clone(), v)
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let mut config = json!({
        "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": qwen,
    });
    if qwen {
        config["use_sliding_window"] = json!(false);
    } else {
        config["head_dim"] = json!(HEAD_DIM);
    }
    for (k, v) in extra.as_object().unwrap() {
        config[k.as_str()] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn meta_str<'a>(g: &'a GgufFile, key: &str) -> &'a str {
    g.get_str(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{key} missing"))
}

// ---- names ----

/// Every target `wick quantize --type` accepts.
fn all_targets() -> Vec<QuantTarget> {
    QUANTIZE_TARGETS
        .into_iter()
        .map(QuantTarget::from)
        .chain(QuantMix::ALL.into_iter().map(QuantTarget::from))
        .collect()
}

/// Every enum-like value wick writes is one llama.cpp b10587 accepts, and wick still reads
/// the spellings it wrote before.
#[test]
fn written_names_are_llama_cpp_names() {
    let Some(tarball) = llama_cpp_tarball() else {
        return;
    };
    let names = LlamaCppNames::read(&tarball);
    let has = |list: &[String], s: &str| list.iter().any(|v| v == s);
    // Pre-tokenizers: every name wick reads is written under a llama.cpp name.
    for &name in PreTokenizerKind::SUPPORTED {
        let written = llama_cpp_pre_name(name);
        assert!(
            names.has_pre(written),
            "wick would write tokenizer.ggml.pre {written:?} (read as {name:?}), which llama.cpp rejects"
        );
        // ... and reads it back as the same pre-tokenizer.
        assert_eq!(
            PreTokenizerKind::from_gguf_pre(Some(written)).unwrap(),
            PreTokenizerKind::from_gguf_pre(Some(name)).unwrap()
        );
    }
    // The old spelling is still read.
    assert_eq!(
        PreTokenizerKind::from_gguf_pre(Some("gpt2")).unwrap(),
        PreTokenizerKind::Gpt2
    );
    assert_eq!(llama_cpp_pre_name("gpt2"), "gpt-2");

    // Architectures and file types.
    for arch in [Arch::Llama, Arch::Mistral, Arch::Qwen2, Arch::Qwen3] {
        let name = gguf_architecture(arch);
        assert!(has(&names.architectures, name), "{arch:?} -> {name}");
    }
    // Every target `wick quantize --type` takes, single types and mixes, is written under
    // the llama.cpp file type of the same name (a single K-quant as its "_S" type: all its
    // matrices are that type; Q6_K has only one).
    for target in all_targets() {
        let ft = target.file_type();
        let (name, _) = names
            .ftypes
            .iter()
            .find(|(_, v)| *v == ft)
            .unwrap_or_else(|| panic!("{} -> file type {ft}, not llama.cpp's", target.name()));
        let mut want = target.name().to_ascii_uppercase();
        if matches!(want.as_str(), "Q4_K" | "Q5_K") {
            want.push_str("_S");
        }
        let want = if want == "F32" {
            "ALL_F32".to_string()
        } else {
            format!("MOSTLY_{want}")
        };
        assert_eq!(name, &want, "{} -> file type {ft}", target.name());
    }

    // Tokenizer.json pre-tokenizers wick recognises -> the names it writes.
    let tmp = tempfile::tempdir().unwrap();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
    };
    let cases = [
        (byte_level.clone(), "gpt-2"),
        (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level.clone()]}),
            "smollm",
        ),
        (split(wick::formats::tokenizer::LLAMA3_REGEX), "llama-bpe"),
        (split(wick::formats::tokenizer::QWEN2_REGEX), "qwen2"),
    ];
    for (pre, want) in cases {
        let path = tmp.path().join("tokenizer.json");
        let j = json!({"added_tokens": [], "pre_tokenizer": pre,
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}});
        std::fs::write(&path, j.to_string()).unwrap();
        let v = GgufVocab::from_tokenizer_json(&path, None).unwrap();
        assert_eq!(v.pre.as_deref(), Some(want));
        let meta = v.to_metadata();
        let get = |k: &str| match meta.iter().find(|(key, _)| key == k) {
            Some((_, MetaValue::String(s))) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert!(names.has_pre(&get("tokenizer.ggml.pre")));
        assert!(has(&names.tokenizer_models, &get("tokenizer.ggml.model")));
    }

    // A whole `wick quantize` output: a Llama checkpoint with linear RoPE scaling and a
    // GPT-2-style tokenizer.json, for every type wick writes.
    let ck = tmp.path().join("llama");
    write_checkpoint(
        &ck,
        Arch::Llama,
        7,
        json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    );
    write_tokenizer(&ck, &generated_text(7, 2000), 300, true);
    for t in all_targets() {
        let out = tmp.path().join(format!("m-{}.gguf", t.name()));
        quantize_to_gguf(&ck, &out, t).unwrap();
        let g = GgufFile::open(&out).unwrap();
        let arch = meta_str(&g, "general.architecture");
        assert!(has(&names.architectures, arch), "{arch}");
        let ft = g.get_u64("general.file_type").unwrap().unwrap() as u32;
        assert_eq!(ft, t.file_type());
        let scaling = meta_str(&g, &format!("{arch}.rope.scaling.type"));
        assert!(has(&names.rope_scaling, scaling), "{scaling}");
        let model = meta_str(&g, "tokenizer.ggml.model");
        assert!(has(&names.tokenizer_models, model), "{model}");
        assert_eq!(meta_str(&g, "tokenizer.ggml.pre"), "gpt-2");
    }

    // A GGUF an older wick wrote (`gpt2`) is read, and re-quantising it writes `gpt-2`.
    let old = tmp.path().join("old.gguf");
    let src = GgufFile::open(&tmp.path().join("m-F32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        let v = if k == "tokenizer.ggml.pre" {
            MetaValue::String("gpt2".into())
        } else {
            v.clone()
        };
        w.add_meta(k.clone(), v);
    }
    for t in &src.tensors {
        let data = src.tensor_data(t).to_vec();
        w.add_tensor(t.name.clone(), &t.dims, t.ggml_type, data);
    }
    w.write(&old).unwrap();
    let old_vocab = GgufVocab::from_gguf(&GgufFile::open(&old).unwrap()).unwrap();
    assert_eq!(old_vocab.pre.as_deref(), Some("gpt2"));
    wick::formats::tokenizer::Tokenizer::from_gguf_vocab(&old_vocab).unwrap();
    let re = tmp.path().join("re.gguf");
    quantize_to_gguf(&old, &re, GgmlType::Q8_0).unwrap();
    assert_eq!(
        meta_str(&GgufFile::open(&re).unwrap(), "tokenizer.ggml.pre"),
        "gpt-2"
    );
}

// ---- llama.cpp itself ----

/// The llama-perplexity binary, or None (with the reason printed) when the test should be
/// skipped; panics instead when `WICK_REQUIRE_LLAMA=1`.
fn llama_perplexity() -> Option<PathBuf> {
    let require = std::env::var("WICK_REQUIRE_LLAMA").is_ok_and(|v| v == "1");
    let why = match std::env::var_os("WICK_LLAMA_PERPLEXITY") {
        Some(p) if Path::new(&p).is_file() => return Some(PathBuf::from(p)),
        Some(p) => format!(
            "WICK_LLAMA_PERPLEXITY={} is not a file",
            p.to_string_lossy()
        ),
        None => "WICK_LLAMA_PERPLEXITY is not set".to_string(),
    };
    let msg = format!(
        "{why}: build llama.cpp's llama-perplexity with `bash scripts/build-llama-cpu.sh` and export WICK_LLAMA_PERPLEXITY=<the path it prints>"
    );
    if require {
        panic!("WICK_REQUIRE_LLAMA=1 but {msg}");
    }
    eprintln!("skipping the llama.cpp comparison: {msg}");
    None
}

/// Runs a command, panicking with its output when it fails; returns stdout + stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The number after `key` in `text`.
fn number_after(text: &str, key: &str) -> f64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in:\n{text}"))
        + key.len();
    let num: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("no number after {key:?} in:\n{text}"))
}

/// Chunk size of the comparison (llama-perplexity `-c`, wick `--ctx`).
const N_CTX: usize = 128;

/// `wick perplexity` (default method, `--ctx N_CTX`) of `model` (a GGUF, or a checkpoint
/// directory with `extra` such as `--quantize q8_0`) on `text`: (perplexity, chunks).
fn wick_perplexity(model: &Path, extra: &[&str], text: &Path) -> (f64, usize) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["perplexity", "-m", model.to_str().unwrap()])
        .args(["-f", text.to_str().unwrap(), "--ctx", &N_CTX.to_string()])
        .args(extra));
    assert!(out.contains("llama.cpp chunked method"), "{out}");
    (
        number_after(&out, "perplexity "),
        number_after(&out, "chunked method: ") as usize,
    )
}

/// `llama-perplexity -c N_CTX` of `gguf` on `text`: (final estimate, chunks).
fn llama_cpp_perplexity(llama: &Path, gguf: &Path, text: &Path) -> (f64, usize) {
    // llama.cpp's logger prints from a thread that exit() may cut short, losing the last
    // lines (llama.cpp issue #22142): run it again when the final estimate is missing.
    let final_key = "Final estimate: PPL = ";
    let mut out = String::new();
    for _ in 0..5 {
        out = run(Command::new(llama)
            .args(["-m", gguf.to_str().unwrap(), "-f", text.to_str().unwrap()])
            .args(["-c", &N_CTX.to_string(), "-t", "2", "--no-warmup"]));
        if out.contains(final_key) {
            break;
        }
    }
    (
        number_after(&out, final_key),
        number_after(&out, "calculating perplexity over ") as usize,
    )
}

/// The cases run by default: each architecture to one quantised type (q4_0 and q8_0 both
/// covered; `WICK_LLAMA_TYPES=f32,f16,q8_0,q4_0` runs every listed type on both).
fn cases() -> Vec<(Arch, GgmlType)> {
    match std::env::var("WICK_LLAMA_TYPES") {
        Ok(list) => {
            let types: Vec<GgmlType> = list
                .split(',')
                .map(|t| wick::quant::parse_quant_type(t).unwrap())
                .collect();
            [Arch::Llama, Arch::Qwen2]
                .into_iter()
                .flat_map(|a| types.iter().map(move |&t| (a, t)))
                .collect()
        }
        Err(_) => vec![(Arch::Llama, GgmlType::Q4_0), (Arch::Qwen2, GgmlType::Q8_0)],
    }
}

/// llama.cpp loads what `wick quantize` writes and reports wick's perplexity for it: per case,
/// `llama-perplexity -c 128` and `wick perplexity --ctx 128` on the same GGUF and text agree
/// to 0.1% (measured: f32/f16 within 0.02%, q8_0/q4_0 within 0.02% on this 15k-token text,
/// up to 0.09% on a 4k-token one, llama.cpp quantising activations to Q8_0 for both). The
/// GGUF is also checked to be the checkpoint's model: wick's perplexity of the checkpoint
/// directory quantised on load (the same blocks, Q/K rows as Hugging Face stores them) equals
/// its perplexity of the GGUF, which un-permuted Q/K rows would break.
#[test]
fn llama_cpp_perplexity_matches_wick() {
    let Some(llama) = llama_perplexity() else {
        return;
    };
    let seed = common::seed();
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, words: usize| {
        let path = tmp.path().join(name);
        std::fs::write(&path, generated_text(seed, words)).unwrap();
        path
    };
    // About 15k tokens (118 chunks of 128), and a 1.7k-token one (13 chunks) for the
    // layout check, which compares wick with itself.
    let text = write("text.txt", 10400);
    let short = write("short.txt", 1200);
    let mut failures = Vec::new();
    for (arch, t) in cases() {
        // BOS added for Llama (each chunk starts with it), not for Qwen2.
        let add_bos = arch == Arch::Llama;
        let ck = tmp.path().join(format!("{arch:?}"));
        if !ck.exists() {
            write_checkpoint(&ck, arch, seed ^ arch as u64, json!({}));
            write_tokenizer(
                &ck,
                &std::fs::read_to_string(&text).unwrap(),
                VOCAB - 12,
                add_bos,
            );
        }
        let gguf = tmp.path().join(format!("{arch:?}-{}.gguf", t.name()));
        let q = run(Command::new(env!("CARGO_BIN_EXE_wick")).args([
            "quantize",
            ck.to_str().unwrap(),
            gguf.to_str().unwrap(),
            "--type",
            &t.name(),
        ]));
        assert_eq!(q.contains("Q/K rows permuted"), arch == Arch::Llama, "{q}");

        let (w, wc) = wick_perplexity(&gguf, &[], &text);
        let (l, lc) = llama_cpp_perplexity(&llama, &gguf, &text);
        let rel = (w - l).abs() / l;
        eprintln!(
            "{arch:?} {}: wick {w:.4} ({wc} chunks), llama.cpp {l:.4} ({lc} chunks), relative difference {:.4}%",
            t.name(),
            rel * 100.0
        );
        assert_eq!(wc, lc, "chunk counts differ: the tokenisations differ");
        assert!(w.is_finite() && w > 1.5, "a degenerate perplexity {w}");
        if rel > 1e-3 {
            failures.push(format!("{arch:?} {}: wick {w} vs llama.cpp {l}", t.name()));
        }

        let (g, _) = wick_perplexity(&gguf, &[], &short);
        let (h, _) = wick_perplexity(&ck, &["--quantize", &t.name()], &short);
        let rel = (g - h).abs() / h;
        eprintln!(
            "{arch:?} {}: wick on the GGUF {g:.4}, on the checkpoint {h:.4}, relative difference {:.4}%",
            t.name(),
            rel * 100.0
        );
        if rel > 1e-3 {
            failures.push(format!(
                "{arch:?} {}: the GGUF is not the checkpoint's model ({g} vs {h})",
                t.name()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
