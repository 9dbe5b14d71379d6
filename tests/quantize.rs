//! Quantisation round trips on a random Llama checkpoint written here (hidden 256, so every
//! matrix row is a whole number of Q4_K super-blocks and no type falls back):
//! - `wick quantize` to every writable type, reloaded as GGUF, against the f32 checkpoint's
//!   logits with a per-format tolerance, and against the same checkpoint quantised on load
//!   (`--quantize`), which must give the same logits (same blocks; only the GGUF's Q/K rows
//!   are permuted for adjacent-pair RoPE);
//! - Llama 3 and linear RoPE scaling survive the conversion (`rope_freqs.weight` /
//!   `rope.scaling.*`), and change the logits (so the check can fail);
//! - a Mistral checkpoint with a sliding window shorter than the context is refused with a
//!   clear error, and runs when the context fits in the window.

use std::path::Path;

use safetensors::tensor::TensorView;
use serde_json::json;
use wick::model::export::quantize_to_gguf;
use wick::model::{QuantMix, QuantTarget};
use wick::quant::{GgmlType, QUANTIZE_TARGETS};
use wick::{Engine, LoadOptions, Model, Session};

pub mod common;

const HIDDEN: usize = 256;
const FFN: usize = 512;
const VOCAB: usize = 256;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;

fn engine() -> &'static Engine {
    static E: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    E.get_or_init(|| Engine::new().expect("GPU"))
}

/// splitmix64 -> uniform in [-1, 1).
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Writes a random LlamaForCausalLM (or MistralForCausalLM) checkpoint to `dir`. Weights are
/// scaled so activations and logits stay of order one.
fn write_checkpoint(dir: &Path, seed: u64, extra_config: serde_json::Value) {
    write_checkpoint_layers(dir, seed, LAYERS, extra_config)
}

/// [`write_checkpoint`] with `layers` decoder blocks.
fn write_checkpoint_layers(dir: &Path, seed: u64, layers: usize, extra_config: serde_json::Value) {
    let mut s = seed;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, f: &mut dyn FnMut() -> f32| {
        let n: usize = shape.iter().product();
        let bytes = (0..n).flat_map(|_| f().to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
    };
    // Uniform with variance 1/cols: each output has the variance of one input.
    let matrix = |rows: usize, cols: usize| (vec![rows, cols], (3.0 / cols as f32).sqrt());
    let mut rnd = |scale: f32, offset: f32| {
        let mut st = s;
        s = s.wrapping_add(1);
        move || offset + scale * uniform(&mut st)
    };
    let (qd, kvd) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    add(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        &mut rnd(1.0, 0.0),
    );
    for l in 0..layers {
        let p = |t: &str| format!("model.layers.{l}.{t}");
        for (name, rows, cols) in [
            ("self_attn.q_proj.weight", qd, HIDDEN),
            ("self_attn.k_proj.weight", kvd, HIDDEN),
            ("self_attn.v_proj.weight", kvd, HIDDEN),
            ("self_attn.o_proj.weight", HIDDEN, qd),
            ("mlp.gate_proj.weight", FFN, HIDDEN),
            ("mlp.up_proj.weight", FFN, HIDDEN),
            ("mlp.down_proj.weight", HIDDEN, FFN),
        ] {
            let (shape, scale) = matrix(rows, cols);
            add(p(name), shape, &mut rnd(scale, 0.0));
        }
        add(
            p("input_layernorm.weight"),
            vec![HIDDEN],
            &mut rnd(0.1, 1.0),
        );
        add(
            p("post_attention_layernorm.weight"),
            vec![HIDDEN],
            &mut rnd(0.1, 1.0),
        );
    }
    add("model.norm.weight".into(), vec![HIDDEN], &mut rnd(0.1, 1.0));
    add(
        "lm_head.weight".into(),
        vec![VOCAB, HIDDEN],
        &mut rnd(4.0 * (3.0 / HIDDEN as f32).sqrt(), 0.0),
    );
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let mut config = json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_hidden_layers": layers,
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
    });
    for (k, v) in extra_config.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn load(path: &Path, ctx: usize, quantize: Option<QuantTarget>) -> wick::Result<Model> {
    Model::load(
        engine(),
        path,
        LoadOptions {
            ctx: Some(ctx),
            quantize,
            ..Default::default()
        },
    )
}

const PROMPT: [u32; 24] = [
    7, 200, 13, 99, 42, 255, 0, 1, 128, 64, 32, 16, 8, 4, 2, 3, 5, 250, 77, 150, 31, 9, 100, 180,
];

