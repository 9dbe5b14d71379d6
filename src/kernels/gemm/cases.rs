//! The GEMM family's reference checks and bench work (see [`crate::kernels::family`]).

use std::any::Any;
use std::sync::Arc;

use super::{
    gemm, gemm_half, gemm_half_as, input_f16, reads_half, reads_half_as, GemmEpilogue, HalfRows,
};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::family::{
    bench_input, bench_matrices, check_copy, check_k, matrix_bytes, poisoned, random_matrix,
    run_checked, BenchCase, BenchShapes, BuiltWork, CheckCase, PreparedWork, Rng, Work,
};
use crate::kernels::{op_format, GpuMatrix, KernelSpec, Kernels};
use crate::quant::WeightFormat;
use crate::reference;

/// Bounds on max |d| / max |want|. f32 accumulation over k <= 1024 against an f64 reference
/// stays near 1e-6; one wrong weight, scale or nibble moves an output by ~1/k of the row's
/// scale, above 1e-3. The native GEMMs (cooperative matrices on Vulkan, simdgroup matrices
/// on Metal) round x and W to f16 (2^-11 relative each): random-sign rounding over k <= 1024
/// terms stays near sqrt(k) * 2^-11 of the typical sum, measured up to 3.2e-4 of max|want|
/// on an H100.
const TOL: f64 = 2e-4;
const F16_TOL: f64 = 4e-3;

/// The checks of one GEMM pipeline: three shapes, with and without accumulation, with the
/// pipeline's bias.
pub fn checks(spec: &KernelSpec, seed: u64) -> Result<Vec<CheckCase>> {
    let op = spec.op.clone();
    if spec.entry == "gemm_input_f16" {
        return Ok(input_checks(op, seed));
    }
    // The variants reading f16 rows get them converted first (where they run natively).
    let half = spec
        .defines
        .contains(&"COOP_XH")
        .then(|| HalfRows::of_spec(spec));
    let format = op_format(&op)
        .ok_or_else(|| Error::Unsupported(format!("GEMM op {op} names no weight format")))?;
    let bias = spec.defines.contains(&"BIAS");
    let mut v = Vec::new();
    // One partial output tile of every kernel's, and 136 x 144: two or more tiles both ways
    // for every tiling (the cooperative-matrix GEMM's are 128 x 128, the Metal one's and the
    // portable one's 64 x 64), ragged in both, over a short k (four 32-deep steps; the long
    // rows are the first case's) to keep it cheap on CPU adapters (the kernel tests run
    // every pipeline's cases on lavapipe). k in whole blocks of the format (the K-quants'
    // 128 is 256).
    for (m, n, k, acc) in [
        (37, 96, 512usize, false),
        (64, 80, 256, true),
        (136, 144, 128, false),
    ] {
        let k = k.next_multiple_of(format.k_multiple());
        let epi = match (bias, acc) {
            (false, false) => "",
            (false, true) => " +acc",
            (true, false) => " +bias",
            (true, true) => " +bias +acc",
        };
        let op = op.clone();
        let rows = match half {
            None => "",
            Some(HalfRows::Staged) => " f16 rows",
            Some(HalfRows::Direct) => " f16 rows direct",
            Some(HalfRows::Direct64) => " f16 rows direct k64",
            Some(HalfRows::Direct64Pipelined) => " f16 rows direct k64 pipelined",
        };
        v.push(CheckCase {
            shape: format!("{m}x{n}x{k}{epi}{rows}"),
            tolerance: TOL,
            native_tolerance: F16_TOL,
            run: Box::new(move |kr| gemm_case(kr, &op, seed, format, (m, n, k), (bias, acc, half))),
        });
    }
    Ok(v)
}

/// The f16 conversion of the rows: exact against the CPU's rounding (clamped to the finite
/// range), on values spanning f16's range and beyond it, the words past `n` left alone.
fn input_checks(op: String, seed: u64) -> Vec<CheckCase> {
    [1000usize, 4 * 70_000]
        .into_iter()
        .map(|n| {
            let op = op.clone();
            CheckCase::new(
                format!("{n} values"),
                // One f16 step of the largest value at most (checked per value inside).
                1e-3,
                Box::new(move |kr| input_case(kr, &op, seed, n)),
            )
        })
        .collect()
}

fn input_case(kr: &Kernels, op: &str, seed: u64, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    // Magnitudes from 2^-20 to 2^20: subnormal, normal and out-of-range f16 values.
    let x: Vec<f32> = (0..n)
        .map(|_| rng.f32(1.0) * 2f32.powf(rng.f32(20.0)))
        .collect();
    let xb = g.upload("x", &x)?;
    // Two words past the converted ones stay poisoned.
    let out = poisoned(g, n / 2 + 2)?;
    let d = input_f16(kr, &xb, n, &out)?;
    let words = run_checked(kr, &[&d], &out, op)?;
    let bits = |w: f32| w.to_bits();
    let mut got: Vec<f32> = words[..n / 2]
        .iter()
        .flat_map(|&w| {
            let b = bits(w);
            [b & 0xffff, b >> 16].map(|h| half::f16::from_bits(h as u16).to_f32())
        })
        .collect();
    if words[n / 2..]
        .iter()
        .any(|w| w.to_bits() != crate::gpu::POISON)
    {
        return Err(Error::Shape(format!("{op}: wrote past its {n} values")));
    }
    got.truncate(n);
    // WGSL rounds to either f16 neighbour of a value it cannot represent: each result must be
    // one of the two (the value itself where exact); the comparison is against round-to-even.
    let mut want = Vec::with_capacity(n);
    for (i, (&v, &h)) in x.iter().zip(&got).enumerate() {
        let c = v.clamp(-65504.0, 65504.0);
        let near = half::f16::from_f32(c);
        let a = near.to_f32();
        // The other neighbour: the adjacent f16 (same sign) on the far side of c.
        let (hb, ab) = (half::f16::from_f32(h).to_bits(), near.to_bits());
        let adjacent = (hb as i32 - ab as i32).abs() == 1 && (hb ^ ab) & 0x8000 == 0;
        let ok = h == a || (adjacent && (h - c) * (a - c) < 0.0);
        if !ok {
            return Err(Error::Shape(format!(
                "{op}: value {i} = {v} became {h}, not an f16 neighbour of it"
            )));
        }
        want.push(a);
    }
    Ok((got, want))
}

