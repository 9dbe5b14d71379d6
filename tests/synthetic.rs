//! The three synthetic Hugging Face checkpoints in ../shared/goldens/synthetic (Llama GQA,
//! Qwen2 with q/k/v bias and tied embeddings, Qwen3 with q/k norms and head_dim != hidden/heads)
//! against transformers' float32 logits at every position of both prompts and its greedy ids.
//!
//! wick runs them with f32 weights, f32 activations and accumulation, and an f16 KV cache. The
//! logit bounds are the errors measured on lavapipe with 3-6x headroom (each test prints its
//! value; other GPUs run the same f32 kernels in other summation orders, ~1e-6, while the f16
//! cache rounding, the bulk of the error, is the same everywhere). Greedy ids must match exactly
//! up to the first step whose golden top-1/top-2 margin is below the goldens README's
//! tolerance for this precision (where a rounding may legitimately flip the choice).

use std::path::{Path, PathBuf};

use serde_json::Value;
use wick::gpu::GpuOptions;
use wick::model::export::quantize_to_gguf;
use wick::quant::GgmlType;
use wick::{Engine, EngineOptions, GenerateParams, KvType, LoadOptions, Model, Session};

pub mod common;

/// A synthetic golden checkpoint by name, in the shared material ([`common::shared`]).
fn dir(name: &str) -> PathBuf {
    common::shared().join("goldens/synthetic").join(name)
}

fn engine() -> &'static Engine {
    static E: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    E.get_or_init(|| Engine::new().expect("GPU"))
}

