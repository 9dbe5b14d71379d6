//! The GEMM family's reference checks and bench work (see [`crate::kernels::family`]).

use std::any::Any;
use std::sync::Arc;

use super::{gemm, GemmEpilogue};
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
        v.push(CheckCase {
            shape: format!("{m}x{n}x{k}{epi}"),
            tolerance: TOL,
            native_tolerance: F16_TOL,
            run: Box::new(move |kr| gemm_case(kr, &op, seed, format, (m, n, k), (bias, acc))),
        });
    }
    Ok(v)
}

fn gemm_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    (m, n, k): (usize, usize, usize),
    (bias, acc): (bool, bool),
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
    let d = gemm(kr, &w, &xb, &out, m, epi)?;
    let got = run_checked(kr, &[&d], &out, op)?;
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
    out: wgpu::Buffer,
}

impl PreparedWork for PreparedGemm {
    fn copies(&self) -> usize {
        self.matrices.len()
    }

    fn build(&self, k: &Kernels, copy: usize) -> Result<BuiltWork> {
        check_copy(copy, self.matrices.len())?;
        let d = gemm(
            k,
            &self.matrices[copy],
            &self.x,
            &self.out,
            self.work.m,
            Default::default(),
        )?;
        Ok(BuiltWork {
            dispatches: vec![d],
            scratch: None,
        })
    }
}
