//! The GEMM (`kernels::gemm`). Every pipeline of the family runs its check cases (what `wick
//! kernels check` runs: a partial tile with long rows, an exact 64-row tile with accumulation,
//! ragged tiles both ways, with and without the bias; native variants included) in
//! [`gemm_family_checks_pass`], within this file's tighter f32 bound. The tests here add one
//! row, whole tiles, odd lengths per format, other tilings, output offsets and strides, the
//! device without subgroups, row independence and argument errors.
use rand::Rng;

use crate::support::*;
use wick::kernels::gemm::{self, GemmEpilogue, GemmTiling};
use wick::kernels::{Kernels, Variant, WeightFormat};
use wick::reference;

/// f32 accumulation over k <= 1536 terms against the f64 reference: rounding errors of
/// random sign grow like sqrt(k) * eps (~2.4e-6 of the output scale at k = 1536; observed
/// up to 1.5e-6), so the bound is |d| <= RTOL * max|want| with RTOL = 1e-5. A real fault (a
/// block or a row of the tile wrong, missing or misplaced) is off by ~1e-1 or more. Both sides
/// use the same dequantised weights (`quant::unpack`): quantisation error does not enter.
const RTOL: f32 = 1e-5;

/// Asserts |got - want| <= RTOL * max|want| elementwise.
fn check_close(what: &str, got: &[f32], want: &[f32]) {
    let max_w = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let rel = assert_close(what, got, want, 0.0, RTOL * max_w);
    eprintln!("{what}: max |d| / max |want| = {rel:.2e}");
}

/// Plain GEMM into a poisoned output, checked against the reference.
fn check_plain(
    k: &Kernels,
    f: WeightFormat,
    m: usize,
    n: usize,
    kd: usize,
    tiling: Option<GemmTiling>,
) {
    let mut r = rng();
    let g = &k.gpu;
    let (w, wv) = matrix(&mut r, k, f, n, kd);
    let x = rand_vec(&mut r, m * kd, 2.0);
    let xb = g.upload("x", &x).unwrap();
    let out = g.storage_buffer("out", (m * n * 4) as u64).unwrap();
    g.poison(&out);
    let epi = GemmEpilogue::default();
    let d = match tiling {
        Some(t) => gemm::gemm_tiled(k, &w, &xb, &out, m, epi, t),
        None => gemm::gemm(k, &w, &xb, &out, m, epi),
    }
    .unwrap();
    k.run(&[&d]).unwrap();
    let want = reference::gemm::gemm(&wv, &x, m, n, kd);
    check_close(
        &format!("gemm {} m={m} n={n} k={kd} {tiling:?}", f.name()),
        &g.read_vec(&out).unwrap(),
        &want,
    );
}

/// One row of one tile, and whole 64 x 64 tiles both ways (the check cases' are ragged; their
/// first has the long rows).
const SHAPES: [(usize, usize, usize); 2] = [(1, 64, 64), (64, 128, 128)];

fn check_format(f: WeightFormat) {
    for &(m, n, kd) in &SHAPES {
        check_plain(kernels(), f, m, n, kd, None);
    }
}

#[test]
fn gemm_f32() {
    check_format(WeightFormat::F32);
    // k a multiple of 4 but not of the 32-wide k step: the loaders zero the tail.
    check_plain(kernels(), WeightFormat::F32, 5, 70, 100, None);
}

#[test]
fn gemm_f16() {
    check_format(WeightFormat::F16);
    check_plain(kernels(), WeightFormat::F16, 3, 9, 36, None);
}

#[test]
fn gemm_bf16() {
    check_format(WeightFormat::Bf16);
    check_plain(kernels(), WeightFormat::Bf16, 66, 65, 4, None);
}

#[test]
fn gemm_q8_0() {
    check_format(WeightFormat::Q8_0);
}

#[test]
fn gemm_q4_0() {
    check_format(WeightFormat::Q4_0);
}

