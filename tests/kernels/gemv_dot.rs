//! The integer-dot GEMV (`kernels::gemv_dot`): the activation quantiser against GGML's Q8_1
//! rule, and every format and kind against two references on fresh random inputs:
//! - the same quantised arithmetic: the f64 product of the exact weights and the activations
//!   as the GPU quantised them (read back), bounded as the float GEMV (f32 accumulation);
//! - the unquantised product: the f64 product with the f32 activations, bounded by the
//!   activation rounding. Round-to-nearest moves each activation by at most d/2, d =
//!   max|x| / 127 of its block of 32, so a row w moves by at most
//!   sum over blocks of d_b / 2 * sum_{j in b} |w_j| (`reference::act_q8::rounding_bound`);
//!   the bound adds the f32 accumulation allowance and nothing else.
use crate::support::*;
use rand::Rng;
use wick::gpu::Gpu;
use wick::kernels::gemv_dot::{self, DotEpilogue, DOT_FORMATS};
use wick::kernels::Kernels;
use wick::quant::WeightFormat;
use wick::reference;
use wick::reference::act_q8::{dequantize, packed_words, rounding_bound, unpack_parts};

/// f32 accumulation against an f64 reference of the same values (as tests/kernels/gemv.rs).
const RTOL: f64 = 1e-4;
const ABS_RTOL: f64 = 1e-6;

fn read_u32(g: &Gpu, b: &wgpu::Buffer) -> Vec<u32> {
    g.read_vec::<u32>(b).unwrap()
}

/// Quantises x on the GPU (optionally normalised); returns the packed words.
fn quantise_on_gpu(k: &Kernels, x: &[f32], norm: Option<(&[f32], f32)>) -> Vec<u32> {
    let g = &k.gpu;
    let xb = g.upload("x", x).unwrap();
    let nb = norm.map(|(w, _)| g.upload("norm", w).unwrap());
    let xq = poisoned_on(k, packed_words(x.len()));
    let d = gemv_dot::act_q8(
        k,
        &xb,
        x.len(),
        &xq,
        nb.as_ref().zip(norm).map(|(b, (_, e))| (b, e)),
    )
    .unwrap();
    k.run(&[&d]).unwrap();
    read_u32(g, &xq)
}

#[test]
fn act_q8_follows_q8_1() {
    let mut r = rng();
    for (k, norm) in [(352usize, false), (1024, false), (1056, true)] {
        let scale = r.random_range(0.1..4.0);
        let mut x = rand_vec(&mut r, k, scale);
        // One all-zero block: d = 0 and zero quants, no NaN from 0/0.
        x[32..64].fill(0.0);
        let nw: Vec<f32> = (0..k).map(|_| r.random_range(0.5..1.5)).collect();
        let eps = 1e-5;
        let words = quantise_on_gpu(kernels(), &x, norm.then_some((&nw[..], eps)));
        let xr = match norm {
            true => reference::rmsnorm::rmsnorm(&x, &nw, k, eps),
            false => x.clone(),
        };
        let want = reference::act_q8::quantize(&xr);
        let (q, d, s) = unpack_parts(&words, k);
        let (wq, wd, _) = unpack_parts(&want, k);
        assert_eq!(d[1], 0.0, "k {k}: zero block's d");
        for b in 0..k / 32 {
            let rel = (d[b] - wd[b]).abs() / wd[b].max(f32::MIN_POSITIVE);
            assert!(
                rel <= 1e-5,
                "k {k} norm {norm}: block {b} d {} want {}",
                d[b],
                wd[b]
            );
            let blk = &q[32 * b..32 * b + 32];
            let sum: i32 = blk.iter().map(|&v| v as i32).sum();
            assert_eq!(s[b], d[b] * sum as f32, "k {k}: block {b} d * sum(q)");
            for (e, &v) in blk.iter().enumerate() {
                let i = 32 * b + e;
                // Ties and the f32 reciprocal may round the other way: one step at most,
                // and never further than half a step (plus the norm's f32 rounding) from x.
                assert!(
                    (v as i32 - wq[i] as i32).abs() <= 1 && v != i8::MIN,
                    "k {k}: element {i} q {v} want {}",
                    wq[i]
                );
                let err = (v as f32 * d[b] - xr[i]).abs();
                assert!(
                    err <= 0.5 * d[b] * 1.001 + 1e-6 * xr[i].abs(),
                    "k {k}: element {i}: |q d - x| = {err}, d = {}",
                    d[b]
                );
            }
        }
    }
}