fn logits(model: &Model) -> Vec<Vec<f32>> {
    Session::new(model).unwrap().logits_all(&PROMPT).unwrap()
}

/// Largest |a - b| over every position, and the relative RMS error ||a - b|| / ||b|| (b is
/// the reference). NaN counts as infinitely wrong.
fn compare(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, f32) {
    let mut worst = 0.0f32;
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            let d = (p - q).abs();
            worst = worst.max(if d.is_nan() { f32::INFINITY } else { d });
            err += (d as f64).powi(2);
            norm += (*q as f64).powi(2);
        }
    }
    let rel = (err / norm).sqrt() as f32;
    (worst, if rel.is_nan() { f32::INFINITY } else { rel })
}

/// Relative RMS logit error allowed per format. Measured on these checkpoints (lavapipe,
/// several seeds): F16 0.0007, BF16 0.005, Q8_0 0.011, Q6_K 0.038-0.042, Q5_K 0.080-0.083,
/// Q5_1 0.088, Q5_0 0.094, Q4_K 0.17, Q4_1 0.18, Q4_0 0.20; the bounds leave about 2x
/// headroom. Random-weight networks amplify weight noise more than trained ones; a broken
/// format lands near 1 or above.
fn tolerance(t: GgmlType) -> f32 {
    match t {
        // Float reduction order only (the GGUF's permuted rows, adjacent-pair RoPE).
        GgmlType::F32 => 5e-5,
        GgmlType::F16 => 0.002,
        GgmlType::Bf16 => 0.01,
        GgmlType::Q8_0 => 0.025,
        GgmlType::Q6K => 0.08,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => 0.2,
        _ => 0.4,
    }
}

#[test]
fn quantize_round_trips_every_type() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("llama");
    write_checkpoint(&ck, common::seed(), json!({}));
    let reference = logits(&load(&ck, 64, None).unwrap());
    let rms = (reference.iter().flatten().map(|v| v * v).sum::<f32>()
        / (reference.len() * VOCAB) as f32)
        .sqrt();
    assert!(rms > 0.5, "degenerate checkpoint: logit RMS {rms}");
    for t in QUANTIZE_TARGETS {
        let out = tmp.path().join(format!("llama-{}.gguf", t.name()));
        let report = quantize_to_gguf(&ck, &out, t).unwrap();
        assert!(report.permuted_qk);
        // Every matrix in the asked type (no fallback at these shapes), vectors in F32.
        let (matrices, vectors) = (2 + 7 * LAYERS, 2 * LAYERS + 1);
        let want = matrices + if t == GgmlType::F32 { vectors } else { 0 };
        assert_eq!(report.types.get(&t.name()), Some(&want), "{report:?}");
        let from_file = logits(&load(&out, 64, None).unwrap());
        let on_load = logits(&load(&ck, 64, Some(t.into())).unwrap());
        let (worst, rel) = compare(&from_file, &reference);
        let (same, _) = compare(&from_file, &on_load);
        eprintln!(
            "{}: logits vs f32: relative RMS error {rel:.4}, max |d| {worst:.3} (RMS {rms:.2}); GGUF vs --quantize max |d| {same:.2e}",
            t.name()
        );
        assert!(
            rel <= tolerance(t),
            "{}: relative logit error {rel} exceeds {}",
            t.name(),
            tolerance(t)
        );
        // Same quantised rows, permuted: only summation order and RoPE pairing differ.
        assert!(
            same <= 1e-3 * rms,
            "{}: GGUF vs on-load quantisation differ by {same}",
            t.name()
        );
    }
}

/// The layers whose attn_v and ffn_down llama.cpp b10587 gives more bits in Q4_K_M/Q5_K_M
/// (`use_more_bits` in src/llama-quant.cpp: the first and last eighth of the layers and
/// every third in between), worked out by hand for the layer counts tested here.
fn more_bits_layers(n_layers: usize) -> &'static [usize] {
    match n_layers {
        4 => &[2, 3],
        32 => &[0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31],
        _ => unreachable!("no hand-worked list for {n_layers} layers"),
    }
}

