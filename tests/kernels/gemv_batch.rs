//! The batched GEMV (`kernels::gemv_batch`) against the f64 reference, one activation row of
//! the batch at a time: the family's check cases (what `wick kernels check --op gemv_batch`
//! runs) on two formats, then every format of real downloads at its own batch size and work
//! split, with partial row groups, the epilogue, a strided output whose gaps must stay
//! poisoned, the workgroup-memory reduction, and argument errors. Small on purpose: K-quant
//! pipelines take seconds each to compile on lavapipe, so each case builds one pipeline.
use crate::support::*;
use wick::gpu::POISON;
use wick::kernels::gemv::GemvConfig;
use wick::kernels::gemv_batch::{self, BatchEpilogue};
use wick::kernels::{Kernels, Variant};
use wick::quant::WeightFormat;
use wick::reference;

/// As the single GEMV's tests (tests/kernels/gemv.rs): f32 accumulation over k <= 1024
/// against the f64 reference stays far below 1e-4 of the largest output of a batch row, and
/// ABS_RTOL of max_i sum_j |w_ij x_j| covers a row whose largest output is a cancellation;
/// one wrong weight, scale, nibble or activation row moves an output by ~1/k of that sum.
const RTOL: f32 = 1e-4;
const ABS_RTOL: f32 = 1e-6;

#[derive(Clone, Copy)]
struct Case {
    format: WeightFormat,
    batch: usize,
    n: usize,
    k: usize,
    /// Bias, accumulate, out_offset 3 and a row stride of n + 4 (gaps checked poisoned).
    epilogue: bool,
    /// The work split (None: the host's choice).
    cfg: Option<GemvConfig>,
}

/// Runs `c` on `kr` and checks every element of the output buffer: each batch row against the
/// reference, everything else still poisoned.
fn check(kr: &Kernels, c: Case) -> Variant {
    let mut r = rng();
    let g = &kr.gpu;
    let (b, n, k) = (c.batch, c.n, c.k);
    let (w, wv) = matrix(&mut r, kr, c.format, n, k);
    let x = rand_vec(&mut r, b * k, 1.0);
    let bias = rand_vec(&mut r, n, 2.0);
    let prev = rand_vec(&mut r, b * n, 2.0);
    let (off, stride) = if c.epilogue { (3, n + 4) } else { (0, n) };
    // Two poisoned elements after the last row.
    let len = (b - 1) * stride + off + n + 2;
    let out = poisoned_on(kr, len);
    if c.epilogue {
        for (row, p) in prev.chunks_exact(n).enumerate() {
            g.write(&out, ((row * stride + off) * 4) as u64, p);
        }
    }
    let (xb, bb) = (g.upload("x", &x).unwrap(), g.upload("bias", &bias).unwrap());
    let epi = BatchEpilogue {
        bias: c.epilogue.then_some(&bb),
        accumulate: c.epilogue,
        out_offset: off,
        out_stride: c.epilogue.then_some(stride),
    };
    let d = match c.cfg {
        Some(cfg) => gemv_batch::gemv_batch_with_config(kr, &w, &xb, b, &out, epi, &cfg),
        None => gemv_batch::gemv_batch(kr, &w, &xb, b, &out, epi),
    }
    .unwrap();
    kr.run(&[&d]).unwrap();
    let got: Vec<f32> = g.read_vec(&out).unwrap();
    let want = reference::gemv::gemv_batch(
        &wv,
        n,
        k,
        &x,
        b,
        c.epilogue.then_some(&bias[..]),
        c.epilogue.then_some(&prev[..]),
    );
    let what = format!(
        "gemv_batch {} batch {b} {n}x{k} epilogue {} cfg {:?}",
        c.format.name(),
        c.epilogue,
        c.cfg
    );
    let mut expected = vec![f32::from_bits(POISON); len];
    for row in 0..b {
        let xr = &x[row * k..(row + 1) * k];
        let want_r = &want[row * n..(row + 1) * n];
        let at = row * stride + off;
        expected[at..at + n].copy_from_slice(want_r);
        let scale = want_r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let abs_sum = wv
            .chunks_exact(k)
            .map(|wr| wr.iter().zip(xr).map(|(a, x)| (a * x).abs()).sum::<f32>())
            .fold(0.0, f32::max)
            + if c.epilogue { 4.0 } else { 0.0 };
        assert_close(
            &format!("{what}: batch row {row}"),
            &got[at..at + n],
            want_r,
            0.0,
            RTOL * scale + ABS_RTOL * abs_sum,
        );
    }
    // Gaps between rows and the tail: never written.
    assert_close(&format!("{what}: whole buffer"), &got, &expected, 0.0, 1e30);
    d.pipeline.variant
}