#[test]
fn act_q8_rejects_bad_shapes() {
    let k = kernels();
    let x = k.gpu.upload("x", &[0.0f32; 64]).unwrap();
    let xq = k.gpu.storage_buffer("xq", 4).unwrap();
    assert!(gemv_dot::act_q8(k, &x, 48, &xq, None).is_err(), "k % 32");
    assert!(
        gemv_dot::act_q8(k, &x, 64, &xq, None).is_err(),
        "xq too small"
    );
    let xq = gemv_dot::act_q8_buffer(&k.gpu, 128).unwrap();
    assert!(
        gemv_dot::act_q8(k, &x, 128, &xq, None).is_err(),
        "x too small"
    );
}

/// Both references of one output vector: `exact` the f64 product with the f32 activations,
/// `emul` with the GPU's quantised activations; `bound` the activation rounding per row.
struct Want {
    emul: Vec<f32>,
    exact: Vec<f32>,
    bound: Vec<f64>,
    abs_sum: f64,
}

fn check_both(what: &str, got: &[f32], w: &Want) {
    let scale = w.emul.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let f32_tol = RTOL * scale + ABS_RTOL * w.abs_sum;
    for (i, &g) in got.iter().enumerate() {
        assert!(g.is_finite(), "{what}: row {i} is {g} (never written?)");
        let de = (g as f64 - w.emul[i] as f64).abs();
        assert!(
            de <= f32_tol,
            "{what}: row {i}: {g} vs the quantised arithmetic {}: |d| {de} > {f32_tol}",
            w.emul[i]
        );
        let dx = (g as f64 - w.exact[i] as f64).abs();
        let b = w.bound[i] + f32_tol;
        assert!(
            dx <= b,
            "{what}: row {i}: {g} vs the unquantised product {}: |d| {dx} > rounding bound {b}",
            w.exact[i]
        );
    }
}