/// The type llama.cpp's Q4_K_M/Q5_K_M give each tensor of these checkpoints (untied, every
/// row a whole number of 256-blocks, so nothing falls back): output Q6_K; attn_v and
/// ffn_down Q6_K in the more-bits layers; every other matrix the base type; vectors F32.
fn expected_mix_type(mix: QuantMix, name: &str, n_layers: usize) -> GgmlType {
    if !name.ends_with(".weight") || name.contains("norm") {
        return GgmlType::F32;
    }
    if name == "output.weight" {
        return GgmlType::Q6K;
    }
    let more_bits = more_bits_layers(n_layers)
        .iter()
        .any(|l| name.starts_with(&format!("blk.{l}.")));
    if more_bits && (name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight")) {
        return GgmlType::Q6K;
    }
    match mix {
        QuantMix::Q4KM => GgmlType::Q4K,
        QuantMix::Q5KM => GgmlType::Q5K,
    }
}

/// `wick quantize --type q4_k_m|q5_k_m`: per-tensor types and `general.file_type` as
/// llama.cpp writes them (4 and 32 layers), and the 4-layer model's logits against the f32
/// checkpoint's and against the same mix applied on load.
///
/// Relative RMS logit error measured here (lavapipe, 5 seeds): Q4_K_M 0.167-0.189, Q5_K_M
/// 0.089-0.098 (four layers amplify weight noise more than the two of the single-type
/// test); bounds with about 2x headroom as for the single types.
#[test]
fn quantize_mixes_follow_llama_cpp_rules() {
    let tmp = tempfile::tempdir().unwrap();
    for (layers, mixes) in [
        (4, &[QuantMix::Q4KM, QuantMix::Q5KM][..]),
        (32, &[QuantMix::Q4KM][..]),
    ] {
        let ck = tmp.path().join(format!("llama{layers}"));
        write_checkpoint_layers(&ck, common::seed(), layers, json!({}));
        let reference = (layers == 4).then(|| logits(&load(&ck, 64, None).unwrap()));
        for &mix in mixes {
            let out = tmp
                .path()
                .join(format!("llama{layers}-{}.gguf", mix.name()));
            let report = quantize_to_gguf(&ck, &out, mix).unwrap();
            let g = wick::formats::gguf::GgufFile::open(&out).unwrap();
            let file_type = g.get("general.file_type").and_then(|v| v.as_u64());
            let want_file_type = match mix {
                QuantMix::Q4KM => 15,
                QuantMix::Q5KM => 17,
            };
            assert_eq!(file_type, Some(want_file_type), "{}", mix.name());
            let mut six = Vec::new();
            for t in &g.tensors {
                assert_eq!(
                    t.ggml_type,
                    expected_mix_type(mix, &t.name, layers),
                    "{} of {layers} layers: {}",
                    mix.name(),
                    t.name
                );
                if t.ggml_type == GgmlType::Q6K {
                    six.push(t.name.clone());
                }
            }
            eprintln!(
                "{} of {layers} layers: {:?}; Q6_K: {}",
                mix.name(),
                report.types,
                six.join(" ")
            );
            let Some(reference) = &reference else {
                continue;
            };
            let rms = (reference.iter().flatten().map(|v| v * v).sum::<f32>()
                / (reference.len() * VOCAB) as f32)
                .sqrt();
            let from_file = logits(&load(&out, 64, None).unwrap());
            let on_load = logits(&load(&ck, 64, Some(mix.into())).unwrap());
            let (worst, rel) = compare(&from_file, reference);
            let (same, _) = compare(&from_file, &on_load);
            eprintln!(
                "{}: logits vs f32: relative RMS error {rel:.4}, max |d| {worst:.3} (RMS {rms:.2}); GGUF vs --quantize max |d| {same:.2e}",
                mix.name()
            );
            let bound = match mix {
                QuantMix::Q4KM => 0.35,
                QuantMix::Q5KM => 0.2,
            };
            assert!(
                rel <= bound,
                "{}: relative logit error {rel} exceeds {bound}",
                mix.name()
            );
            assert!(
                same <= 1e-3 * rms,
                "{}: GGUF vs on-load quantisation differ by {same}",
                mix.name()
            );
        }
    }
}

