//! The float GEMV (`kernels::gemv`). The family's check cases (what `wick kernels check` runs:
//! tens of rows at two and four super-blocks, every kind with and without its epilogue; native
//! variants included) run on every format, with the norm prologue on the formats that have
//! native kernels, in [`gemv_family_checks_pass`] and its SwiGLU and QKV siblings. The tests
//! here add what those cases do not reach: few rows and odd lengths, work splits other than
//! the default, writes outside the output range, adversarial norm inputs, the device without
//! subgroups, the tuning table, and argument errors.
use crate::support::*;
use rand::Rng;
use wick::kernels::gemv::{self, GemvConfig, GemvEpilogue};
use wick::kernels::{GpuMatrix, Kernels, Variant};
use wick::quant::WeightFormat;
use wick::reference;

/// All accumulation is f32 (the reference f64): over k <= 4864 products the rounding error
/// stays far below 1e-4 of the largest output; a wrong element, scale or nibble is off by
/// O(1) of it. Bound: |got - want| <= RTOL * max|want| for every element (plus ABS_RTOL, below).
const RTOL: f32 = 1e-4;

/// With few rows the largest output may itself be a cancellation (n = 1: one dot product
/// that happens to be ~1e-3 of its terms), so the bound also allows ABS_RTOL * max_i
/// sum_j |w_ij x_j|: f32 rounding stays near sqrt(k) * 6e-8 of that sum (< 5e-6 at k = 4864,
/// observed ~1e-8), while one wrong weight moves a row by about 1/k of it (>= 2e-4).
const ABS_RTOL: f32 = 1e-6;

thread_local! {
    /// The largest max |got - want| / max |want| [`check_vs`] has seen on this test's thread
    /// (tests report it; each test runs on a thread of its own).
    static WORST: std::cell::Cell<f32> = const { std::cell::Cell::new(0.0) };
}

/// `abs_sum`: max over rows of sum_j |w_ij x_j| (0 for the plain max|want| bound).
fn check_vs(what: &str, got: &[f32], want: &[f32], abs_sum: f32) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let rel = assert_close(
        what,
        got,
        want,
        0.0,
        RTOL * scale.max(1e-30) + ABS_RTOL * abs_sum,
    );
    WORST.with(|w| w.set(w.get().max(rel)));
}

/// max_i sum_j |w_ij x_j| of a row-major n x k matrix.
fn max_abs_dot(w: &[f32], k: usize, x: &[f32]) -> f32 {
    w.chunks_exact(k)
        .map(|row| row.iter().zip(x).map(|(a, b)| (a * b).abs()).sum::<f32>())
        .fold(0.0, f32::max)
}

#[derive(Clone, Copy, Default)]
struct Case {
    bias: bool,
    accumulate: bool,
    out_offset: usize,
    /// Extra poisoned rows after the output range.
    tail: usize,
}

/// Bias, residual accumulate, and an offset output with poisoned rows after it.
const EPILOGUE_CASES: [Case; 4] = [
    Case {
        bias: true,
        accumulate: false,
        out_offset: 0,
        tail: 0,
    },
    Case {
        bias: false,
        accumulate: true,
        out_offset: 0,
        tail: 0,
    },
    Case {
        bias: true,
        accumulate: true,
        out_offset: 3,
        tail: 5,
    },
    Case {
        bias: false,
        accumulate: false,
        out_offset: 1000,
        tail: 13,
    },
];

