//! gemm.metal in the host emulation.

use std::collections::{BTreeMap, BTreeSet};

use wick::kernels::{gemm, op_format, WeightFormat};
use wick::quant::PackedMatrix;

use crate::emulator::{assert_runs_every_kernel, emulation_rng, f32_bytes, u32_bytes, Emulator};
use crate::sources::{clang_or_skip, read, root};

/// Rounds to binary16 and back: what the GEMM's half operands hold.
pub(crate) fn to_half(v: f32) -> f64 {
    half::f16::from_f32(v).to_f64()
}

/// Random n x k weights of `f`: quantised from uniform values (what models hold), or, with
/// `raw_blocks`, uniformly random blocks (every quant, scale and high-bit pattern, including the
/// packed 6-bit K-quant scales and mins the quantisers rarely produce).
fn weights(
    rng: &mut impl rand::Rng,
    f: WeightFormat,
    n: usize,
    k: usize,
    raw_blocks: bool,
) -> PackedMatrix {
    if raw_blocks && f.is_quantized() {
        let bytes = wick::quant::random_blocks(f.ggml(), n * k, rng.random()).unwrap();
        return wick::quant::pack(f, &bytes, n, k).unwrap();
    }
    let vals: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    wick::quant::quantize_and_pack(f, &vals, n, k).unwrap()
}

/// gemm.metal on the host emulation, every entry the registry wires as a native Metal variant
/// (`gemm::native_specs`: format x bias), against a CPU reference built from the same
/// half-rounded operands, so that what is left is f32 summation order (|d| <= 1e-4 max|want|:
/// a wrong block, sub-block, scale, nibble, row, tile or epilogue is off by order one). Shapes
/// leave partial tiles in both directions, an output stride and offset, and for the K-quants
/// one to three 256-element super-blocks per row (an odd count: rows start on either half of
/// Q6_K's paired scales); the bias entries also accumulate. Also reports, per format, the error
/// against the f32 reference, which the GPU test of the native variant must allow.
#[test]
pub(crate) fn gemm_metal_matches_the_reference_in_host_emulation() {
    use rand::Rng;
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let src = read(&root().join("metal_overrides").join("gemm.metal"));
    let emu = Emulator::build(&clang, &src);
    let mut rng = emulation_rng();
    let mut entries = BTreeSet::new();
    // (m, n, k, out_stride - n - out_offset, out_offset): edges in every direction. k is that
    // of the 32-element formats; the K-quants take 8 times as much (whole super-blocks).
    let shapes = [(7, 100, 96, 0, 0), (70, 130, 64, 3, 5), (64, 64, 32, 0, 0)];
    // Per format: max |d| / max |want| against the half-rounded and the f32 reference.
    let mut worst_by_format = BTreeMap::<&str, (f64, f64)>::new();
    let specs: Vec<_> = gemm::native_specs()
        .into_iter()
        .filter(|s| s.native_metal.is_some())
        .collect();
    assert_eq!(specs.len(), 2 * gemm::METAL_NATIVE_FORMATS.len());
    for spec in specs {
        let f = op_format(&spec.op).expect("a GEMM op names its format");
        let entry = spec.native_metal.unwrap().entry;
        // The bias entries also accumulate; the plain ones overwrite.
        let bias = spec.defines.contains(&"BIAS");
        let accumulate = bias;
        for (case, &(m, n, kd, extra, off)) in shapes.iter().enumerate() {
            let kd = match f {
                // Floats also with a k that is not a multiple of the 32-wide k step.
                WeightFormat::F16 | WeightFormat::Bf16 if m == 7 => 36,
                WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => 8 * kd,
                _ => kd,
            };
            assert_eq!(kd % f.k_multiple(), 0, "{entry}: k = {kd}");
            let packed = weights(&mut rng, f, n, kd, case == 1);
            let w = wick::quant::unpack(&packed);
            let x: Vec<f32> = (0..m * kd).map(|_| rng.random_range(-2.0..2.0)).collect();
            let bias_v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let stride = n + off + extra;
            // A guard of 64 more rows after the output: stray writes past row m show.
            let prior: Vec<f32> = (0..(m + 64) * stride)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let params = [
                m as u32,
                n as u32,
                kd as u32,
                stride as u32,
                off as u32,
                accumulate as u32,
                0,
                0,
            ];
            let mut bufs = vec![
                u32_bytes(&params),
                u32_bytes(&packed.qs),
                u32_bytes(&packed.scales),
                f32_bytes(&x),
            ];
            if bias {
                bufs.push(f32_bytes(&bias_v));
            }
            bufs.push(f32_bytes(&prior));
            let grid = [(n as u32).div_ceil(64), (m as u32).div_ceil(64), 1];
            emu.run(entry, grid, [128, 1, 1], &mut bufs);
            entries.insert(entry.to_string());
            let got: Vec<f32> = bufs
                .last()
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();

            let mut want = prior.iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let mut want_f32 = want.clone();
            for r in 0..m {
                for j in 0..n {
                    let (mut s, mut s32) = (0.0f64, 0.0f64);
                    for q in 0..kd {
                        let (xv, wv) = (x[r * kd + q], w[j * kd + q]);
                        s += to_half(xv) * to_half(wv);
                        s32 += xv as f64 * wv as f64;
                    }
                    let b = if bias { bias_v[j] as f64 } else { 0.0 };
                    let o = r * stride + off + j;
                    let base = if accumulate { want[o] } else { 0.0 };
                    want[o] = base + s + b;
                    want_f32[o] = base + s32 + b;
                }
            }
            let max_w = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let (mut worst, mut at, mut worst_f32) = (0.0f64, 0, 0.0f64);
            for (i, (&g, &wv)) in got.iter().zip(&want).enumerate() {
                let d = (g as f64 - wv).abs();
                if d.is_nan() || d > worst {
                    worst = if d.is_nan() { f64::INFINITY } else { d };
                    at = i;
                }
                worst_f32 = worst_f32.max((g as f64 - want_f32[i]).abs() / max_w);
            }
            assert!(
                worst <= 1e-4 * max_w,
                "{entry} m={m} n={n} k={kd} stride={stride} offset={off} acc={accumulate} \
                 random blocks={}: out[{at}] = {} want {} (max |want| {max_w})",
                case == 1,
                got[at],
                want[at]
            );
            let e = worst_by_format.entry(f.name()).or_default();
            e.0 = e.0.max(worst / max_w);
            e.1 = e.1.max(worst_f32);
        }
    }
    assert_runs_every_kernel(&src, &entries);
    for (f, (half_ref, f32_ref)) in &worst_by_format {
        eprintln!(
            "gemm.metal {f} (host emulation): max |d| / max |want| = {half_ref:.2e} against the \
             half-rounded reference, {f32_ref:.2e} against the f32 reference"
        );
    }
}
