//! The batched GEMV's reference checks and bench work (see [`crate::kernels::family`]).

use std::any::Any;
use std::sync::Arc;

use super::{gemv_batch, BatchEpilogue};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::family::{
    bench_input, bench_matrices, check_copy, check_k, matrix_bytes, poisoned, random_matrix,
    run_checked, BenchCase, BenchShapes, BuiltWork, CheckCase, PreparedWork, Rng, Work,
};
use crate::kernels::{op_format, GpuMatrix, KernelSpec, Kernels};
use crate::quant::WeightFormat;
use crate::reference;

/// The single GEMV's bound (gemv/cases.rs): f32 accumulation over k <= 1024 stays near 1e-6
/// of the largest output; one wrong weight, scale, nibble or activation row is above 1e-3.
const TOL: f64 = 2e-4;

/// One check: `batch` rows against an n x k matrix, with or without the epilogue (bias,
/// accumulate, an output offset and a row stride wider than n).
#[derive(Clone, Copy)]
struct Case {
    batch: usize,
    n: usize,
    k: usize,
    epilogue: bool,
}

/// The checks of one pipeline: a batch of 3 (three rows per group: a split that is no power of
/// two) on 96 rows, and the kernel's limit of 8 on 37 rows (the last row group part-filled)
/// with the full epilogue. Two pipelines per format: K-quant ones take seconds each to compile
/// on lavapipe, where CI runs every check.
pub fn checks(spec: &KernelSpec, seed: u64) -> Result<Vec<CheckCase>> {
    let op = spec.op.clone();
    let format = op_format(&op)
        .ok_or_else(|| Error::Unsupported(format!("GEMV op {op} names no weight format")))?;
    let cases = [
        Case {
            batch: 3,
            n: 96,
            k: 512,
            epilogue: false,
        },
        Case {
            batch: 8,
            n: 37,
            k: 1024,
            epilogue: true,
        },
    ];
    Ok(cases
        .into_iter()
        .map(|c| {
            let op = op.clone();
            let epi = if c.epilogue {
                ", +bias +acc, out_offset 3, stride n+5"
            } else {
                ""
            };
            CheckCase::new(
                format!("{} x {}x{}{epi}", c.batch, c.n, c.k),
                TOL,
                Box::new(move |kr| run_case(kr, &op, seed, format, c)),
            )
        })
        .collect())
}

fn run_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    c: Case,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let (b, n, k) = (c.batch, c.n, c.k);
    let mut rng = Rng(seed);
    let (w, wv) = random_matrix(g, &mut rng, format, n, k)?;
    let x = rng.vec(b * k, 1.0);
    let bias = rng.vec(n, 2.0);
    let prev = rng.vec(b * n, 2.0);
    let (off, stride) = if c.epilogue { (3, n + 5) } else { (0, n) };
    let (xb, bb) = (g.upload("x", &x)?, g.upload("bias", &bias)?);
    let out = poisoned(g, (b - 1) * stride + off + n)?;
    if c.epilogue {
        for (r, p) in prev.chunks_exact(n).enumerate() {
            g.write(&out, ((r * stride + off) * 4) as u64, p);
        }
    }
    let epi = BatchEpilogue {
        bias: c.epilogue.then_some(&bb),
        accumulate: c.epilogue,
        out_offset: off,
        out_stride: Some(stride),
    };
    let d = gemv_batch(kr, &w, &xb, b, &out, epi)?;
    let all = run_checked(kr, &[&d], &out, op)?;
    let got = (0..b)
        .flat_map(|r| all[r * stride + off..r * stride + off + n].iter().copied())
        .collect();
    let want = reference::gemv::gemv_batch(
        &wv,
        n,
        k,
        &x,
        b,
        c.epilogue.then_some(&bias[..]),
        c.epilogue.then_some(&prev[..]),
    );
    Ok((got, want))
}

/// The batch sizes timed: 1 (against the single GEMV's row of the same shape) and the
/// powers of two up to the kernel's limit.
pub const BENCH_BATCHES: [usize; 4] = [1, 2, 4, 8];

/// The work of one batched GEMV bench case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvBatchWork {
    pub format: WeightFormat,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
}

/// The bench cases of one batched GEMV op: each decode matrix shape of each model (roles of
/// one shape timed once, as the single GEMV's cases), at each of [`BENCH_BATCHES`].
pub fn bench(op: &str, shapes: &BenchShapes) -> Vec<BenchCase> {
    let Some(format) = op_format(op) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in &shapes.decode {
        let roles = p.matrix_roles();
        for (role, n, k) in roles {
            for batch in BENCH_BATCHES {
                out.push(BenchCase {
                    op: op.to_string(),
                    model: p.name.clone(),
                    role: role.clone(),
                    work: Arc::new(GemvBatchWork {
                        format,
                        n,
                        k,
                        batch,
                    }),
                });
            }
        }
    }
    out
}

impl Work for GemvBatchWork {
    /// The weights once, the batch's activations read and outputs written.
    fn bytes(&self) -> u64 {
        matrix_bytes(self.format, self.n, self.k) + (self.batch * (self.k + self.n)) as u64 * 4
    }

    fn weight_bytes(&self) -> u64 {
        matrix_bytes(self.format, self.n, self.k)
    }

    fn flops(&self) -> f64 {
        2.0 * (self.batch * self.n * self.k) as f64
    }

    fn shape(&self) -> String {
        format!("{} x {}x{}", self.batch, self.n, self.k)
    }

    fn prepare(&self, gpu: &Gpu, copies: usize) -> Result<Box<dyn PreparedWork>> {
        let copies = copies.max(1);
        check_k(self.format, self.k)?;
        let mats = bench_matrices(gpu, self.format, self.n, self.k, 1, copies)?;
        let x = bench_input(gpu, "x", self.batch * self.k)?;
        let out = gpu.storage_buffer("out", (self.batch * self.n * 4) as u64)?;
        Ok(Box::new(PreparedBatch {
            work: *self,
            mats,
            x,
            out,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct PreparedBatch {
    work: GemvBatchWork,
    /// The weight copies.
    mats: Vec<GpuMatrix>,
    x: wgpu::Buffer,
    out: wgpu::Buffer,
}

impl PreparedWork for PreparedBatch {
    fn copies(&self) -> usize {
        self.mats.len()
    }

    fn build(&self, k: &Kernels, copy: usize) -> Result<BuiltWork> {
        check_copy(copy, self.mats.len())?;
        let d = gemv_batch(
            k,
            &self.mats[copy],
            &self.x,
            self.work.batch,
            &self.out,
            BatchEpilogue::default(),
        )?;
        Ok(BuiltWork {
            dispatches: vec![d],
            scratch: None,
        })
    }
}