fn check(
    k: &Kernels,
    format: WeightFormat,
    n: usize,
    kk: usize,
    case: Case,
    cfg: Option<GemvConfig>,
) -> Variant {
    let mut r = rng();
    let g = &k.gpu;
    let (w, wv) = matrix(&mut r, k, format, n, kk);
    let x = rand_vec(&mut r, kk, 1.0);
    let xb = g.upload("x", &x).unwrap();
    let bias = rand_vec(&mut r, n, 2.0);
    let bb = g.upload("bias", &bias).unwrap();
    let prev = rand_vec(&mut r, n, 2.0);
    let len = case.out_offset + n + case.tail;
    let out = poisoned_on(k, len);
    if case.accumulate {
        g.write(&out, (case.out_offset * 4) as u64, &prev);
    }
    let epi = GemvEpilogue {
        bias: case.bias.then_some(&bb),
        accumulate: case.accumulate,
        out_offset: case.out_offset,
        norm: None,
    };
    let d = match cfg {
        Some(c) => gemv::gemv_with_config(k, &w, &xb, &out, epi, &c),
        None => gemv::gemv(k, &w, &xb, &out, epi),
    }
    .unwrap();
    k.run(&[&d]).unwrap();
    let got: Vec<f32> = g.read_vec(&out).unwrap();
    let want = reference::gemv::gemv_epilogue(
        &wv,
        n,
        kk,
        &x,
        case.bias.then_some(&bias[..]),
        case.accumulate.then_some(&prev[..]),
    );
    let what = format!("gemv {} n={n} k={kk} cfg={cfg:?}", format.name());
    check_vs(
        &what,
        &got[case.out_offset..case.out_offset + n],
        &want,
        max_abs_dot(&wv, kk, &x),
    );
    // Outside the output range nothing may be written.
    let untouched = got[..case.out_offset]
        .iter()
        .chain(&got[case.out_offset + n..]);
    for v in untouched {
        assert_eq!(v.to_bits(), POISON, "{what}: wrote outside out_offset..+n");
    }
    d.pipeline.variant
}

/// `kk` rounded up to whole blocks of `f` (the K-quants' 256): 576 -> 768 (3 super-blocks,
/// an odd count for the paired Q6_K scales), 896 -> 1024, 4864 stays (19).
fn fit(f: WeightFormat, kk: usize) -> usize {
    kk.next_multiple_of(f.k_multiple())
}

/// The family's check cases on the GEMV pipelines of one kind (`gemv`, `gemv_swiglu`,
/// `gemv_qkv`; portable, and native where this adapter runs one), within this file's bound:
/// on Vulkan and Metal the native variant of every format it covers must run, no silent skip.
///
/// Every format without the norm prologue, and with it the formats that have native kernels.
/// The prologue (`prologue` and `x_at` in gemv.wgsl) is the same code for every format but for
/// the activation load layout, contiguous (Q8_0) or word units (Q4_0, Q4_1), both among those;
/// `gemv_norm_prologue` adds F16 and Q4_K on adversarial inputs. The norm cases on the other
/// formats would cost about 4 s of pipeline builds on lavapipe (Q5 and K-quant pipelines take
/// 0.1 to 0.5 s each) for code those runs already reach.
fn family_checks_of_kind(kind: &str) {
    let of_kind = |s: &wick::kernels::KernelSpec| {
        wick::kernels::op_format(&s.op).is_some_and(|f| s.op == format!("{kind}_{}", f.name()))
    };
    let norm = |s: &wick::kernels::KernelSpec| s.defines.contains(&"NORM");
    let specs: Vec<_> = family_pipelines(&gemv::FAMILY)
        .into_iter()
        .filter(|s| of_kind(s) && (!norm(s) || s.has_native()))
        .collect();
    let natives = gemv::native_specs().into_iter().filter(of_kind).count();
    // Every format, and the native formats with the norm prologue.
    assert_eq!(
        specs.len(),
        WeightFormat::ALL.len() + natives / 2,
        "{kind} pipelines"
    );
    // max |d| / max |want| <= RTOL: at least as strict as `check_vs` (the tool's bound, which
    // must hold on every GPU, is looser).
    let r = run_family_checks(&specs, |_| RTOL as f64);
    let caps = &kernels().gpu.caps;
    let native = match caps.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal => {
            assert!(
                caps.passthrough_shaders && caps.subgroup,
                "the test device must offer PASSTHROUGH_SHADERS and subgroups"
            );
            assert!(natives > 0, "no native {kind} pipeline");
            natives
        }
        _ => 0,
    };
    // Two cases per pipeline.
    assert_eq!(rows_of(&r, Variant::Portable), 2 * specs.len());
    assert_eq!(
        rows_of(&r, Variant::Native),
        2 * native,
        "{kind}: native rows"
    );
}

