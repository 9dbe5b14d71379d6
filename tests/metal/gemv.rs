//! gemv.metal in the host emulation.

use crate::emulator::{
    assert_runs_every_kernel, assert_within, emulation_rng, f32_bytes, f32s, poison_bytes,
    u32_bytes, uniform, Emulator,
};
use crate::sources::{clang_or_skip, read, root};

/// The residual of a GEMV norm-prologue case: ordinary (|x| ~ 3, one channel at 250) or tiny
/// (|x| <= 1e-3, a mean square below the epsilon, which then sets the scale).
pub(crate) fn norm_input(rng: &mut impl rand::Rng, k: usize, tiny: bool) -> Vec<f32> {
    if tiny {
        return uniform(rng, k, 1e-3);
    }
    let mut x = uniform(rng, k, 3.0);
    x[k / 3] = 250.0;
    x
}

/// One GEMV case of the emulation: rows of each matrix (q, k, v for QKV; one for the others),
/// k, lanes per row, the epilogue, whether a norm residual is tiny, and whether the
/// workgroups are spread over grid y (rows continue there when x is full).
pub(crate) struct GemvEmuCase {
    rows: [usize; 3],
    k: usize,
    lpr: u32,
    bias: bool,
    accumulate: bool,
    out_offset: usize,
    tiny: bool,
    grid_y: bool,
}