fn cfg(lpr: u32, rpg: u32, wg: u32, subgroup_reduce: bool) -> Option<GemvConfig> {
    Some(GemvConfig {
        lanes_per_row: lpr,
        rows_per_group: rpg,
        workgroup_size: wg,
        subgroup_reduce,
    })
}

/// The family's check cases (batches 3 and 8 on the host's split) on Q4_0, among the
/// cheapest formats to compile; `wick kernels check --op gemv_batch` runs them on every format.
#[test]
fn gemv_batch_family_checks_pass() {
    let specs: Vec<_> = family_pipelines(&gemv_batch::FAMILY)
        .into_iter()
        .filter(|s| s.op == gemv_batch::op(WeightFormat::Q4_0))
        .collect();
    assert_eq!(specs.len(), 1);
    let r = run_family_checks(&specs, |_| RTOL as f64);
    assert_eq!(rows_of(&r, Variant::Portable), 2 * specs.len());
}

/// Each format of real downloads once, each at another batch size and split: 37 rows (the
/// last row group part-filled for every split here), k of 2 or 3 super-blocks (3: a lane
/// step part-filled), with and without the epilogue; lanes per row from 1 to 32 (wider than
/// lavapipe's subgroup of 8: the workgroup tree).
#[test]
fn gemv_batch_formats() {
    let k = kernels();
    let sg = k.gpu.caps.subgroup;
    let cases = [
        (WeightFormat::Q4_0, 8, 768, true, cfg(8, 4, 64, sg)),
        (WeightFormat::Q4_1, 3, 512, false, cfg(32, 3, 64, false)),
        (WeightFormat::Q8_0, 2, 768, true, cfg(1, 2, 32, sg)),
        (WeightFormat::F16, 5, 512, false, None),
        (WeightFormat::Q4K, 4, 768, true, cfg(4, 1, 64, sg)),
        (WeightFormat::Q6K, 2, 768, false, cfg(2, 2, 64, sg)),
    ];
    for (format, batch, kk, epilogue, cfg) in cases {
        check(
            k,
            Case {
                format,
                batch,
                n: 37,
                k: kk,
                epilogue,
                cfg,
            },
        );
    }
}

/// Without subgroups: the workgroup-memory tree in several passes (256 lanes give 8 slots
/// per lane, fewer than the 32 accumulators of 4 rows x 8 batch rows).
#[test]
fn gemv_batch_without_subgroups() {
    let k = kernels_no_subgroup();
    check(
        k,
        Case {
            format: WeightFormat::Q8_0,
            batch: 8,
            n: 70,
            k: 256,
            epilogue: true,
            cfg: cfg(16, 4, 256, false),
        },
    );
}