#[test]
fn gemv_family_checks_pass() {
    family_checks_of_kind("gemv");
}

#[test]
fn gemv_swiglu_family_checks_pass() {
    family_checks_of_kind("gemv_swiglu");
}

#[test]
fn gemv_qkv_family_checks_pass() {
    family_checks_of_kind("gemv_qkv");
}

/// Fewer rows than a workgroup (7) and one row (whose largest output may be a cancellation:
/// ABS_RTOL), at one super-block, an odd count of them (576 -> 768) and a long row (4864).
#[test]
fn gemv_few_rows_odd_lengths() {
    let k = kernels();
    for f in WeightFormat::ALL {
        let mut ks: Vec<usize> = [256, 576, 4864].map(|kk| fit(f, kk)).to_vec();
        ks.dedup();
        for kk in ks {
            for n in [7, 1] {
                check(k, f, n, kk, Case::default(), None);
            }
        }
    }
}

/// Work splits other than the default: wide groups reduced in workgroup memory, one lane
/// per row, many rows per group, split-K across a whole workgroup.
#[test]
fn gemv_configs() {
    let k = kernels();
    let caps = &k.gpu.caps;
    let sg = caps.subgroup;
    let configs = [
        GemvConfig {
            lanes_per_row: 32,
            rows_per_group: 2,
            workgroup_size: 64,
            subgroup_reduce: false,
        },
        GemvConfig {
            lanes_per_row: 1,
            rows_per_group: 3,
            workgroup_size: 32,
            subgroup_reduce: sg,
        },
        GemvConfig {
            lanes_per_row: 4,
            rows_per_group: 8,
            workgroup_size: 64,
            subgroup_reduce: sg,
        },
        GemvConfig {
            lanes_per_row: 256,
            rows_per_group: 2,
            workgroup_size: 256,
            subgroup_reduce: false,
        },
    ];
    for f in WeightFormat::ALL {
        for c in configs {
            check(k, f, 37, fit(f, 896), Case::default(), Some(c));
        }
    }
}

#[test]
fn gemv_epilogues() {
    let k = kernels();
    for f in [
        WeightFormat::F16,
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
        WeightFormat::Q5_0,
        WeightFormat::Q6K,
    ] {
        for c in EPILOGUE_CASES {
            check(k, f, 100, fit(f, 576), c, None);
        }
    }
}

/// The lm_head: 49152 rows, the default config.
#[test]
fn gemv_lm_head() {
    check(
        kernels(),
        WeightFormat::Q4_0,
        49152,
        576,
        Case::default(),
        None,
    );
}

/// More workgroups than one grid dimension holds: rows must continue in grid y.
#[test]
fn gemv_grid_wraps() {
    let k = kernels();
    let max = k.gpu.caps.max_compute_workgroups_per_dimension as usize;
    let one = GemvConfig {
        lanes_per_row: 1,
        rows_per_group: 1,
        workgroup_size: 1,
        subgroup_reduce: false,
    };
    check(
        k,
        WeightFormat::Q4_0,
        max + 1000,
        32,
        Case::default(),
        Some(one),
    );
}

fn check_swiglu(
    k: &Kernels,
    format: WeightFormat,
    n: usize,
    kk: usize,
    cfg: Option<GemvConfig>,
) -> Variant {
    let mut r = rng();
    let g = &k.gpu;
    let (gate, gv) = matrix(&mut r, k, format, n, kk);
    let (up, uv) = matrix(&mut r, k, format, n, kk);
    let x = rand_vec(&mut r, kk, 1.0);
    let xb = g.upload("x", &x).unwrap();
    let out = poisoned_on(k, n);
    let d = match cfg {
        Some(c) => gemv::gemv_swiglu_with_config(k, &gate, &up, &xb, &out, &c),
        None => gemv::gemv_swiglu(k, &gate, &up, &xb, &out),
    }
    .unwrap();
    k.run(&[&d]).unwrap();
    let want = reference::gemv::gemv_swiglu(&gv, &uv, n, kk, &x);
    // silu(g) * u: relative error of the products <= that of the factors (~1e-6), so the
    // GEMV bound carries over.
    check_vs(
        &format!("gemv_swiglu {} n={n} k={kk} cfg={cfg:?}", format.name()),
        &g.read_vec::<f32>(&out).unwrap(),
        &want,
        0.0,
    );
    d.pipeline.variant
}