/// Mixes where rows fall back, on the synthetic checkpoints of ../shared/goldens (hidden 128:
/// Q4_K -> Q5_0, Q6_K -> Q8_0; llama_gqa's ffn_down rows of 344 fit no 32-block, so F16;
/// qwen2_bias_tied's tied embedding is the output, Q8_0): the types llama.cpp would choose,
/// and the mixed model, whose layers combine four formats, matches the same mix applied on
/// load and stays near the f32 checkpoint's logits. These small random-init checkpoints
/// (fixed weights) amplify weight noise strongly: relative RMS logit error measured on
/// lavapipe for Q4_K_M 0.281 (llama_gqa) and 0.166 (qwen2_bias_tied); the single types on
/// the same checkpoints give Q8_0 0.036 / 0.030, Q5_0 0.284 / 0.226, Q4_0 0.53 / 0.45.
/// Bound 0.35; a broken format lands near 1.
#[test]
fn quantize_mix_fallbacks_on_small_rows() {
    let shared = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    use GgmlType::{F16, Q5_0, Q8_0};
    let cases: [(&str, &[(&str, GgmlType)]); 2] = [
        (
            "llama_gqa",
            &[
                ("token_embd.weight", Q5_0),
                ("output.weight", Q8_0),
                ("blk.0.attn_v.weight", Q5_0),
                ("blk.2.attn_v.weight", Q8_0),
                ("blk.0.ffn_down.weight", F16),
                ("blk.3.ffn_down.weight", F16),
                ("blk.3.ffn_up.weight", Q5_0),
            ],
        ),
        (
            "qwen2_bias_tied",
            &[
                ("token_embd.weight", Q8_0),
                ("blk.0.attn_v.weight", Q5_0),
                ("blk.1.attn_v.weight", Q8_0),
                ("blk.0.ffn_down.weight", Q5_0),
                ("blk.1.ffn_down.weight", Q8_0),
                ("blk.1.attn_q.bias", GgmlType::F32),
            ],
        ),
    ];
    for (name, want) in cases {
        let ck = shared.join("goldens/synthetic").join(name);
        let out = tmp.path().join(format!("{name}-q4_k_m.gguf"));
        quantize_to_gguf(&ck, &out, QuantMix::Q4KM).unwrap();
        let g = wick::formats::gguf::GgufFile::open(&out).unwrap();
        for (tensor, ty) in want {
            assert_eq!(g.tensor(tensor).unwrap().ggml_type, *ty, "{name}: {tensor}");
        }
        let reference = logits(&load(&ck, 64, None).unwrap());
        let rms = (reference.iter().flatten().map(|v| v * v).sum::<f32>()
            / reference.iter().map(Vec::len).sum::<usize>() as f32)
            .sqrt();
        let from_file = logits(&load(&out, 64, None).unwrap());
        let on_load = logits(&load(&ck, 64, Some(QuantMix::Q4KM.into())).unwrap());
        let (_, rel) = compare(&from_file, &reference);
        let (same, _) = compare(&from_file, &on_load);
        eprintln!("{name} Q4_K_M: logits vs f32: relative RMS error {rel:.4}; GGUF vs --quantize max |d| {same:.2e} (RMS {rms:.2})");
        assert!(rel <= 0.35, "{name}: relative logit error {rel}");
        assert!(
            same <= 1e-3 * rms,
            "{name}: GGUF vs on-load differ by {same}"
        );
    }
}

#[test]
fn rope_scaling_survives_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let plain_dir = tmp.path().join("plain");
    write_checkpoint(&plain_dir, 7, json!({}));
    let plain = logits(&load(&plain_dir, 64, None).unwrap());
    for (name, scaling) in [
        (
            "llama3",
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        ),
        ("linear", json!({"type": "linear", "factor": 4.0})),
    ] {
        let ck = tmp.path().join(name);
        write_checkpoint(&ck, 7, json!({ "rope_scaling": scaling }));
        let hf = logits(&load(&ck, 64, None).unwrap());
        let (_, changed) = compare(&hf, &plain);
        assert!(
            changed > 0.01,
            "{name}: scaling did not change the logits ({changed})"
        );
        let out = tmp.path().join(format!("{name}.gguf"));
        quantize_to_gguf(&ck, &out, GgmlType::F32).unwrap();
        let g = wick::formats::gguf::GgufFile::open(&out).unwrap();
        match name {
            "llama3" => assert!(g.tensor("rope_freqs.weight").is_some()),
            _ => assert_eq!(
                g.get_str("llama.rope.scaling.type").unwrap(),
                Some("linear")
            ),
        }
        let gguf = logits(&load(&out, 64, None).unwrap());
        let (_, d) = compare(&gguf, &hf);
        assert!(
            d <= 1e-5,
            "{name}: GGUF vs HF logits differ by {d} (relative)"
        );
    }
}