/// The host's split is one the shader runs for every format, batch and decode shape (SmolLM2,
/// Llama-3-8B and its LM head), on this device and as NVIDIA (subgroups of 32), Apple (32) and
/// a device without subgroups would see it; rows per group are at least min(batch, 4), and on
/// NVIDIA each matrix row keeps the single GEMV's share of lanes (lanes per row / rows per
/// group) where the row has the units for it.
#[test]
fn gemv_batch_host_splits_are_valid() {
    use wick::gpu::AdapterClass;
    use wick::kernels::gemv;
    let here = kernels().gpu.caps.clone();
    let mut devices = vec![here.clone()];
    for (class, sg) in [
        (AdapterClass::Nvidia, Some(32)),
        (AdapterClass::Apple, Some(32)),
        (AdapterClass::Other, None),
    ] {
        let mut c = here.clone();
        c.class = class;
        c.subgroup = sg.is_some();
        c.subgroup_min_size = sg.unwrap_or(0);
        c.subgroup_max_size = sg.unwrap_or(0);
        c.max_compute_invocations_per_workgroup = 256;
        devices.push(c);
    }
    let shapes: [(usize, usize); 9] = [
        (576, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
        (4096, 4096),
        (1024, 4096),
        (14336, 4096),
        (4096, 14336),
        (128256, 4096),
    ];
    for caps in &devices {
        for f in WeightFormat::ALL {
            for (n, kk) in shapes {
                let kk = kk.next_multiple_of(f.k_multiple());
                let single = gemv::choose_config(caps, f, n, kk);
                for batch in 1..=gemv_batch::MAX_BATCH {
                    let c = gemv_batch::choose_config(caps, f, n, kk, batch);
                    let what = format!(
                        "{:?} {} {n}x{kk} batch {batch}: {c:?}",
                        caps.class,
                        f.name()
                    );
                    gemv_batch::validate(&c, caps, batch).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(c.rows_per_group as usize >= batch.min(4), "{what}");
                    // Lanes per matrix row: the single GEMV's at least, unless the row has
                    // no more units to spread.
                    let units = kk / gemv::unit_elems(f);
                    let lanes = |c: &GemvConfig| c.lanes_per_row as f64 / c.rows_per_group as f64;
                    if caps.class == AdapterClass::Nvidia {
                        assert!(
                            lanes(&c) >= lanes(&single)
                                || c.lanes_per_row as usize >= units
                                || c.lanes_per_row == 256,
                            "{what}: fewer lanes than the single GEMV's {single:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gemv_batch_rejects_bad_input() {
    let k = kernels();
    let g = &k.gpu;
    let mut r = rng();
    let (w, _) = matrix(&mut r, k, WeightFormat::Q4_0, 8, 64);
    let x = g.upload("x", &[0.0f32; 3 * 64]).unwrap();
    let out = poisoned(3 * 8);
    let epi = BatchEpilogue::default();
    let err = |b: usize, x: &wgpu::Buffer, out: &wgpu::Buffer, epi: BatchEpilogue| {
        gemv_batch::gemv_batch(k, &w, x, b, out, epi).unwrap_err()
    };
    let invalid = |e: wick::Error| matches!(e, wick::Error::InvalidArgument(_));
    let shape = |e: wick::Error| matches!(e, wick::Error::Shape(_));
    // Batch sizes outside 1..=8.
    assert!(invalid(err(0, &x, &out, epi)));
    let e = err(9, &x, &out, epi);
    let msg = e.to_string();
    assert!(invalid(e) && msg.contains("batch of 9"), "{msg}");
    // Four rows of x, three bound; four rows of output, three bound.
    let big_out = poisoned(4 * 8);
    assert!(shape(err(4, &x, &big_out, epi)));
    let x4 = g.upload("x", &[0.0f32; 4 * 64]).unwrap();
    assert!(shape(err(4, &x4, &out, epi)));
    // A stride below n, and one that overruns the buffer.
    let narrow = BatchEpilogue {
        out_stride: Some(7),
        ..Default::default()
    };
    assert!(shape(err(2, &x, &out, narrow)));
    let wide = BatchEpilogue {
        out_stride: Some(9),
        out_offset: 1,
        ..Default::default()
    };
    assert!(shape(err(3, &x, &out, wide)));
    // A short bias.
    let short_bias = g.upload("b", &[0.0f32; 4]).unwrap();
    let bias = BatchEpilogue {
        bias: Some(&short_bias),
        ..Default::default()
    };
    assert!(shape(err(2, &x, &out, bias)));
    // Splits the shader cannot run: rows per group beyond its array or zero, lanes per row
    // not a power of two, a workgroup that is no multiple of the lanes per row.
    for (lpr, rpg, wg) in [(8, 5, 64), (8, 0, 64), (6, 1, 60), (16, 1, 40)] {
        let c = GemvConfig {
            lanes_per_row: lpr,
            rows_per_group: rpg,
            workgroup_size: wg,
            subgroup_reduce: false,
        };
        let e = gemv_batch::gemv_batch_with_config(k, &w, &x, 2, &out, epi, &c);
        assert!(invalid(e.unwrap_err()), "{c:?}");
    }
}