/// Gate+up SwiGLU on fewer rows than a workgroup, at an odd count of super-blocks.
#[test]
fn gemv_swiglu_few_rows() {
    let k = kernels();
    for f in WeightFormat::ALL {
        check_swiglu(k, f, 7, fit(f, 576), None);
    }
}

#[test]
fn gemv_without_subgroups() {
    let k = kernels_no_subgroup();
    for f in WeightFormat::ALL {
        check(k, f, 100, fit(f, 576), Case::default(), None);
        check(
            k,
            f,
            7,
            4864,
            Case {
                bias: true,
                accumulate: true,
                out_offset: 2,
                tail: 1,
            },
            None,
        );
        check_swiglu(k, f, 33, fit(f, 896), None);
    }
}

#[test]
fn gemv_rejects_bad_input() {
    let k = kernels();
    let g = &k.gpu;
    let mut r = rng();
    let (w, _) = matrix(&mut r, k, WeightFormat::Q4_0, 8, 64);
    let x = g.upload("x", &[0.0f32; 64]).unwrap();
    let short_x = g.upload("x", &[0.0f32; 32]).unwrap();
    let out = poisoned(8);
    let short_bias = g.upload("b", &[0.0f32; 4]).unwrap();
    let shape = |e: wick::Error| matches!(e, wick::Error::Shape(_));
    assert!(shape(
        gemv::gemv(k, &w, &short_x, &out, GemvEpilogue::default()).unwrap_err()
    ));
    let off = GemvEpilogue {
        out_offset: 1,
        ..Default::default()
    };
    assert!(shape(gemv::gemv(k, &w, &x, &out, off).unwrap_err()));
    let bias = GemvEpilogue {
        bias: Some(&short_bias),
        ..Default::default()
    };
    assert!(shape(gemv::gemv(k, &w, &x, &out, bias).unwrap_err()));
    // A matrix claiming more rows than its planes hold.
    let lying = GpuMatrix {
        n: 16,
        ..clone_matrix(g, &w)
    };
    assert!(shape(
        gemv::gemv(k, &lying, &x, &poisoned(16), GemvEpilogue::default()).unwrap_err()
    ));
    // A k that is not whole blocks.
    let bad_k = GpuMatrix {
        k: 48,
        ..clone_matrix(g, &w)
    };
    assert!(shape(
        gemv::gemv(k, &bad_k, &x, &out, GemvEpilogue::default()).unwrap_err()
    ));
    // SwiGLU of mismatched shapes.
    let (w2, _) = matrix(&mut r, k, WeightFormat::Q4_0, 4, 64);
    assert!(shape(gemv::gemv_swiglu(k, &w, &w2, &x, &out).unwrap_err()));
    // An impossible config is an argument error, not a shader failure.
    let cfg = GemvConfig {
        lanes_per_row: 3,
        rows_per_group: 1,
        workgroup_size: 3,
        subgroup_reduce: false,
    };
    assert!(gemv::gemv_with_config(k, &w, &x, &out, GemvEpilogue::default(), &cfg).is_err());
}

fn clone_matrix(g: &wick::gpu::Gpu, w: &GpuMatrix) -> GpuMatrix {
    let _ = g;
    GpuMatrix {
        format: w.format,
        n: w.n,
        k: w.k,
        qs: w.qs.clone(),
        scales: w.scales.clone(),
    }
}

/// The default split is valid on this device for every format and the model shapes.
#[test]
fn gemv_default_configs_are_valid() {
    let caps = &kernels().gpu.caps;
    for f in WeightFormat::ALL {
        for (n, kk) in [(1, 32), (576, 576), (1152, 896), (896, 4864), (151936, 896)] {
            let c = gemv::choose_config(caps, f, n, kk);
            c.validate(caps, false).unwrap();
            assert!(c.rows_per_workgroup() >= 1);
        }
    }
}