fn gemm_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    (m, n, k): (usize, usize, usize),
    (bias, acc, half): (bool, bool, Option<HalfRows>),
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    let (w, wv) = random_matrix(g, &mut rng, format, n, k)?;
    let x = rng.vec(m * k, 1.0);
    let b = rng.vec(n, 2.0);
    let prev = rng.vec(m * n, 2.0);
    let (xb, bb) = (g.upload("x", &x)?, g.upload("bias", &b)?);
    let out = poisoned(g, m * n)?;
    if acc {
        g.write(&out, 0, &prev);
    }
    let epi = GemmEpilogue {
        bias: bias.then_some(&bb),
        accumulate: acc,
        out_offset: 0,
        out_stride: 0,
    };
    // Off the cooperative-matrix devices the f16-row specs run the f32-row kernel.
    let mode = match half {
        Some(h) if reads_half_as(kr, format, bias, h)? => Some(h),
        _ => None,
    };
    let got = if let Some(mode) = mode {
        let xh = g.storage_buffer("xh", (mode.rows(m) * k * 2) as u64)?;
        let conv = input_f16(kr, &xb, m * k, &xh)?;
        let d = gemm_half_as(kr, &w, (&xb, &xh), &out, m, epi, mode)?;
        run_checked(kr, &[&conv, &d], &out, op)?
    } else {
        let d = gemm(kr, &w, &xb, &out, m, epi)?;
        run_checked(kr, &[&d], &out, op)?
    };
    let mut want = if acc { prev } else { vec![0.0; m * n] };
    let result = reference::gemm::gemm(&wv, &x, m, n, k);
    reference::gemm::epilogue(&mut want, &result, n, bias.then_some(&b[..]), acc, 0, n);
    Ok((got, want))
}

/// The work of one GEMM bench case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmWork {
    pub format: WeightFormat,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// The bench cases of one GEMM op: the prefill model's projections at the prefill rows (no
/// LM head: prefill projects only the last token through it).
pub fn bench(op: &str, shapes: &BenchShapes) -> Vec<BenchCase> {
    let Some(format) = op_format(op) else {
        return Vec::new();
    };
    let p = &shapes.prefill;
    let (q, kv) = (p.q_dim(), p.kv_dim());
    let m = shapes.prefill_rows;
    [
        ("q,o", q, p.hidden),
        ("k/v", kv, p.hidden),
        ("gate/up", p.ffn, p.hidden),
        ("down", p.hidden, p.ffn),
    ]
    .into_iter()
    .map(|(role, n, k)| BenchCase {
        op: op.to_string(),
        model: p.name.clone(),
        role: role.to_string(),
        work: Arc::new(GemmWork { format, m, n, k }),
    })
    .collect()
}

impl Work for GemmWork {
    fn bytes(&self) -> u64 {
        let w = self;
        matrix_bytes(w.format, w.n, w.k) + (w.m * w.k + w.m * w.n) as u64 * 4
    }

    fn weight_bytes(&self) -> u64 {
        // The activations are rows the previous kernel just wrote (L2-resident in prefill
        // too): only the weights rotate.
        matrix_bytes(self.format, self.n, self.k)
    }

    fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }

    fn shape(&self) -> String {
        format!("{}x{}x{}", self.m, self.n, self.k)
    }

    fn prepare(&self, gpu: &Gpu, copies: usize) -> Result<Box<dyn PreparedWork>> {
        let w = *self;
        check_k(w.format, w.k)?;
        Ok(Box::new(PreparedGemm {
            work: w,
            matrices: bench_matrices(gpu, w.format, w.n, w.k, 1, copies.max(1))?,
            x: bench_input(gpu, "x", w.m * w.k)?,
            xh: gpu.storage_buffer("xh", (HalfRows::Direct.rows(w.m) * w.k * 2) as u64)?,
            out: gpu.storage_buffer("out", (w.m * w.n * 4) as u64)?,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct PreparedGemm {
    work: GemmWork,
    /// The weight copies.
    matrices: Vec<GpuMatrix>,
    x: wgpu::Buffer,
    /// The rows in f16, for the cooperative-matrix kernel where the engine gives it them
    /// (`WICK_GEMM_F16_ROWS=1`; converted in every timed run, as the engine converts once per
    /// GEMM input).
    xh: wgpu::Buffer,
    out: wgpu::Buffer,
}

impl PreparedWork for PreparedGemm {
    fn copies(&self) -> usize {
        self.matrices.len()
    }

    fn build(&self, k: &Kernels, copy: usize) -> Result<BuiltWork> {
        check_copy(copy, self.matrices.len())?;
        let (w, m) = (&self.matrices[copy], self.work.m);
        let dispatches = if super::f16_rows_enabled() && reads_half(k, w.format, false)? {
            vec![
                input_f16(k, &self.x, m * w.k, &self.xh)?,
                gemm_half(k, w, (&self.x, &self.xh), &self.out, m, Default::default())?,
            ]
        } else {
            vec![gemm(k, w, &self.x, &self.out, m, Default::default())?]
        };
        Ok(BuiltWork {
            dispatches,
            scratch: None,
        })
    }
}