#[test]
fn gemm_q4_1() {
    check_format(WeightFormat::Q4_1);
}

#[test]
fn gemm_q5_0() {
    check_format(WeightFormat::Q5_0);
}

#[test]
fn gemm_q5_1() {
    check_format(WeightFormat::Q5_1);
}

/// K-quants: k in whole 256-element super-blocks: one row of one, and an odd count (3) with n
/// past two 64-column tiles (the check cases have 1 and 2).
const K_SHAPES: [(usize, usize, usize); 2] = [(1, 64, 256), (33, 130, 768)];

fn check_k_format(f: WeightFormat) {
    for &(m, n, kd) in &K_SHAPES {
        check_plain(kernels(), f, m, n, kd, None);
    }
}

#[test]
fn gemm_q4_k() {
    check_k_format(WeightFormat::Q4K);
}

#[test]
fn gemm_q5_k() {
    check_k_format(WeightFormat::Q5K);
}

#[test]
fn gemm_q6_k() {
    check_k_format(WeightFormat::Q6K);
}

#[test]
fn gemm_without_subgroups() {
    check_plain(
        kernels_no_subgroup(),
        WeightFormat::Q4_1,
        33,
        130,
        576,
        None,
    );
}

/// Tile shapes other than the default: no padding (16 KiB devices) and non-square tiles.
#[test]
fn gemm_other_tilings() {
    let k = kernels();
    for t in [
        GemmTiling {
            wg_m: 16,
            wg_n: 16,
            pad: 0,
        },
        GemmTiling {
            wg_m: 8,
            wg_n: 32,
            pad: 1,
        },
        GemmTiling {
            wg_m: 4,
            wg_n: 8,
            pad: 3,
        },
    ] {
        check_plain(k, WeightFormat::Q8_0, 37, 150, 96, Some(t));
        check_plain(k, WeightFormat::F16, 37, 150, 100, Some(t));
    }
}

/// One epilogue case: a random `f` matrix, activations, bias and prior output contents (the
/// residual to add to, or the columns that must stay untouched); runs the GEMM `k` picks and
/// returns (variant that ran, output, reference, prior).
#[allow(clippy::too_many_arguments)]
fn run_epilogue_case(
    k: &Kernels,
    r: &mut impl Rng,
    f: WeightFormat,
    (m, n, kd): (usize, usize, usize),
    bias: bool,
    accumulate: bool,
    offset: usize,
    stride: usize,
) -> (Variant, Vec<f32>, Vec<f32>, Vec<f32>) {
    let g = &k.gpu;
    let (w, wv) = matrix(r, k, f, n, kd);
    let x = rand_vec(r, m * kd, 2.0);
    let b = rand_vec(r, n, 10.0);
    let ostride = if stride == 0 { n } else { stride };
    let prior = rand_vec(r, m * ostride, 30.0);
    let xb = g.upload("x", &x).unwrap();
    let bb = g.upload("bias", &b).unwrap();
    let out = g.upload("out", &prior).unwrap();
    if !accumulate && offset == 0 && stride == 0 {
        // Every element is written: poison it so a skipped write shows.
        g.poison(&out);
    }
    let epi = GemmEpilogue {
        bias: bias.then_some(&bb),
        accumulate,
        out_offset: offset,
        out_stride: stride,
    };
    let d = gemm::gemm(k, &w, &xb, &out, m, epi).unwrap();
    k.run(&[&d]).unwrap();
    let mut want = prior.clone();
    let res = reference::gemm::gemm(&wv, &x, m, n, kd);
    reference::gemm::epilogue(
        &mut want,
        &res,
        n,
        bias.then_some(&b[..]),
        accumulate,
        offset,
        ostride,
    );
    (d.pipeline.variant, g.read_vec(&out).unwrap(), want, prior)
}