/// What the RMSNorm prologue reads as its residual x.
#[derive(Clone, Copy, Debug, PartialEq)]
enum NormInput {
    /// No prologue (QKV only).
    Off,
    /// |x| ~ 3 with one channel at 250 (~100x the rest, as real models have), so a wrong
    /// scale or a missing weight shows; the epsilon is ~1e-6 of the mean square here.
    Spread,
    /// |x| <= 1e-3: a mean square of ~3e-7, below the epsilon (1e-5; QKV: 1e-6), which then
    /// sets the scale: a missing epsilon scales the outputs 2-6x, one 10% off moves them by
    /// 4-5%, far above the bound.
    Tiny,
}

impl NormInput {
    fn residual(self, r: &mut impl Rng, kk: usize) -> Vec<f32> {
        match self {
            NormInput::Off => rand_vec(r, kk, 2.0),
            NormInput::Spread => {
                let mut x = rand_vec(r, kk, 3.0);
                x[kk / 3] = 250.0;
                x
            }
            NormInput::Tiny => rand_vec(r, kk, 1e-3),
        }
    }
}

/// The RMSNorm prologue: GEMV (and gate+up SwiGLU) of the raw residual x with the norm
/// applied on load equals the reference rmsnorm followed by the reference GEMV.
fn check_norm(
    k: &Kernels,
    format: WeightFormat,
    (n, kk): (usize, usize),
    swiglu: bool,
    cfg: Option<GemvConfig>,
    input: NormInput,
) -> Variant {
    assert_ne!(input, NormInput::Off, "check_norm checks the prologue");
    let mut r = rng();
    let g = &k.gpu;
    let x = input.residual(&mut r, kk);
    let nw: Vec<f32> = rand_vec(&mut r, kk, 0.5).iter().map(|v| 1.0 + v).collect();
    let eps = 1e-5;
    let normed = reference::rmsnorm::rmsnorm(&x, &nw, kk, eps);
    let (xb, nwb) = (g.upload("x", &x).unwrap(), g.upload("nw", &nw).unwrap());
    let out = poisoned_on(k, n);
    let (w, wv) = matrix(&mut r, k, format, n, kk);
    let what = format!(
        "gemv norm prologue {} n={n} k={kk} swiglu={swiglu} cfg={cfg:?} x {input:?}",
        format.name()
    );
    let norm = (&nwb, eps);
    let (want, d) = if swiglu {
        let (up, uv) = matrix(&mut r, k, format, n, kk);
        let d = match cfg {
            Some(c) => gemv::gemv_swiglu_with_config_norm(k, &w, &up, &xb, &out, &c, Some(norm)),
            None => gemv::gemv_swiglu_normed(k, &w, &up, &xb, norm, &out),
        };
        (reference::gemv::gemv_swiglu(&wv, &uv, n, kk, &normed), d)
    } else {
        let epi = GemvEpilogue {
            norm: Some(norm),
            ..Default::default()
        };
        let d = match cfg {
            Some(c) => gemv::gemv_with_config(k, &w, &xb, &out, epi, &c),
            None => gemv::gemv(k, &w, &xb, &out, epi),
        };
        (reference::gemv::gemv(&wv, n, kk, &normed), d)
    };
    let d = d.unwrap();
    k.run(&[&d]).unwrap();
    // The norm adds one f32 scale rounding per element (~1e-7 relative) to the GEMV's error.
    check_vs(
        &what,
        &g.read_vec::<f32>(&out).unwrap(),
        &want,
        max_abs_dot(&wv, kk, &normed),
    );
    d.pipeline.variant
}

#[test]
fn gemv_norm_prologue() {
    for k in [kernels(), kernels_no_subgroup()] {
        for f in [
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
            WeightFormat::Q8_0,
            WeightFormat::F16,
            WeightFormat::Q4K,
        ] {
            for (n, kk) in [(100, 576), (33, 1536)] {
                for input in [NormInput::Spread, NormInput::Tiny] {
                    check_norm(k, f, (n, fit(f, kk)), false, None, input);
                    check_norm(k, f, (n, fit(f, kk)), true, None, input);
                }
            }
        }
    }
}