/// metal_overrides/gemv.metal on the host emulation: every entry point (format x plain /
/// SwiGLU / QKV x with and without the RMSNorm prologue, read from `gemv::native_specs`) on
/// fresh random weights and activations, against the CPU reference GEMV (and rmsnorm) on the
/// same dequantised values, with lanes per row from one to the whole threadgroup (each
/// reduction path), epilogues with bias, accumulate and an output offset, tiny norm residuals
/// where the epsilon matters, and grids continued in y. Outputs start poisoned; rows around
/// the written range must stay so. Bound as tests/kernels/gemv.rs: 1e-4 of max |want| plus
/// 1e-6 of the largest sum of |w x| (f32 accumulation against f64; a wrong element, scale or
/// nibble is off by order one of its row).
#[test]
pub(crate) fn gemv_metal_matches_the_reference_in_host_emulation() {
    use wick::kernels::gemv::{self as gemv_k, GemvParams};
    use wick::kernels::op_format;
    use wick::reference;
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let src = read(&root().join("metal_overrides").join("gemv.metal"));
    let emu = Emulator::build(&clang, &src);
    let mut rng = emulation_rng();
    let eps = 1e-5f32;
    let mut entries = std::collections::BTreeSet::new();
    let max_abs_dot = |w: &[f32], k: usize, x: &[f32]| {
        w.chunks_exact(k)
            .map(|row| row.iter().zip(x).map(|(a, b)| (a * b).abs()).sum::<f32>())
            .fold(0.0, f32::max)
    };
    // max |d| / max |want| per format.
    let mut worst = std::collections::BTreeMap::<&str, f32>::new();
    for spec in gemv_k::native_specs() {
        let entry = spec.native_metal.expect("a Metal entry").entry;
        let f = op_format(&spec.op).expect("a format");
        let has = |d: &str| spec.defines.contains(&d);
        let (swiglu, qkv, norm) = (has("SWIGLU"), has("QKV"), has("NORM"));
        let case = |rows, k, lpr, (bias, accumulate, out_offset), tiny, grid_y| GemvEmuCase {
            rows,
            k,
            lpr,
            bias,
            accumulate,
            out_offset,
            tiny,
            grid_y,
        };
        // k = 1088: 136 Q4 / 272 Q8 units per row (not a multiple of the four-unit step,
        // k / 4 = 272 > 256 threads for the norm's sum of squares). The K-quants need whole
        // 256-element super-blocks: 1280 (5, 80 two-word units: the tail runs at 8 and 32
        // lanes per row; an odd count for Q6_K's paired scales) and 768 (3).
        let kq = f.k_multiple();
        let (long, short) = (
            1088usize.next_multiple_of(kq),
            576usize.next_multiple_of(kq),
        );
        let cases = if qkv {
            [
                case([40, 12, 12], short, 1, (true, false, 0), false, false),
                case([10, 4, 4], long, 128, (false, false, 0), true, true),
            ]
        } else if swiglu {
            [
                case([37, 0, 0], long, 32, (false, false, 0), false, false),
                case([5, 0, 0], short, 256, (false, false, 0), true, true),
            ]
        } else {
            [
                case([37, 0, 0], long, 8, (false, false, 0), false, false),
                case([13, 0, 0], short, 64, (true, true, 5), true, true),
            ]
        };
        for c in cases {
            let k = c.k;
            let mats: Vec<(wick::quant::PackedMatrix, Vec<f32>)> = c
                .rows
                .iter()
                .filter(|&&n| n > 0)
                .chain(if swiglu { Some(&c.rows[0]) } else { None })
                .map(|&n| {
                    let vals = uniform(&mut rng, n * k, 1.0);
                    let packed = wick::quant::quantize_and_pack(f, &vals, n, k).unwrap();
                    let w = wick::quant::unpack(&packed);
                    (packed, w)
                })
                .collect();
            let x = if norm {
                norm_input(&mut rng, k, c.tiny)
            } else {
                uniform(&mut rng, k, 1.0)
            };
            let nw: Vec<f32> = uniform(&mut rng, k, 0.5).iter().map(|v| 1.0 + v).collect();
            let xin = if norm {
                reference::rmsnorm::rmsnorm(&x, &nw, k, eps)
            } else {
                x.clone()
            };
            let total: usize = c.rows.iter().sum();
            let flags = (c.bias as u32) | (c.accumulate as u32) << 1;
            let params = GemvParams {
                n: c.rows[0] as u32,
                upr: (k / gemv_k::unit_elems(f)) as u32,
                out_offset: c.out_offset as u32,
                eps_bits: eps.to_bits(),
                k4: (k / 4) as u32,
                nk: c.rows[1] as u32,
                nv: c.rows[2] as u32,
                flags,
                lanes_per_row: c.lpr,
                _pad: [0; 3],
            };
            let what = format!(
                "{entry} rows {:?} k={k} lanes/row {} bias={} acc={} offset {} tiny x={}",
                c.rows, c.lpr, c.bias, c.accumulate, c.out_offset, c.tiny
            );
            let mut bufs = vec![bytemuck::bytes_of(&params).to_vec()];
            for (p, _) in &mats {
                bufs.push(u32_bytes(&p.qs));
                bufs.push(u32_bytes(&p.scales));
            }
            bufs.push(f32_bytes(&x));
            // The output slots, and per output its expected values and max sum |w x|.
            let mut outs: Vec<usize> = Vec::new();
            let mut wants: Vec<(Vec<f32>, f32)> = Vec::new();
            if qkv {
                let biases: Vec<Vec<f32>> =
                    c.rows.iter().map(|&n| uniform(&mut rng, n, 1.0)).collect();
                for b in &biases {
                    // Unbound biases are x, as on the host.
                    bufs.push(if c.bias { f32_bytes(b) } else { f32_bytes(&x) });
                }
                for (i, &n) in c.rows.iter().enumerate() {
                    outs.push(bufs.len());
                    bufs.push(poison_bytes(n));
                    let mut want = reference::gemv::gemv(&mats[i].1, n, k, &xin);
                    if c.bias {
                        want.iter_mut().zip(&biases[i]).for_each(|(w, b)| *w += b);
                    }
                    let sum = max_abs_dot(&mats[i].1, k, &xin) + if c.bias { 1.0 } else { 0.0 };
                    wants.push((want, sum));
                }
            } else if swiglu {
                let n = c.rows[0];
                outs.push(bufs.len());
                bufs.push(poison_bytes(n));
                let want = reference::gemv::gemv_swiglu(&mats[0].1, &mats[1].1, n, k, &xin);
                wants.push((want, 0.0));
            } else {
                let n = c.rows[0];
                let bias = uniform(&mut rng, n, 2.0);
                let prev = uniform(&mut rng, n, 2.0);
                bufs.push(if c.bias {
                    f32_bytes(&bias)
                } else {
                    f32_bytes(&x)
                });
                let mut out = poison_bytes(c.out_offset + n + 3);
                if c.accumulate {
                    out[c.out_offset * 4..(c.out_offset + n) * 4]
                        .copy_from_slice(&f32_bytes(&prev));
                }
                outs.push(bufs.len());
                bufs.push(out);
                let want = reference::gemv::gemv_epilogue(
                    &mats[0].1,
                    n,
                    k,
                    &xin,
                    c.bias.then_some(&bias[..]),
                    c.accumulate.then_some(&prev[..]),
                );
                wants.push((want, max_abs_dot(&mats[0].1, k, &xin)));
            }
            if norm {
                bufs.push(f32_bytes(&nw));
            }
            let rows_per_group = (256 / c.lpr) as usize;
            let groups = total.div_ceil(rows_per_group) as u32;
            let grid = if c.grid_y {
                [groups.div_ceil(2), 2, 1]
            } else {
                [groups, 1, 1]
            };
            emu.run(entry, grid, [256, 1, 1], &mut bufs);
            entries.insert(entry.to_string());
            for (i, (slot, (want, abs_sum))) in outs.iter().zip(&wants).enumerate() {
                let got = f32s(&bufs[*slot]);
                let off = if qkv || swiglu { 0 } else { c.out_offset };
                let n = want.len();
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let bound = 1e-4 * scale + 1e-6 * abs_sum;
                let d = assert_within(
                    &format!("{what} output {i}"),
                    &got[off..off + n],
                    want,
                    bound,
                );
                let e = worst.entry(f.name()).or_default();
                *e = e.max(d / scale.max(f32::MIN_POSITIVE));
                for (j, v) in got.iter().enumerate() {
                    if j < off || j >= off + n {
                        assert_eq!(
                            v.to_bits(),
                            wick::gpu::POISON,
                            "{what} output {i}: element {j} outside the output rows was written"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(
        entries.len(),
        6 * gemv_k::NATIVE_FORMATS.len(),
        "{entries:?}"
    );
    assert_runs_every_kernel(&src, &entries);
    let per_format: Vec<String> = worst.iter().map(|(f, w)| format!("{f} {w:.2e}")).collect();
    eprintln!(
        "gemv.metal (host emulation): {} entries, max |d| / max |want|: {}",
        entries.len(),
        per_format.join(", ")
    );
}