/// Writing into a column slice of a wider output, with and without the bias and residual
/// (both alone at the full width: the check cases), the columns around it untouched.
#[test]
fn gemm_epilogues() {
    let k = kernels();
    let mut r = rng();
    let (m, n, kd) = (9, 70, 64);
    for (f, bias, accumulate, offset, stride) in [
        (WeightFormat::Q8_0, true, true, 50, 200),
        (WeightFormat::Bf16, false, false, 130, 200),
        (WeightFormat::Q5_1, true, true, 10, 100),
    ] {
        let (_, got, want, prior) =
            run_epilogue_case(k, &mut r, f, (m, n, kd), bias, accumulate, offset, stride);
        // The result must actually land: a kernel that skipped the write would leave `prior`.
        assert!(want.iter().zip(&prior).any(|(a, b)| a != b));
        check_close(
            &format!(
                "gemm {} bias={bias} acc={accumulate} off={offset} stride={stride}",
                f.name()
            ),
            &got,
            &want,
        );
    }
}

/// Every GEMM row is the GEMV of its activation row: the m-row GEMM on the GPU equals m
/// separate one-row GEMMs on the GPU (no cross-row mixing in the tiles) and the per-row
/// GEMV reference.
#[test]
fn gemm_rows_are_gemvs() {
    let k = kernels();
    let g = &k.gpu;
    let mut r = rng();
    let (m, n, kd) = (70, 66, 96);
    let (w, wv) = matrix(&mut r, k, WeightFormat::Q4_1, n, kd);
    let x = rand_vec(&mut r, m * kd, 2.0);
    let xb = g.upload("x", &x).unwrap();
    let out = g.storage_buffer("out", (m * n * 4) as u64).unwrap();
    g.poison(&out);
    let d = gemm::gemm(k, &w, &xb, &out, m, GemmEpilogue::default()).unwrap();
    k.run(&[&d]).unwrap();
    let all: Vec<f32> = g.read_vec(&out).unwrap();
    for row in [0, 1, 37, 63, 64, 69] {
        let xr = &x[row * kd..(row + 1) * kd];
        let xrb = g.upload("x row", xr).unwrap();
        let one = poisoned(n);
        let d = gemm::gemm(k, &w, &xrb, &one, 1, GemmEpilogue::default()).unwrap();
        k.run(&[&d]).unwrap();
        let single: Vec<f32> = g.read_vec(&one).unwrap();
        let got = &all[row * n..(row + 1) * n];
        // Same kernel, same k order: the row must not depend on its neighbours.
        assert_close(
            &format!("row {row} vs one-row gemm"),
            got,
            &single,
            1e-6,
            0.0,
        );
        check_close(
            &format!("row {row} vs gemv reference"),
            got,
            &reference::gemm::gemv(&wv, xr, n, kd),
        );
    }
}