/// The fused QKV GEMV against three reference GEMVs: q, k, v of different row counts (GQA),
/// with and without biases and the norm prologue, every output poisoned first.
fn check_qkv(
    k: &Kernels,
    format: WeightFormat,
    nq: usize,
    nkv: usize,
    kk: usize,
    bias: bool,
    input: NormInput,
) -> Variant {
    let mut r = rng();
    let g = &k.gpu;
    let norm = input != NormInput::Off;
    let x = input.residual(&mut r, kk);
    let nw: Vec<f32> = rand_vec(&mut r, kk, 0.5).iter().map(|v| 1.0 + v).collect();
    // Tiny x (mean square ~3e-7) against this epsilon: three quarters of the denominator.
    let eps = 1e-6;
    let xin = if norm {
        reference::rmsnorm::rmsnorm(&x, &nw, kk, eps)
    } else {
        x.clone()
    };
    let (xb, nwb) = (g.upload("x", &x).unwrap(), g.upload("nw", &nw).unwrap());
    let ns = [nq, nkv, nkv];
    let mats: Vec<(GpuMatrix, Vec<f32>)> = ns
        .iter()
        .map(|&n| matrix(&mut r, k, format, n, kk))
        .collect();
    let biases: Vec<Vec<f32>> = ns.iter().map(|&n| rand_vec(&mut r, n, 1.0)).collect();
    let bbufs: Vec<wgpu::Buffer> = biases.iter().map(|b| g.upload("b", b).unwrap()).collect();
    let outs: Vec<wgpu::Buffer> = ns.iter().map(|&n| poisoned_on(k, n)).collect();
    let what = format!(
        "gemv_qkv {} {nq}/{nkv} k={kk} bias={bias} norm={input:?}",
        format.name()
    );
    if !gemv::qkv_supported(&g.caps, &mats[0].0, &mats[1].0, &mats[2].0) {
        panic!("{what}: not supported on this device");
    }
    let d = gemv::gemv_qkv(
        k,
        [&mats[0].0, &mats[1].0, &mats[2].0],
        &xb,
        bias.then(|| [&bbufs[0], &bbufs[1], &bbufs[2]]),
        [&outs[0], &outs[1], &outs[2]],
        norm.then_some((&nwb, eps)),
    )
    .unwrap();
    k.run(&[&d]).unwrap();
    for i in 0..3 {
        let mut want = reference::gemv::gemv(&mats[i].1, ns[i], kk, &xin);
        if bias {
            want.iter_mut().zip(&biases[i]).for_each(|(w, b)| *w += b);
        }
        let abs_sum = max_abs_dot(&mats[i].1, kk, &xin) + if bias { 1.0 } else { 0.0 };
        check_vs(
            &format!("{what} matrix {i}"),
            &g.read_vec::<f32>(&outs[i]).unwrap(),
            &want,
            abs_sum,
        );
    }
    d.pipeline.variant
}

/// QKV with the adversarial norm inputs, and without subgroups also on plain inputs (with
/// subgroups those are the check cases).
#[test]
fn gemv_qkv_fused() {
    for (k, plain) in [(kernels(), false), (kernels_no_subgroup(), true)] {
        for f in [
            WeightFormat::Q4_1,
            WeightFormat::Q8_0,
            WeightFormat::F32,
            WeightFormat::Q4K,
        ] {
            let kk = fit(f, 576);
            check_qkv(k, f, 576, 192, kk, false, NormInput::Spread);
            check_qkv(k, f, 128, 64, kk, true, NormInput::Tiny);
            if plain {
                check_qkv(k, f, 128, 64, kk, true, NormInput::Off);
            }
        }
    }
}