/// max_i sum_j |w_ij x_j|.
fn abs_sum(w: &[f32], k: usize, x: &[f32]) -> f64 {
    w.chunks_exact(k)
        .map(|row| {
            row.iter()
                .zip(x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum::<f64>()
        })
        .fold(0.0, f64::max)
}

fn want(wv: &[f32], n: usize, k: usize, x: &[f32], xq: &[f32], d: &[f32]) -> Want {
    Want {
        emul: reference::gemv::gemv(wv, n, k, xq),
        exact: reference::gemv::gemv(wv, n, k, x),
        bound: rounding_bound(wv, k, d),
        abs_sum: abs_sum(wv, k, x),
    }
}

fn row_len(f: WeightFormat) -> usize {
    if f.k_multiple() > 32 {
        768
    } else {
        352
    }
}

fn plain_cases(k: &Kernels, tag: &str) {
    let mut r = rng();
    for f in DOT_FORMATS {
        let kk = row_len(f);
        for (n, bias, acc, off) in [(33usize, false, false, 0usize), (40, true, true, 3)] {
            let what = format!("{tag} gemv_dot {} {n}x{kk} bias {bias} acc {acc}", f.name());
            let (w, wv) = matrix(&mut r, k, f, n, kk);
            let x = rand_vec(&mut r, kk, 1.0);
            let xb = k.gpu.upload("x", &x).unwrap();
            let xq = gemv_dot::act_q8_buffer(&k.gpu, kk).unwrap();
            let b = rand_vec(&mut r, n, 1.0);
            let prev = rand_vec(&mut r, n, 1.0);
            let bb = k.gpu.upload("b", &b).unwrap();
            let out = poisoned_on(k, off + n + 2);
            if acc {
                k.gpu.write(&out, (off * 4) as u64, &prev);
            }
            let dq = gemv_dot::act_q8(k, &xb, kk, &xq, None).unwrap();
            let epi = DotEpilogue {
                bias: bias.then_some(&bb),
                accumulate: acc,
                out_offset: off,
            };
            let d = gemv_dot::gemv_dot(k, &w, &xq, &out, epi).unwrap();
            k.run(&[&dq, &d]).unwrap();
            let got: Vec<f32> = k.gpu.read_vec(&out).unwrap();
            let words = read_u32(&k.gpu, &xq);
            let (_, dsc, _) = unpack_parts(&words, kk);
            let mut wt = want(&wv, n, kk, &x, &dequantize(&words, kk), &dsc);
            for i in 0..n {
                let add = if bias { b[i] } else { 0.0 } + if acc { prev[i] } else { 0.0 };
                wt.emul[i] += add;
                wt.exact[i] += add;
            }
            check_both(&what, &got[off..off + n], &wt);
            // Rows outside the output range stay poisoned.
            assert!(
                got[off + n..].iter().all(|v| v.is_nan()),
                "{what}: wrote past the end"
            );
            assert!(
                got[..off].iter().all(|v| v.is_nan()),
                "{what}: wrote before the offset"
            );
        }
    }
}

#[test]
fn gemv_dot_plain_every_format() {
    plain_cases(kernels(), "subgroup");
}

#[test]
fn gemv_dot_plain_without_subgroups() {
    plain_cases(kernels_no_subgroup(), "no subgroup");
}

#[test]
fn gemv_dot_swiglu_and_qkv_every_format() {
    let k = kernels();
    let mut r = rng();
    for f in DOT_FORMATS {
        let kk = row_len(f);
        let x = rand_vec(&mut r, kk, 1.0);
        let xb = k.gpu.upload("x", &x).unwrap();
        let xq = gemv_dot::act_q8_buffer(&k.gpu, kk).unwrap();
        let dq = gemv_dot::act_q8(k, &xb, kk, &xq, None).unwrap();
        k.run(&[&dq]).unwrap();
        let words = read_u32(&k.gpu, &xq);
        let (_, dsc, _) = unpack_parts(&words, kk);
        let xd = dequantize(&words, kk);

        // gate+up+SwiGLU: against both references of silu(gate x) * (up x).
        let n = 37;
        let (gm, gv) = matrix(&mut r, k, f, n, kk);
        let (um, uv) = matrix(&mut r, k, f, n, kk);
        let out = poisoned_on(k, n);
        let d = gemv_dot::gemv_dot_swiglu(k, &gm, &um, &xq, &out).unwrap();
        k.run(&[&d]).unwrap();
        let got: Vec<f32> = k.gpu.read_vec(&out).unwrap();
        let emul = reference::gemv::gemv_swiglu(&gv, &uv, n, kk, &xd);
        let exact = reference::gemv::gemv_swiglu(&gv, &uv, n, kk, &x);
        // silu(g) * u moves by at most |silu'(g)| |dg| |u| + |silu(g)| |du| (+ second order);
        // |silu'| <= 1.1, and g, u move by at most their rounding bounds.
        let bg = rounding_bound(&gv, kk, &dsc);
        let bu = rounding_bound(&uv, kk, &dsc);
        let ge = reference::gemv::gemv(&gv, n, kk, &x);
        let ue = reference::gemv::gemv(&uv, n, kk, &x);
        let bound: Vec<f64> = (0..n)
            .map(|i| {
                let (g, u) = (ge[i] as f64, ue[i] as f64);
                let silu = g / (1.0 + (-g).exp());
                1.1 * bg[i] * (u.abs() + bu[i]) + (silu.abs() + 1.1 * bg[i]) * bu[i]
            })
            .collect();
        let s = abs_sum(&gv, kk, &x) * abs_sum(&uv, kk, &x);
        check_both(
            &format!("gemv_dot_swiglu {} {n}x{kk}", f.name()),
            &got,
            &Want {
                emul,
                exact,
                bound,
                abs_sum: s,
            },
        );

        // QKV with biases.
        let ns = [64usize, 16, 16];
        let mats: Vec<_> = ns.iter().map(|&n| matrix(&mut r, k, f, n, kk)).collect();
        let biases: Vec<Vec<f32>> = ns.iter().map(|&n| rand_vec(&mut r, n, 1.0)).collect();
        let bb: Vec<_> = biases
            .iter()
            .map(|b| k.gpu.upload("b", b).unwrap())
            .collect();
        let outs: Vec<_> = ns.iter().map(|&n| poisoned_on(k, n)).collect();
        assert!(gemv_dot::qkv_dot_supported(
            k, &mats[0].0, &mats[1].0, &mats[2].0
        ));
        let d = gemv_dot::gemv_dot_qkv(
            k,
            [&mats[0].0, &mats[1].0, &mats[2].0],
            &xq,
            Some([&bb[0], &bb[1], &bb[2]]),
            [&outs[0], &outs[1], &outs[2]],
        )
        .unwrap();
        k.run(&[&d]).unwrap();
        for i in 0..3 {
            let got: Vec<f32> = k.gpu.read_vec(&outs[i]).unwrap();
            let mut wt = want(&mats[i].1, ns[i], kk, &x, &xd, &dsc);
            for (j, b) in biases[i].iter().enumerate() {
                wt.emul[j] += b;
                wt.exact[j] += b;
            }
            check_both(&format!("gemv_dot_qkv {} matrix {i}", f.name()), &got, &wt);
        }
    }
}

#[test]
fn gemv_dot_rejects_what_it_cannot_run() {
    let k = kernels();
    let mut r = rng();
    let xq = gemv_dot::act_q8_buffer(&k.gpu, 256).unwrap();
    let out = poisoned_on(k, 8);
    // A format without an integer-dot kernel: a clear error naming it.
    let (w, _) = matrix(&mut r, k, WeightFormat::F32, 8, 256);
    let e = gemv_dot::gemv_dot(k, &w, &xq, &out, Default::default()).unwrap_err();
    assert!(e.to_string().contains("f32"), "{e}");
    // Quantised activations of a shorter row.
    let (w, _) = matrix(&mut r, k, WeightFormat::Q4K, 8, 512);
    let e = gemv_dot::gemv_dot(k, &w, &xq, &out, Default::default()).unwrap_err();
    assert!(e.to_string().contains("xq"), "{e}");
}

/// The family's check cases (what `wick kernels check` runs: the quantiser, and every kind
/// and format against the product with the activations as the GPU quantised them), on every
/// pipeline. The unquantised product and its rounding bound are this file's own.
#[test]
fn gemv_dot_family_checks_pass() {
    let specs = family_pipelines(&gemv_dot::FAMILY);
    let r = run_family_checks(&specs, |_| f64::INFINITY);
    // Two cases per pipeline; no native variants yet.
    assert_eq!(r.rows.len(), 2 * specs.len());
}

/// The integer-dot GEMVs take their split from the tuning table (`wick tune --kinds dot`)
/// where it has one for the op and shape, fall back to the built-in choice for a split the
/// shader refuses, and compute the same product with the tuned split.
#[test]
fn gemv_dot_uses_the_tuning_table() {
    use wick::kernels::tuning::{TuneEntry, TuningTable};
    let base = kernels();
    let caps = &base.gpu.caps;
    let f = WeightFormat::Q4_0;
    let entry = |op: &str, n: usize, lpr: u32, rpg: u32, wg: u32| TuneEntry {
        op: op.into(),
        format: f,
        n,
        k: 352,
        lanes_per_row: lpr,
        rows_per_group: rpg,
        workgroup_size: wg,
        us: 1.0,
        default_us: 2.0,
    };
    let mut table = TuningTable::for_device(caps);
    table.entries = vec![
        entry("gemv_dot", 40, 4, 4, 32),
        entry("gemv_dot_swiglu", 40, 8, 2, 64),
        // Sixteen rows per group of two matrices overflow the shader's accumulators.
        entry("gemv_dot_swiglu", 24, 4, 16, 64),
    ];
    let tuned = Kernels::with_policy(base.gpu.clone(), Default::default()).with_tuning(Some(table));
    let split = |op, n| {
        let c = gemv_dot::dot_config_for(&tuned, op, f, n, 352);
        (c.lanes_per_row, c.rows_per_group, c.workgroup_size)
    };
    assert_eq!(split("gemv_dot", 40), (4, 4, 32));
    assert_eq!(split("gemv_dot_swiglu", 40), (8, 2, 64));
    let builtin = gemv_dot::dot_config_for(base, "gemv_dot_swiglu", f, 24, 352);
    assert_eq!(
        split("gemv_dot_swiglu", 24),
        (
            builtin.lanes_per_row,
            builtin.rows_per_group,
            builtin.workgroup_size
        )
    );
    // The float GEMV's entries are not the integer-dot kernel's.
    assert_eq!(
        gemv_dot::dot_config_for(&tuned, "gemv_dot", f, 33, 352),
        gemv_dot::dot_config_for(base, "gemv_dot", f, 33, 352)
    );
    // The tuned split computes the same product as the reference.
    let mut r = rng();
    let (w, wv) = matrix(&mut r, &tuned, f, 40, 352);
    let x = rand_vec(&mut r, 352, 1.0);
    let xb = tuned.gpu.upload("x", &x).unwrap();
    let xq = gemv_dot::act_q8_buffer(&tuned.gpu, 352).unwrap();
    let out = poisoned_on(&tuned, 40);
    let dq = gemv_dot::act_q8(&tuned, &xb, 352, &xq, None).unwrap();
    let d = gemv_dot::gemv_dot(&tuned, &w, &xq, &out, DotEpilogue::default()).unwrap();
    tuned.run(&[&dq, &d]).unwrap();
    let got: Vec<f32> = tuned.gpu.read_vec(&out).unwrap();
    let words = read_u32(&tuned.gpu, &xq);
    let (_, dsc, _) = unpack_parts(&words, 352);
    let wt = want(&wv, 40, 352, &x, &dequantize(&words, 352), &dsc);
    check_both("gemv_dot with a tuned split", &got, &wt);
}