#[test]
fn gemm_rejects_bad_shapes() {
    let k = kernels();
    let g = &k.gpu;
    let mut r = rng();
    let (m, n, kd) = (4, 40, 64);
    let (w, _) = matrix(&mut r, k, WeightFormat::Q8_0, n, kd);
    let x = g.upload("x", &rand_vec(&mut r, m * kd, 1.0)).unwrap();
    let out = g.storage_buffer("out", (m * n * 4) as u64).unwrap();
    let short_bias = g.upload("bias", &[0.0f32; 39]).unwrap();
    let ok = GemmEpilogue::default();
    assert!(gemm::gemm(k, &w, &x, &out, m, ok).is_ok());
    let cases = [
        ("zero rows", 0, ok),
        ("x too short", m + 1, ok),
        (
            "out too short for the offset",
            m,
            GemmEpilogue {
                out_offset: 1,
                out_stride: n + 1,
                ..ok
            },
        ),
        (
            "columns past the stride",
            m,
            GemmEpilogue {
                out_offset: 1,
                out_stride: n,
                ..ok
            },
        ),
        (
            "short bias",
            m,
            GemmEpilogue {
                bias: Some(&short_bias),
                ..ok
            },
        ),
    ];
    for (what, rows, epi) in cases {
        match gemm::gemm(k, &w, &x, &out, rows, epi) {
            Err(wick::Error::Shape(_)) => {}
            other => panic!(
                "{what}: expected a shape error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    let big = GemmTiling {
        wg_m: 64,
        wg_n: 64,
        pad: 0,
    };
    assert!(gemm::gemm_tiled(k, &w, &x, &out, m, ok, big).is_err());
}

/// The native GEMM's operands are rounded to f16 (relative error 2^-11 each), so its bound is
/// looser than the f32 kernel's: random-sign rounding over k terms stays near sqrt(k) * 2^-11
/// of the typical product sum, well under 4e-3 of max|want| at k <= 576, while a misplaced
/// 16x16 fragment or block is off by the output's own scale.
const RTOL_F16: f32 = 4e-3;

/// Whether the adapter offers the native GEMM, decided from the adapter, not from the
/// registry under test: on Vulkan it needs cooperative matrices, on Metal passthrough shaders
/// (gemm.metal).
fn native_offered(caps: &wick::gpu::Capabilities) -> bool {
    match caps.backend {
        wgpu::Backend::Vulkan => wick::kernels::cooperative_matrix_usable(caps),
        wgpu::Backend::Metal => caps.passthrough_shaders,
        _ => false,
    }
}

/// The family's check cases on every GEMM pipeline (portable, and native where this adapter
/// offers it) within this file's bounds, which on the test device are tighter than the tool's
/// (the tool's hold on every GPU).
#[test]
fn gemm_family_checks_pass() {
    let specs = family_pipelines(&gemm::FAMILY);
    let r = run_family_checks(&specs, |v| match v {
        Variant::Portable => RTOL as f64,
        Variant::Native => RTOL_F16 as f64,
    });
    // Three cases per GEMM pipeline, two for the f16 conversion of the rows.
    let cases = |s: &wick::kernels::KernelSpec| if s.op == "gemm_input_f16" { 2 } else { 3 };
    assert_eq!(
        rows_of(&r, Variant::Portable),
        specs.iter().map(cases).sum::<usize>()
    );
    // Natives of this backend only: the Metal GEMM covers more formats than the Vulkan one.
    let caps = &kernels().gpu.caps;
    let native = match native_offered(caps) {
        true => specs
            .iter()
            .filter(|s| s.native(caps.backend).is_some())
            .map(cases)
            .sum(),
        false => 0,
    };
    assert_eq!(rows_of(&r, Variant::Native), native, "native rows");
}

/// Which (backend, format) pairs have a native GEMM: the cooperative-matrix kernel on Vulkan and
/// gemm.metal on Metal, each for every format but F32, each with and without the bias.
/// Everywhere else the registry, even asked for natives, routes to the portable kernel, and
/// `wick kernels list` says why the other backend's variant is not available here.
#[test]
fn gemm_natives_per_backend() {
    let tiling = GemmTiling::for_caps(&kernels().gpu.caps);
    let k = kernels_native();
    let backend = k.gpu.caps.backend;
    let listing = wick::tools::catalog::list(&k.gpu.caps);
    for f in WeightFormat::ALL {
        for bias in [false, true] {
            let sp = gemm::spec(f, bias, tiling);
            let vulkan = gemm::VULKAN_NATIVE_FORMATS.contains(&f);
            let metal = gemm::METAL_NATIVE_FORMATS.contains(&f);
            assert_eq!(sp.native_vulkan.is_some(), vulkan, "{} vulkan", sp.op);
            assert_eq!(sp.native_metal.is_some(), metal, "{} metal", sp.op);
            if let Some(n) = sp.native_metal {
                let want = format!("gemm_{}{}", f.name(), if bias { "_bias" } else { "" });
                assert_eq!((n.family, n.entry), ("gemm", want.as_str()));
            }
            if sp.native(backend).is_none() {
                assert!(k.native_for(&sp).is_none(), "{}", sp.op);
                assert_eq!(k.variant_for(&sp).unwrap(), Variant::Portable, "{}", sp.op);
            }
        }
        let op = gemm::op_name(f);
        let entry = listing.ops.iter().find(|o| o.op == op).expect("listed");
        // One native variant per pipeline (plain and bias) and backend, then the Vulkan
        // variants reading f16 rows (plain and bias, per way of reading them).
        let backends: Vec<_> = entry.variants.iter().filter_map(|v| v.backend).collect();
        let mut want = Vec::new();
        for _bias in [false, true] {
            if gemm::VULKAN_NATIVE_FORMATS.contains(&f) {
                want.push("vulkan");
            }
            if gemm::METAL_NATIVE_FORMATS.contains(&f) {
                want.push("metal");
            }
        }
        if gemm::VULKAN_NATIVE_FORMATS.contains(&f) {
            for _mode in gemm::HalfRows::ALL {
                want.extend(["vulkan", "vulkan"]);
            }
        }
        assert_eq!(backends, want, "{op}: native variants listed");
        for v in entry.variants.iter().filter(|v| v.backend.is_some()) {
            if v.backend != Some(backend.to_str()) {
                assert!(!v.available && v.reason.is_some(), "{op}: {v:?}");
            }
        }
    }
}

/// The native Vulkan GEMM (cooperative matrices, f16 operands, f32 accumulation) against the
/// reference, beyond the check cases: one row, output slices, ragged edges (m, n not
/// multiples of its 64 x 64 tile), within [`RTOL_F16`]. Where the adapter has no cooperative
/// matrices (lavapipe) the registry must fall back to the portable kernel, which is checked.
#[test]
fn gemm_native_cooperative_matrix() {
    let k = kernels_native();
    let g = &k.gpu;
    let tiling = GemmTiling::for_caps(&g.caps);
    let available = k
        .native_for(&gemm::spec(WeightFormat::Q4_0, false, tiling))
        .is_some();
    let offered = native_offered(&g.caps);
    assert_eq!(
        available, offered,
        "native GEMM on {} ({}): the registry offers it: {available}, expected: {offered}",
        g.caps.adapter_name, g.caps.backend
    );
    if !available {
        eprintln!(
            "no cooperative matrices on {} ({}): checking the fallback to the portable GEMM",
            g.caps.adapter_name, g.caps.backend
        );
    }
    let mut r = rng();
    // Beyond the check cases (partial and several tiles, bias, residual): one row, output
    // slices, m past two 64-row tiles, k not a multiple of 16.
    for (f, m, n, kd, bias, accumulate, offset, stride) in [
        (WeightFormat::Q4_0, 1, 64, 64, false, false, 0, 0),
        (WeightFormat::Q8_0, 9, 70, 96, true, true, 50, 200),
        (WeightFormat::Q8_0, 129, 65, 128, false, false, 0, 0),
        (WeightFormat::F16, 33, 100, 100, false, false, 30, 160),
    ] {
        let sp = gemm::spec(f, bias, tiling);
        let want_variant = if available {
            Variant::Native
        } else {
            Variant::Portable
        };
        assert_eq!(k.variant_for(&sp).unwrap(), want_variant, "{}", f.name());
        let (ran, got, want, _) =
            run_epilogue_case(k, &mut r, f, (m, n, kd), bias, accumulate, offset, stride);
        assert_eq!(ran, want_variant);
        let max_w = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let what = format!(
            "gemm {:?} {} m={m} n={n} k={kd} bias={bias} acc={accumulate} off={offset}",
            want_variant,
            f.name()
        );
        let rel = assert_close(&what, &got, &want, 0.0, RTOL_F16 * max_w);
        eprintln!("{what}: max |d| / max |want| = {rel:.2e}");
    }
}