/// `wick tune`'s table: a measured split is used for its shape (and computes the same
/// result), an entry the device cannot run falls back to the built-in choice, and the file
/// round-trips while malformed or foreign files are ignored.
#[test]
fn gemv_uses_the_tuning_table() {
    use wick::kernels::tuning::{TuneEntry, TuningTable};
    let base = kernels();
    let caps = &base.gpu.caps;
    let entry = |op: &str, n: usize, lpr: u32, rpg: u32, wg: u32| TuneEntry {
        op: op.into(),
        format: WeightFormat::Q8_0,
        n,
        k: 576,
        lanes_per_row: lpr,
        rows_per_group: rpg,
        workgroup_size: wg,
        us: 1.0,
        default_us: 2.0,
    };
    let mut table = TuningTable::for_device(caps);
    table.entries = vec![
        entry("gemv", 100, 4, 2, 32),
        entry("gemv_swiglu", 100, 8, 1, 64),
        // Not a power of two: refused, so the built-in split is used.
        entry("gemv", 7, 3, 1, 33),
    ];
    let tuned =
        Kernels::with_policy(base.gpu.clone(), Default::default()).with_tuning(Some(table.clone()));
    let c = gemv::config_for(&tuned, "gemv", WeightFormat::Q8_0, 100, 576);
    assert_eq!(
        (c.lanes_per_row, c.rows_per_group, c.workgroup_size),
        (4, 2, 32)
    );
    let c = gemv::config_for(&tuned, "gemv_swiglu", WeightFormat::Q8_0, 100, 576);
    assert_eq!(
        (c.lanes_per_row, c.rows_per_group, c.workgroup_size),
        (8, 1, 64)
    );
    assert_eq!(
        gemv::config_for(&tuned, "gemv", WeightFormat::Q8_0, 7, 576),
        gemv::choose_config(caps, WeightFormat::Q8_0, 7, 576)
    );
    // The tuned split computes the same product.
    let mut r = rng();
    let (w, wv) = matrix(&mut r, &tuned, WeightFormat::Q8_0, 100, 576);
    let x = rand_vec(&mut r, 576, 1.0);
    let xb = tuned.gpu.upload("x", &x).unwrap();
    let out = poisoned_on(&tuned, 100);
    let d = gemv::gemv(&tuned, &w, &xb, &out, GemvEpilogue::default()).unwrap();
    tuned.run(&[&d]).unwrap();
    check_vs(
        "gemv with a tuned split",
        &tuned.gpu.read_vec::<f32>(&out).unwrap(),
        &reference::gemv::gemv(&wv, 100, 576, &x),
        max_abs_dot(&wv, 576, &x),
    );
    // File round trip; malformed and foreign files are ignored.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune/device.json");
    table.save(&path).unwrap();
    assert_eq!(TuningTable::load(&path, caps), Some(table.clone()));
    std::fs::write(&path, "{ not json").unwrap();
    assert_eq!(TuningTable::load(&path, caps), None);
    let mut foreign = table;
    foreign.adapter = "some other GPU".into();
    foreign.save(&path).unwrap();
    assert_eq!(TuningTable::load(&path, caps), None);
    assert_eq!(
        TuningTable::load(&dir.path().join("missing.json"), caps),
        None
    );
}

/// A registry that prefers native kernels on a device with SUBGROUP turned off.
fn kernels_native_no_subgroup() -> &'static Kernels {
    static K: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let policy = wick::kernels::KernelPolicy {
            default: wick::kernels::KernelChoice::Native,
            per_op: Default::default(),
        };
        Kernels::with_policy(kernels_no_subgroup().gpu.clone(), policy)
    })
}

/// A split with `lpr` lanes per row (the native kernels take only the lanes per row).
fn lanes(lpr: u32) -> GemvConfig {
    GemvConfig {
        lanes_per_row: lpr,
        rows_per_group: 1,
        workgroup_size: 256,
        subgroup_reduce: false,
    }
}