#[test]
fn sliding_window_shorter_than_context_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("mistral");
    write_checkpoint(
        &ck,
        11,
        json!({"architectures": ["MistralForCausalLM"], "sliding_window": 32}),
    );
    let e = load(&ck, 64, None).unwrap_err().to_string();
    assert!(e.contains("sliding window of 32"), "{e}");
    // Within the window Mistral is Llama: same logits as the same weights loaded as Llama.
    let mistral = load(&ck, 32, None).unwrap();
    let llama_dir = tmp.path().join("llama");
    write_checkpoint(&llama_dir, 11, json!({}));
    let llama = load(&llama_dir, 32, None).unwrap();
    let (a, b) = (logits(&mistral), logits(&llama));
    let (d, _) = compare(&a, &b);
    assert_eq!(d, 0.0);
    // The window travels into the GGUF, and the GGUF is refused the same way.
    let out = tmp.path().join("mistral.gguf");
    quantize_to_gguf(&ck, &out, GgmlType::F16).unwrap();
    let e = load(&out, 64, None).unwrap_err().to_string();
    assert!(e.contains("sliding window of 32"), "{e}");
}

#[test]
fn quantize_refuses_to_overwrite_its_input_and_bad_types() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("llama");
    write_checkpoint(&ck, 3, json!({}));
    let out = tmp.path().join("m.gguf");
    quantize_to_gguf(&ck, &out, GgmlType::Q8_0).unwrap();
    let before = std::fs::read(&out).unwrap();
    let e = quantize_to_gguf(&out, &out, GgmlType::Q4_0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overwrite the input"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let e = wick::quant::parse_quant_type("q3_k")
        .unwrap_err()
        .to_string();
    assert!(e.contains("q4_k"), "{e}");
    assert_eq!(
        wick::quant::parse_quant_type("Q4_K").unwrap(),
        GgmlType::Q4K
    );
    // A checkpoint with a missing tensor names it and writes nothing.
    std::fs::write(
        ck.join("config.json"),
        std::fs::read_to_string(ck.join("config.json"))
            .unwrap()
            .replace("\"num_hidden_layers\":2", "\"num_hidden_layers\":3"),
    )
    .unwrap();
    let out2 = tmp.path().join("m2.gguf");
    let e = quantize_to_gguf(&ck, &out2, GgmlType::F16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing tensor blk.2.attn_q.weight"), "{e}");
    assert!(!out2.exists());
}

/// `wick synth`'s path: the smollm2-135m preset with the SmolLM2 vocabulary padded by a few
/// tokens is written as a GGUF whose configuration equals the preset, whose tokenizer loads
/// and tokenizes like the original, and whose padding tokens are typed unused.
#[test]
fn synthetic_preset_written_as_gguf() {
    use wick::formats::gguf::GgufFile;
    use wick::formats::tokenizer::{GgufVocab, Tokenizer};
    use wick::model::synthetic::{padded_vocab, Preset, SyntheticStore};
    // The SmolLM2 GGUF, for its vocabulary.
    let Some(model) = common::model_or_skip() else {
        return;
    };
    let vocab = GgufVocab::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    let padded = padded_vocab(&vocab, vocab.tokens.len() + 3);
    assert_eq!(
        padded.tokens.last().unwrap(),
        &format!("[PAD{}]", vocab.tokens.len() + 2)
    );
    assert_eq!(padded.token_types.last(), Some(&5));
    let preset = Preset::by_name("smollm2-135m").unwrap();
    let store = SyntheticStore::new(&preset, GgmlType::Q4_0, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth.gguf");
    let report = wick::model::export::write_model_gguf(
        &store,
        store.config(),
        "synth",
        vocab.to_metadata(),
        false,
        GgmlType::Q4_0,
        &out,
    )
    .unwrap();
    assert!(report.tokenizer);
    let g = GgufFile::open(&out).unwrap();
    let cfg = wick::model::ModelConfig::from_gguf(&g).unwrap();
    let want = preset.config().unwrap();
    assert_eq!(
        (
            cfg.n_layers,
            cfg.hidden,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.ffn,
            cfg.vocab
        ),
        (
            want.n_layers,
            want.hidden,
            want.n_heads,
            want.n_kv_heads,
            want.ffn,
            want.vocab
        )
    );
    assert_eq!(cfg.tied_output, want.tied_output);
    let t = Tokenizer::from_gguf(&g).unwrap();
    let orig = Tokenizer::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    assert_eq!(
        t.encode("Hello world 123").unwrap(),
        orig.encode("Hello world 123").unwrap()
    );
}