/// Checks `model` against the goldens of checkpoint `name`: logits at every position of both
/// prompts within `tol` (max abs), greedy ids equal up to the first golden margin below
/// `margin`. Returns the largest logit error.
fn check_model(name: &str, label: &str, model: &Model, tol: f32, margin: f32) -> f32 {
    let goldens: Value =
        serde_json::from_str(&std::fs::read_to_string(dir(name).join("goldens.json")).unwrap())
            .unwrap();
    let mut s = Session::new(model).unwrap();
    let mut worst = 0.0f32;
    for p in goldens["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let rows = s.logits_all(&ids).unwrap();
        // The same logits from one prefill with the LM head over every row (perplexity's
        // path), poisoned first so a row it did not write cannot pass.
        let mut prefilled = vec![vec![f32::NAN; rows[0].len()]; ids.len()];
        s.prefill_with_logits(&ids, 0, |pos, l| {
            prefilled[pos] = l.to_vec();
            Ok(())
        })
        .unwrap();
        for (i, (ours, gold)) in rows
            .iter()
            .chain(&prefilled)
            .zip(p["logits"].as_array().unwrap().iter().cycle())
            .enumerate()
        {
            let pos = i % ids.len();
            let path = if i < ids.len() {
                "decode steps"
            } else {
                "one prefill"
            };
            let gold: Vec<f32> = gold
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(ours.len(), gold.len());
            let d = max_abs_diff(ours, &gold);
            assert!(
                d < tol,
                "{label} {} position {pos} ({path}): max |logit - golden| = {d} (tolerance {tol})",
                p["name"]
            );
            worst = worst.max(d);
        }
        let gold: Vec<u32> = p["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let margins: Vec<f64> = p["greedy_step_top1_minus_top2"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let exact = margins.iter().take_while(|&&m| m >= margin as f64).count();
        s.reset();
        let params = GenerateParams {
            max_tokens: gold.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let got: Vec<u32> = s
            .generate(&ids, params)
            .unwrap()
            .map(|t| t.unwrap().id)
            .collect();
        assert_eq!(got.len(), gold.len(), "{label}: generated length");
        assert_eq!(
            got[..exact],
            gold[..exact],
            "{label} {}: greedy ids (first {exact} steps)",
            p["name"]
        );
    }
    eprintln!(
        "{label}: max |logit - golden| over every position of both prompts: {worst} (bound {tol})"
    );
    worst
}

/// NaN anywhere counts as an infinite difference.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f32::max)
}

fn load(path: &Path, ctx: usize) -> Model {
    Model::load(
        engine(),
        path,
        LoadOptions {
            ctx: Some(ctx),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The checkpoint as stored (f32 weights). Measured max |d| on lavapipe: 0.0047 (llama_gqa),
/// 0.0040 (qwen2_bias_tied), 0.0022 (qwen3_qknorm); bound 0.015, 3.2x the largest. Greedy
/// margin: the goldens README's f16 tolerance, 0.03.
fn check(name: &str) {
    check_model(name, name, &load(&dir(name), 128), 0.015, 0.03);
}

/// The checkpoint written by `wick quantize --type f16|bf16` and reloaded as GGUF (for Llama
/// that includes llama.cpp's Q/K row permutation and adjacent-pair RoPE). Measured max |d| on
/// lavapipe, largest of the three models: f16 weights 0.0082, bound 0.03 (3.6x); bf16 weights
/// 0.077, bound 0.2 (2.6x: the goldens README's bf16 tolerance, whose own measurement of a
/// bf16 engine on these models reached 0.13). Greedy margins: the same tolerances.
fn check_converted(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    for (ty, tol) in [(GgmlType::F16, 0.03), (GgmlType::Bf16, 0.2)] {
        let out = tmp.path().join(format!("{name}-{}.gguf", ty.name()));
        let report = quantize_to_gguf(&dir(name), &out, ty).unwrap();
        assert!(
            !report.tokenizer,
            "the synthetic checkpoints have no tokenizer"
        );
        assert_eq!(report.permuted_qk, name == "llama_gqa");
        let gguf = wick::formats::gguf::GgufFile::open(&out).unwrap();
        let matrices = gguf.tensors.iter().filter(|t| t.dims.len() == 2);
        for t in matrices {
            assert_eq!(t.ggml_type, ty, "{}", t.name);
        }
        check_model(
            name,
            &format!("{name} as {} GGUF", ty.name()),
            &load(&out, 128),
            tol,
            tol,
        );
    }
}

#[test]
fn llama_gqa_matches_goldens() {
    check("llama_gqa");
}

#[test]
fn qwen2_bias_tied_matches_goldens() {
    check("qwen2_bias_tied");
}

#[test]
fn qwen3_qknorm_matches_goldens() {
    check("qwen3_qknorm");
}

#[test]
fn llama_gqa_converted_to_gguf_matches_goldens() {
    check_converted("llama_gqa");
}

#[test]
fn qwen2_bias_tied_converted_to_gguf_matches_goldens() {
    check_converted("qwen2_bias_tied");
}

#[test]
fn qwen3_qknorm_converted_to_gguf_matches_goldens() {
    check_converted("qwen3_qknorm");
}

#[test]
fn directory_without_tokenizer_serves_ids_but_not_text() {
    let model = Model::load(
        engine(),
        dir("llama_gqa"),
        LoadOptions {
            ctx: Some(32),
            ..Default::default()
        },
    )
    .unwrap();
    let e = model.tokenizer().unwrap_err();
    assert!(e.to_string().contains("no tokenizer"), "{e}");
    let mut s = Session::new(&model).unwrap();
    let n = s
        .generate(
            &[1, 2, 3],
            GenerateParams {
                max_tokens: 3,
                ignore_eos: true,
                ..Default::default()
            },
        )
        .unwrap()
        .count();
    assert_eq!(n, 3);
}

#[test]
fn matrices_split_across_small_bindings_give_the_same_logits() {
    // 200 KiB per binding: the 512 x 128 f32 embedding and LM head (256 KiB each) must be
    // split by rows into two chunks each; the results must not change.
    let small = Engine::with_options(EngineOptions {
        gpu: GpuOptions {
            max_binding_override: Some(200 * 1024),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let split = Model::load(
        &small,
        dir("llama_gqa"),
        LoadOptions {
            ctx: Some(64),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(split.weights().embed.chunks.len(), 2);
    assert_eq!(split.weights().lm_head().chunks.len(), 2);
    let whole = Model::load(
        engine(),
        dir("llama_gqa"),
        LoadOptions {
            ctx: Some(64),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(whole.weights().embed.chunks.len(), 1);
    let ids = [363u32, 360, 330, 43, 312, 412, 80, 505, 462];
    let a = Session::new(&split).unwrap().logits_all(&ids).unwrap();
    let b = Session::new(&whole).unwrap().logits_all(&ids).unwrap();
    for (pos, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        // Same kernels on the same values; only the grids differ.
        assert!(d < 1e-5, "position {pos}: split vs whole differ by {d}");
    }
}

/// Decode attention has two recorded forms: one split per KV head below
/// `2 * SPLIT_KEYS` cached positions, split-KV plus a merge pass from there. Both must give the
/// logits the prefill path (GEMM + causal prefill attention) gives at the same position:
/// the last few prompt tokens are run through decode steps when fewer than 8 remain.
#[test]
fn decode_attention_forms_match_prefill() {
    let multi = 2 * wick::kernels::attention::SPLIT_KEYS;
    let model = load(&dir("llama_gqa"), 512.max(multi + 64));
    let ids: Vec<u32> = (0..multi as u32 + 40)
        .map(|i| (i * 7919 + 13) % 512)
        .collect();
    for end in [multi - 30, multi + 20] {
        // Decode steps for the last 4 positions.
        let mut a = Session::new(&model).unwrap();
        a.prefill(&ids[..end - 4]).unwrap();
        a.prefill(&ids[..end]).unwrap();
        // One GEMM chunk of 12 for the last positions.
        let mut b = Session::new(&model).unwrap();
        b.prefill(&ids[..end - 12]).unwrap();
        b.prefill(&ids[..end]).unwrap();
        let (x, y) = (a.logits().unwrap(), b.logits().unwrap());
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = max_abs_diff(&x, &y);
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "{end} positions: decode vs prefill logits differ by {d} (scale {scale})"
        );
    }
}

/// `Session::prefill_with_logits` (one prefill per chunk of 64, then one LM-head GEMM over
/// the chunk's rows) gives at every position from `first` on the logits a decode step per
/// position gives, across chunk boundaries and for a tail shorter than the decode-step
/// threshold, and nothing before `first`.
#[test]
fn prefill_logits_of_every_position_match_decode_steps() {
    let model = load(&dir("qwen2_bias_tied"), 256);
    let ids: Vec<u32> = (0..64 * 2 + 5).map(|i| (i * 7919 + 3) % 512).collect();
    let steps = Session::new(&model).unwrap().logits_all(&ids).unwrap();
    let first = 50;
    let mut s = Session::new(&model).unwrap();
    let mut seen = Vec::new();
    s.prefill_with_logits(&ids, first, |pos, l| {
        let want = &steps[pos];
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = max_abs_diff(l, want);
        // f32 summation orders differ (GEMM vs GEMV, and the GEMV's norm prologue sums x^2
        // per subgroup first): measured up to 1.02e-4 x scale on lavapipe; a wrong row or
        // position moves logits by their own scale.
        assert!(
            d <= 3e-4 * scale.max(1.0),
            "position {pos}: prefill vs decode-step logits differ by {d} (scale {scale})"
        );
        seen.push(pos);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, (first..ids.len()).collect::<Vec<_>>());
    assert_eq!(s.tokens(), &ids[..]);
}

/// A copy of checkpoint `name` with the f32 tensor `tensor`'s element `index` set to `value`.
fn with_poisoned_weight(name: &str, tensor: &str, index: usize, value: f32) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let path = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[tensor]["dtype"], "F32");
    let at = 8 + n + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize + index * 4;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    tmp
}

/// NaN or infinite weights load, and generation reports the first non-finite logit (greedy,
/// GPU-sampled and CPU-sampled alike) instead of emitting tokens.
#[test]
fn non_finite_weights_are_reported_not_decoded() {
    let hidden = 128;
    let row = 100 + rand::random::<u32>() as usize % 400;
    // One lm_head row poisoned: only that logit is NaN. The final norm poisoned: all are.
    for (tensor, index, value, want) in [
        ("lm_head.weight", row * hidden + 3, f32::NAN, row),
        ("lm_head.weight", row * hidden, f32::INFINITY, row),
        ("model.norm.weight", 5, f32::NAN, 0),
    ] {
        let tmp = with_poisoned_weight("llama_gqa", tensor, index, value);
        let model = Model::load(engine(), tmp.path(), LoadOptions::default()).unwrap();
        let mut s = Session::new(&model).unwrap();
        let sampled = wick::SamplingParams {
            temperature: 0.8,
            ..Default::default()
        };
        for (what, sampling, sample_on_cpu) in [
            ("greedy", wick::SamplingParams::default(), false),
            ("GPU sampling", sampled.clone(), false),
            ("CPU sampling", sampled, true),
        ] {
            let p = GenerateParams {
                max_tokens: 3,
                sampling,
                sample_on_cpu,
                ..Default::default()
            };
            let first = s.generate(&[1, 2, 3], p).unwrap().next().unwrap();
            let e = first.expect_err(&format!("{tensor} = {value}, {what}: must fail"));
            let msg = e.to_string();
            assert!(
                msg.contains("non-finite logit") && msg.contains(&format!("index {want}")),
                "{tensor} = {value}, {what}: {msg}"
            );
        }
    }
}

/// The fused decode step (one QKV GEMV, norms inside the GEMVs, RoPE + KV write, gate/up +
/// SwiGLU, single-split attention) against the plain sequence of kernels, on the same
/// tokens: logits within f32 rounding of each other and the same greedy ids.
#[test]
fn fused_decode_step_matches_the_unfused_sequence() {
    use wick::runtime::DecodeFusion;
    for name in ["llama_gqa", "qwen2_bias_tied", "qwen3_qknorm"] {
        let model = load(&dir(name), 64);
        let mut fused = Session::with_decode_fusion(&model, 64, DecodeFusion::ALL).unwrap();
        let mut plain = Session::with_decode_fusion(&model, 64, DecodeFusion::NONE).unwrap();
        let prompt: Vec<u32> = (0..9).map(|_| rand::random::<u32>() % 500).collect();
        let a = fused.greedy_trace(&prompt, 6).unwrap();
        let b = plain.greedy_trace(&prompt, 6).unwrap();
        for (step, ((ia, la), (ib, lb))) in a.iter().zip(&b).enumerate() {
            let d = max_abs_diff(la, lb);
            assert!(d < 2e-3, "{name} step {step}: max |fused - plain| = {d}");
            if ia != ib {
                // Only a near-tie may flip; the sequences differ from here on.
                let mut top = la.clone();
                top.sort_by(|x, y| y.total_cmp(x));
                assert!(
                    top[0] - top[1] < 2.0 * d,
                    "{name} step {step}: {ia} vs {ib}"
                );
                break;
            }
        }
        // The two really are different dispatch sequences.
        let n = |s: &mut Session| {
            let g = s.generate(
                &prompt,
                GenerateParams {
                    max_tokens: 2,
                    ..Default::default()
                },
            );
            let _: Vec<_> = g.unwrap().collect();
            s.stats.dispatches_per_token()
        };
        let (nf, np) = (n(&mut fused), n(&mut plain));
        assert!(
            nf < np,
            "{name}: {nf} fused vs {np} plain dispatches per token"
        );
    }
}

/// Row lengths of a synthetic checkpoint's matrices, by what the GEMVs reading them fuse.
struct GemvRows {
    /// Those reading the hidden state (q/k/v, gate/up, the LM head): all the fused GEMVs
    /// (QKV, gate+up SwiGLU) read.
    hidden: Vec<usize>,
    /// Every matrix: also the attention output (o) and the FFN's (down).
    all: Vec<usize>,
}

fn gemv_rows(name: &str) -> GemvRows {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir(name).join("config.json")).unwrap())
            .unwrap();
    let get = |key: &str| cfg[key].as_u64().map(|v| v as usize);
    let hidden = get("hidden_size").unwrap();
    let heads = get("num_attention_heads").unwrap();
    let head_dim = get("head_dim").unwrap_or(hidden / heads);
    GemvRows {
        hidden: vec![hidden],
        all: vec![hidden, heads * head_dim, get("intermediate_size").unwrap()],
    }
}

/// Every native kernel this backend has, in whole models: a decode with the global native
/// policy (`--kernels native`, [`KernelChoice::Native`]) against the portable kernels on the
/// same tokens, for each synthetic checkpoint and for each weight format a native op is
/// specific to (a native op named after a format, e.g. `gemv_q8_0`, gets the checkpoints
/// quantised to it). The prompt fills past `2 * SPLIT_KEYS` positions during the trace, so
/// decode attention runs both its single-split and split + merge forms, and the prompt itself goes
/// through prefill. Every native op must really have been built as native (unless no matrix
/// it would read can be stored in its format here: the fused K-quant GEMVs); logits within
/// f32 rounding of each other, the same greedy ids up to a near-tie. Bound: 1e-3 (observed
/// <= 2e-5 on lavapipe, stored and Q8_0; attention that skips one output rescale moves the
/// logits by ~2).
#[test]
fn native_kernels_decode_like_portable() {
    use std::collections::BTreeSet;
    use wick::kernels::{KernelChoice, Variant};
    let multi = 2 * wick::kernels::attention::SPLIT_KEYS;

    let native = Engine::with_options(EngineOptions {
        kernels: KernelChoice::Native,
        ..Default::default()
    })
    .unwrap();
    let caps = &native.gpu().caps;
    if caps.backend == wgpu::Backend::Vulkan {
        assert!(
            caps.passthrough_shaders,
            "the Vulkan test device must offer PASSTHROUGH_SHADERS"
        );
    }
    let available: BTreeSet<String> = wick::kernels::native_specs()
        .into_iter()
        .filter(|s| native.kernels().native_for(s).is_some())
        .map(|s| s.op)
        .collect();
    let checkpoints = ["llama_gqa", "qwen2_bias_tied", "qwen3_qknorm"];
    // A native op of a weight format runs only on matrices stored in it. The K-quants need
    // rows of a multiple of 256, and these checkpoints' rows are 128 (hidden), 344/384 (ffn)
    // and 128/256 (attention output): only Qwen3's o-proj (8 heads x 32) keeps a K-quant, so
    // the plain K-quant GEMVs run there, while every matrix the fused ones read falls back to
    // a 32-block type (`quant::storage_type_for_rows`); those are left to the kernel tests
    // (tests/kernels/gemv.rs, tests/metal).
    let rows: Vec<GemvRows> = checkpoints.iter().map(|n| gemv_rows(n)).collect();
    let (ops, elsewhere): (BTreeSet<String>, BTreeSet<String>) =
        available.into_iter().partition(|op| {
            let Some(f) = wick::kernels::op_format(op) else {
                return true;
            };
            let t = f.ggml();
            let fused = op.starts_with("gemv_swiglu_") || op.starts_with("gemv_qkv_");
            rows.iter().any(|r| {
                let ks = if fused { &r.hidden[..] } else { &r.all[..] };
                ks.iter()
                    .any(|&k| wick::quant::storage_type_for_rows(t, k) == t)
            })
        });
    if !elsewhere.is_empty() {
        eprintln!(
            "no synthetic matrix is stored in the format of {elsewhere:?} (covered by the \
             kernel tests)"
        );
    }
    if ops.is_empty() {
        // Native kernels ship as SPIR-V and MSL: where the adapter takes them, some must run.
        assert!(
            !(caps.passthrough_shaders
                && matches!(caps.backend, wgpu::Backend::Vulkan | wgpu::Backend::Metal)),
            "backend {} offers passthrough shaders but no native kernel is available",
            caps.backend
        );
        eprintln!("skipping: no native kernels on backend {}", caps.backend);
        return;
    }
    // None: the checkpoint as stored (f32).
    let mut formats: Vec<Option<GgmlType>> = vec![None];
    for t in wick::quant::QUANTIZE_TARGETS {
        let suffix = format!("_{}", t.name().to_ascii_lowercase());
        if ops.iter().any(|op| op.ends_with(&suffix)) {
            formats.push(Some(t));
        }
    }
    let ctx = multi + 64;
    let tmp = tempfile::tempdir().unwrap();
    for name in checkpoints {
        for ty in &formats {
            let path = match ty {
                None => dir(name),
                Some(t) => {
                    let out = tmp.path().join(format!("{name}-{}.gguf", t.name()));
                    quantize_to_gguf(&dir(name), &out, *t).unwrap();
                    out
                }
            };
            let label = format!("{name} as {}", ty.map_or("stored".into(), |t| t.name()));
            let load_on = |e: &Engine| {
                Model::load(
                    e,
                    &path,
                    LoadOptions {
                        ctx: Some(ctx),
                        ..Default::default()
                    },
                )
                .unwrap()
            };
            let (mn, mp) = (load_on(&native), load_on(engine()));
            let prompt: Vec<u32> = (0..multi - 6)
                .map(|_| rand::random::<u32>() % 500)
                .collect();
            let a = Session::new(&mn)
                .unwrap()
                .greedy_trace(&prompt, 12)
                .unwrap();
            let b = Session::new(&mp)
                .unwrap()
                .greedy_trace(&prompt, 12)
                .unwrap();
            let mut worst = 0.0f32;
            for (step, ((ia, la), (ib, lb))) in a.iter().zip(&b).enumerate() {
                let d = max_abs_diff(la, lb);
                assert!(
                    d < 1e-3,
                    "{label} step {step}: max |native - portable| = {d}"
                );
                worst = worst.max(d);
                if ia != ib {
                    // Only a near-tie may flip; the sequences differ from here on.
                    let mut top = lb.clone();
                    top.sort_by(|x, y| y.total_cmp(x));
                    assert!(
                        top[0] - top[1] < 2.0 * d,
                        "{label} step {step}: {ia} vs {ib}"
                    );
                    break;
                }
            }
            eprintln!("{label}: max |native - portable| logit over 12 decode steps: {worst:.1e}");
        }
    }
    let built: BTreeSet<String> = native
        .kernels()
        .built_pipelines()
        .into_iter()
        .filter(|(_, v)| *v == Variant::Native)
        .map(|(op, _)| op)
        .collect();
    for op in &ops {
        assert!(
            built.contains(op),
            "native op {op} never ran in the synthetic models (built natively: {built:?}); \
             give this test a model that uses it"
        );
    }
}

/// The integer-dot decode step (`DecodeFusion::int_dot`: activations quantised to 8-bit
/// blocks once per row, GEMVs on them) against the float decode step, on the checkpoints
/// quantised to Q8_0 and Q4_0 (formats with integer-dot GEMVs; the dimensions of these
/// checkpoints are multiples of 32, not of 256, so the K-quants are covered by the kernel
/// tests). The activation rounding (at most 1/254 of each block's largest value per element,
/// tests/kernels/gemv_dot.rs bounds one GEMV by it) compounds over the layers with no tight
/// closed form, so the bound on the logits is empirical: max |dot - float| <= 10% of the
/// largest float logit (observed up to 3% on lavapipe, on these small random-weight models
/// whose rows are only 2-4 blocks long); a stale or wrong row, block, scale or epilogue moves
/// logits by their own scale. The prompt's logits (prefill, no integer-dot) must be equal.
/// Greedy ids agree up to a near-tie.
#[test]
fn int_dot_decode_matches_the_float_decode() {
    use wick::runtime::DecodeFusion;
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llama_gqa", "qwen2_bias_tied", "qwen3_qknorm"] {
        for t in [GgmlType::Q8_0, GgmlType::Q4_0] {
            let path = tmp.path().join(format!("{name}-{}.gguf", t.name()));
            quantize_to_gguf(&dir(name), &path, t).unwrap();
            let model = load(&path, 64);
            // The quantiser before each group of GEMVs reading a row, and the GEMVs
            // quantising their row themselves.
            for dot_prologue in [false, true] {
                let dot = DecodeFusion {
                    int_dot: true,
                    dot_prologue,
                    ..DecodeFusion::ALL
                };
                let mut fd = Session::with_decode_fusion(&model, 64, dot).unwrap();
                let mut ff = Session::with_decode_fusion(&model, 64, DecodeFusion::ALL).unwrap();
                let prompt: Vec<u32> = (0..9).map(|_| rand::random::<u32>() % 500).collect();
                let a = fd.greedy_trace(&prompt, 6).unwrap();
                let b = ff.greedy_trace(&prompt, 6).unwrap();
                let label = format!("{name} as {}, prologue {dot_prologue}", t.name());
                for (step, ((ia, la), (ib, lb))) in a.iter().zip(&b).enumerate() {
                    let d = max_abs_diff(la, lb);
                    let scale = lb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    eprintln!("{label} step {step}: max |dot - float| {d} (max |logit| {scale})");
                    if step == 0 {
                        assert_eq!(d, 0.0, "{label}: the prompt's logits (prefill) differ");
                    }
                    assert!(
                        d <= 0.1 * scale,
                        "{label} step {step}: {d} vs scale {scale}"
                    );
                    if ia != ib {
                        let mut top = lb.clone();
                        top.sort_by(|x, y| y.total_cmp(x));
                        assert!(
                            top[0] - top[1] < 2.0 * d,
                            "{label} step {step}: {ia} vs {ib}"
                        );
                        break;
                    }
                }
                // The integer-dot step really is another dispatch sequence: a quantisation
                // before each group of GEMVs reading one row, or (prologue) as many dispatches
                // as the float step.
                let n = |s: &mut Session| {
                    let p = GenerateParams {
                        max_tokens: 2,
                        ..Default::default()
                    };
                    let _: Vec<_> = s.generate(&prompt, p).unwrap().collect();
                    s.stats.dispatches_per_token()
                };
                let (nd, nf) = (n(&mut fd), n(&mut ff));
                assert!(
                    if dot_prologue { nd == nf } else { nd > nf },
                    "{label}: {nd} integer-dot vs {nf} float dispatches per token"
                );
            }
        }
    }
}

// A q8_0 KV cache rounds each value to 1/254 of its block's max|x| (rms ~0.5% of a row of
// normal values, against ~0.03% for f16: ~17x), and on these 4-layer models whose head_dim 32
// is one block that error reaches the logits nearly whole: the f16 engine's 0.0047 distance
// to the goldens (mostly its f16 cache rounding) becomes ~0.08 at a logit scale of ~5. A
// stale, missing or mis-scaled block moves logits by O(1).

/// Bound on max |logit - golden| with a q8_0 KV cache: measured on lavapipe 0.081 (llama_gqa),
/// 0.082 (qwen2_bias_tied), 0.065 (qwen3_qknorm); bound 3x the largest. Also the greedy
/// margin: ids must match the goldens' up to the first step whose margin is below it.
const Q8_KV_GOLDEN_TOL: f32 = 0.25;

/// Bound on max |logit(q8_0 KV cache) - logit(f16 KV cache)| over 60 positions of a random
/// prompt and its greedy continuation: measured on lavapipe up to 0.155 (8 runs of the 3
/// models; max |logit| ~5); bound 2.6x that.
const Q8_KV_TOL: f32 = 0.4;

fn load_kv(path: &Path, ctx: usize, kv_type: KvType) -> Model {
    Model::load(
        engine(),
        path,
        LoadOptions {
            ctx: Some(ctx),
            kv_type,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The checkpoints with a q8_0 KV cache (`--kv-type q8_0`) against the goldens at every
/// position of both prompts, by decode steps and by one prefill (so the fused RoPE + q8_0
/// write and attention over the cache in both forms), and greedy ids up to the first golden
/// margin below the bound.
#[test]
fn q8_kv_cache_matches_goldens() {
    for name in ["llama_gqa", "qwen2_bias_tied", "qwen3_qknorm"] {
        let model = load_kv(&dir(name), 128, KvType::Q8_0);
        assert_eq!(Session::new(&model).unwrap().kv_type(), KvType::Q8_0);
        let label = format!("{name} q8_0 KV");
        check_model(name, &label, &model, Q8_KV_GOLDEN_TOL, Q8_KV_GOLDEN_TOL);
    }
    // A head_dim that is not whole 32-value blocks is refused before anything is allocated.
    let mut cfg = load(&dir("llama_gqa"), 16).config().clone();
    cfg.head_dim = 48;
    let e = wick::runtime::kv_cache::KvCache::new(engine().gpu(), &cfg, 16, KvType::Q8_0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 32") && e.contains("48"), "{e}");
}

/// A q8_0 KV cache against the f16 one on the same weights and tokens: a random prompt and 40
/// greedy steps, teacher-forced (the f16 run's ids fed to both), logits within
/// [`Q8_KV_TOL`] at every position, for the fused decode step (RoPE + q8_0 write in one
/// dispatch) and the plain one (RoPE, then the q8_0 kv_write). Then free-running greedy
/// decode: the same ids up to the first step whose top-1/top-2 margin is within twice the
/// measured logit difference (where rounding may legitimately flip the choice).
#[test]
fn q8_kv_cache_decodes_like_f16() {
    use wick::runtime::DecodeFusion;
    use wick::SessionOptions;
    let steps = 40;
    for name in ["llama_gqa", "qwen2_bias_tied", "qwen3_qknorm"] {
        let model = load(&dir(name), 128);
        let session = |kv_type, fusion| {
            Session::with_options(
                &model,
                SessionOptions {
                    ctx: 128,
                    kv_type,
                    fusion,
                },
            )
            .unwrap()
        };
        let mut f16 = session(KvType::F16, DecodeFusion::ALL);
        let prompt: Vec<u32> = (0..20).map(|_| rand::random::<u32>() % 512).collect();
        let trace = f16.greedy_trace(&prompt, steps).unwrap();
        let mut ids = prompt.clone();
        ids.extend(trace.iter().map(|(id, _)| id));
        let want = f16.logits_all(&ids).unwrap();
        let mut worst = 0.0f32;
        for (label, fusion) in [("fused", DecodeFusion::ALL), ("plain", DecodeFusion::NONE)] {
            let got = session(KvType::Q8_0, fusion).logits_all(&ids).unwrap();
            for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
                let d = max_abs_diff(g, w);
                assert!(
                    d < Q8_KV_TOL,
                    "{name} {label} position {pos}: max |q8_0 - f16 KV logit| = {d} (bound {Q8_KV_TOL})"
                );
                worst = worst.max(d);
            }
        }
        let q8 = session(KvType::Q8_0, DecodeFusion::ALL)
            .greedy_trace(&prompt, steps)
            .unwrap();
        let mut same = 0;
        for (step, ((iq, lq), (i16, l16))) in q8.iter().zip(&trace).enumerate() {
            let d = max_abs_diff(lq, l16);
            if iq != i16 {
                let mut top = l16.clone();
                top.sort_by(|x, y| y.total_cmp(x));
                assert!(
                    top[0] - top[1] < 2.0 * d,
                    "{name} step {step}: greedy {iq} (q8_0) vs {i16} (f16), margin {} > 2 x {d}",
                    top[0] - top[1]
                );
                break;
            }
            same += 1;
        }
        let scale = want.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{name}: max |q8_0 - f16 KV logit| over {} positions: {worst} (bound {Q8_KV_TOL}, \
             max |logit| {scale}); greedy ids equal for {same} of {steps} steps",
            ids.len()
        );
    }
}

/// `wick bench --depth`: decode and prefill are timed after the cached context, the report
/// counts its KV bytes, and a context too short for the depth is refused naming both numbers.
#[test]
fn bench_at_depth_times_tests_after_the_cached_context() {
    use wick::tools::model_bench::{self, BenchOptions};
    let o = BenchOptions {
        prompts: vec![8],
        gen: 4,
        depth: 60,
        reps: 2,
        discard: 0,
        warmup_secs: 0.0,
        slope: None,
        profile: false,
        ceiling_bytes: 1 << 20,
        ..Default::default()
    };
    assert_eq!(o.context(), 60 + 64);
    let model = load(&dir("llama_gqa"), o.context());
    let r = model_bench::run(&model, "llama_gqa", "f32", &o).unwrap();
    assert_eq!(r.depth, 60);
    let (pp, tg) = (r.prefill.as_ref().unwrap(), r.decode.as_ref().unwrap());
    assert_eq!((pp.runs.len(), tg.runs.len()), (2, 2));
    assert!(pp.mean > 0.0 && tg.mean > 0.0, "{pp:?} {tg:?}");
    let cfg = model.config();
    let kv = 2 * cfg.n_layers as u64 * cfg.kv_dim() as u64 * 2 * (60 + 4 / 2 + 1);
    assert_eq!(r.decode_bytes_per_token, r.weight_bytes + kv);
    assert_eq!(r.kv_type, KvType::F16);
    // With a q8_0 cache (`--kv-type q8_0`): head_dim 32 is one block, so a row of 32 values
    // is 32 code bytes and one f32 scale, 36 bytes instead of 64.
    let q8 = load_kv(&dir("llama_gqa"), o.context(), KvType::Q8_0);
    let r8 = model_bench::run(&q8, "llama_gqa", "f32", &o).unwrap();
    assert_eq!(r8.kv_type, KvType::Q8_0);
    assert_eq!(
        r8.decode_bytes_per_token - r8.weight_bytes,
        kv / 64 * 36,
        "q8_0 KV bytes per token"
    );
    // The report says so in JSON; a report from before the field reads as f16.
    let mut j = serde_json::to_value(&r8).unwrap();
    assert_eq!(j["kv_type"], "q8_0");
    j.as_object_mut().unwrap().remove("kv_type");
    let old: model_bench::BenchReport = serde_json::from_value(j).unwrap();
    assert_eq!(old.kv_type, KvType::F16);

    let short = load(&dir("llama_gqa"), 100);
    let e = model_bench::run(&short, "llama_gqa", "f32", &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("124") && e.contains("100"), "{e}");
}

/// `wick bench -p 8,70`: each prompt length is timed and profiled on its own, the whole
/// prefill (a 64-token chunk, then six tokens through the decode step, as `prefill` runs
/// 70), with the first length in the single-length fields; lengths are parsed and checked.
#[test]
fn bench_times_and_profiles_each_prompt_length() {
    use wick::tools::model_bench::{self, parse_prompt_lengths, BenchOptions};
    assert_eq!(parse_prompt_lengths("8,16").unwrap(), [8, 16]);
    assert_eq!(parse_prompt_lengths(" 512 , 4096").unwrap(), [512, 4096]);
    assert_eq!(parse_prompt_lengths("512").unwrap(), [512]);
    assert!(
        parse_prompt_lengths("0").unwrap().is_empty(),
        "-p 0 skips prefill"
    );
    for (bad, says) in [
        ("8,8", "8 is given twice"),
        ("0,16", "above 0"),
        ("8,x", "\"x\" is not a token count"),
        ("", "is not a token count"),
    ] {
        let e = parse_prompt_lengths(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("-p {bad}:")) && e.contains(says), "{e}");
    }

    let o = BenchOptions {
        prompts: vec![8, 70],
        gen: 2,
        reps: 2,
        discard: 0,
        warmup_secs: 0.0,
        slope: None,
        ceiling_bytes: 1 << 20,
        ..Default::default()
    };
    let model = load(&dir("llama_gqa"), o.context());
    let r = model_bench::run(&model, "llama_gqa", "f32", &o).unwrap();
    let lengths: Vec<usize> = r
        .prefill_by_length
        .iter()
        .map(|t| t.prompt_tokens)
        .collect();
    assert_eq!(lengths, [8, 70]);
    assert_eq!(r.prompt_lengths(), [8, 70]);
    for t in &r.prefill_by_length {
        assert_eq!(t.measurement.runs.len(), 2);
        assert!(t.tok_s > 0.0 && t.tok_s == t.measurement.mean, "{t:?}");
    }
    let first = &r.prefill_by_length[0];
    assert_eq!((r.prompt_tokens, r.prefill_tok_s), (8, first.tok_s));
    assert_eq!(r.prefill.as_ref().unwrap().runs, first.measurement.runs);

    let gpu = engine().gpu();
    if wick::gpu::GpuProfiler::inside_passes(gpu) {
        // The embedding runs once per submitted step: one chunk for 8 tokens; a chunk and six
        // single tokens for 70.
        let embeddings = |t: &model_bench::PrefillTest| -> f64 {
            t.profile
                .iter()
                .filter(|p| p.op.starts_with("embedding"))
                .map(|p| p.calls_per_token)
                .sum()
        };
        assert_eq!(embeddings(first), 1.0, "{:?}", first.profile);
        let pp70 = &r.prefill_by_length[1];
        assert_eq!(embeddings(pp70), 7.0, "{:?}", pp70.profile);
        assert!(pp70.profile.iter().any(|p| p.op.starts_with("gemv")));
        let share: f64 = pp70.profile.iter().map(|p| p.share).sum();
        assert!((share - 1.0).abs() < 1e-9, "shares sum to {share}");
        assert_eq!(r.prefill_profile.len(), first.profile.len());
        assert_eq!(r.prefill_chunk, 8);
    }

    // JSON: one entry per length; a report from before the array still loads, its one
    // length compared under the same name.
    let mut j = serde_json::to_value(&r).unwrap();
    let entries = j["prefill_by_length"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["prompt_tokens"], 70);
    assert!(entries[1]["measurement"]["spread_pct"].is_number());
    let names: Vec<String> = model_bench::comparable(&r)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for want in ["prefill_tok_s@8", "prefill_tok_s@70", "decode_tok_s"] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }
    j.as_object_mut().unwrap().remove("prefill_by_length");
    let old: model_bench::BenchReport = serde_json::from_value(j).unwrap();
    assert_eq!(old.prompt_lengths(), [8]);
    let old_names: Vec<String> = model_bench::comparable(&old)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(old_names.iter().any(|n| n == "prefill_tok_s@8"));
    assert!(
        !old_names.iter().any(|n| n.contains("@70")),
        "{old_names:?}"
    );

    // A length the loaded context cannot hold is named with the context.
    let too_long = BenchOptions {
        prompts: vec![8, 200],
        ..o.clone()
    };
    let e = model_bench::run(&model, "llama_gqa", "f32", &too_long)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("-p 200") && e.contains(&model.context().to_string()),
        "{e}"
    );
}
