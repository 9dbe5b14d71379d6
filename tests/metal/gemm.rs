//! gemm.metal in the host emulation.

use wick::kernels::WeightFormat;

use crate::emulator::{assert_runs_every_kernel, emulation_rng, f32_bytes, u32_bytes, Emulator};
use crate::sources::{clang_or_skip, read, root};

/// Rounds to binary16 and back: what the GEMM's half operands hold.
pub(crate) fn to_half(v: f32) -> f64 {
    half::f16::from_f32(v).to_f64()
}

/// gemm.metal on the host emulation against a CPU reference built from the same half-rounded
/// operands, so that what is left is f32 summation order (|d| <= 1e-4 max|want|: a wrong
/// block, row, tile or epilogue is off by order one). Also reports the error against the f32
/// reference, which the GPU test of the native variant must allow.
#[test]
pub(crate) fn gemm_metal_matches_the_reference_in_host_emulation() {
    use rand::Rng;
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let src = read(&root().join("metal_overrides").join("gemm.metal"));
    let emu = Emulator::build(&clang, &src);
    let mut rng = emulation_rng();
    let mut entries = std::collections::BTreeSet::new();
    // (m, n, k, out_stride - n - out_offset, out_offset): edges in every direction.
    let shapes = [(7, 100, 96, 0, 0), (70, 130, 64, 3, 5), (64, 64, 32, 0, 0)];
    let mut worst_f32 = 0.0f64;
    for f in [
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
        WeightFormat::F16,
    ] {
        for &(m, n, kd, extra, off) in &shapes {
            // f16 also with a k that is not a multiple of the 32-wide k step.
            let kd = if f == WeightFormat::F16 && m == 7 {
                36
            } else {
                kd
            };
            for (bias, accumulate) in [(false, false), (true, true)] {
                let vals: Vec<f32> = (0..n * kd).map(|_| rng.random_range(-1.0..1.0)).collect();
                let packed = wick::quant::quantize_and_pack(f, &vals, n, kd).unwrap();
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
                let entry = format!("gemm_{}{}", f.name(), if bias { "_bias" } else { "" });
                let grid = [(n as u32).div_ceil(64), (m as u32).div_ceil(64), 1];
                emu.run(&entry, grid, [128, 1, 1], &mut bufs);
                entries.insert(entry.clone());
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
                let (mut worst, mut at) = (0.0f64, 0);
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
                    "{entry} m={m} n={n} k={kd} stride={stride} offset={off} acc={accumulate}: \
                     out[{at}] = {} want {} (max |want| {max_w})",
                    got[at],
                    want[at]
                );
            }
        }
    }
    assert_runs_every_kernel(&src, &entries);
    eprintln!(
        "gemm.metal (host emulation): max |d| / max |want| against the f32 reference = \
         {worst_f32:.2e}"
    );
}