/// The native GEMV kernels (SPIR-V on Vulkan, MSL on Metal) against the reference, on the
/// same planes as the WGSL kernel, beyond the check cases (which run every format x kind on
/// the natives' fixed split): lanes per row from one lane to the whole workgroup, every
/// epilogue with writes outside the output range, the adversarial norm inputs, QKV
/// boundaries inside workgroups, asserting each time that the native variant really ran.
#[test]
fn gemv_native_kernels() {
    let k = kernels_native();
    let caps = &k.gpu.caps;
    if !matches!(caps.backend, wgpu::Backend::Vulkan | wgpu::Backend::Metal) {
        eprintln!(
            "skipping: native GEMV kernels are SPIR-V or MSL (backend {})",
            caps.backend
        );
        return;
    }
    assert!(
        caps.passthrough_shaders && caps.subgroup,
        "the test device must offer PASSTHROUGH_SHADERS and subgroups"
    );
    let native = Variant::Native;
    // Every spec the registry lists resolves to a native module that builds here.
    let specs = gemv::native_specs();
    assert_eq!(specs.len(), 6 * gemv::NATIVE_FORMATS.len());
    for s in &specs {
        assert_eq!(k.variant_for(s).unwrap(), native, "{}", s.op);
        k.pipeline_variant(s, native).unwrap();
    }
    let with_plain: Vec<Case> = std::iter::once(Case::default())
        .chain(EPILOGUE_CASES)
        .collect();
    for f in gemv::NATIVE_FORMATS {
        WORST.with(|w| w.set(0.0));
        // Lanes per row: one; inside one subgroup (lavapipe's is 8, NVIDIA's 32); whole
        // subgroups combined in workgroup memory; the whole workgroup on one row. k = 1088 is
        // 34 blocks (136 Q4 / 272 Q8 units per row): not a multiple of the four-unit step
        // of most splits, so the tail loop runs too; the K-quants take 1280, 5 super-blocks
        // (80 of their two-word units: the tail runs from 8 lanes per row up; an odd count for
        // Q6_K's paired scales), and 576 becomes 768 (3). n = 37 leaves the last workgroup
        // part-filled for every split but 256 lanes.
        let (long, short) = (fit(f, 1088), fit(f, 576));
        for lpr in [1, 4, 8, 32, 64, 256] {
            let c = Some(lanes(lpr));
            assert_eq!(check(k, f, 37, long, Case::default(), c), native);
            assert_eq!(check_swiglu(k, f, 37, long, c), native);
        }
        for c in EPILOGUE_CASES {
            assert_eq!(check(k, f, 100, short, c, None), native);
        }
        for &c in &with_plain {
            assert_eq!(check(k, f, 21, long, c, Some(lanes(16))), native);
        }
        // The norm prologue: k4 = 272 (K-quants 320) > 256 lanes, so some lanes sum two vec4s.
        for (n, kk, c) in [(100, short, None), (33, long, Some(lanes(32)))] {
            for input in [NormInput::Spread, NormInput::Tiny] {
                assert_eq!(check_norm(k, f, (n, kk), false, c, input), native);
                assert_eq!(check_norm(k, f, (n, kk), true, c, input), native);
            }
        }
        // QKV: q/k/v boundaries inside workgroups, with and without biases and the norm; the
        // adversarial norm inputs also at 128/64 rows.
        for (bias, input) in [
            (false, NormInput::Off),
            (true, NormInput::Off),
            (false, NormInput::Spread),
            (true, NormInput::Tiny),
        ] {
            assert_eq!(check_qkv(k, f, 100, 20, long, bias, input), native);
        }
        for (bias, input) in [(false, NormInput::Spread), (true, NormInput::Tiny)] {
            assert_eq!(check_qkv(k, f, 128, 64, short, bias, input), native);
        }
        eprintln!(
            "native gemv {}: max |got - want| / max |want| = {:.2e}",
            f.name(),
            WORST.with(|w| w.get())
        );
    }
    // Without subgroups the native kernels are not offered: the WGSL kernel runs.
    let ns = kernels_native_no_subgroup();
    let f = WeightFormat::Q4_0;
    assert_eq!(
        check(ns, f, 37, 576, Case::default(), None),
        Variant::Portable
    );
    assert_eq!(check_swiglu(ns, f, 37, 576, None), Variant::Portable);
    assert_eq!(
        check_qkv(ns, f, 64, 32, 576, true, NormInput::Spread),
        Variant::Portable
    );
}
