//! The GEMV family's reference checks and bench work (see [`crate::kernels::family`]).
//!
//! Checks go through the public host functions, so the host's dispatch for a native kernel
//! (its fixed work split) is checked too.

use std::any::Any;
use std::sync::Arc;

use super::{gemv, gemv_qkv, gemv_swiglu, gemv_swiglu_normed, qkv_supported, GemvEpilogue};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::family::{
    bench_input, bench_matrices, check_copy, check_k, matrix_bytes, poisoned, random_matrix,
    run_checked, BenchCase, BenchShapes, BuiltWork, CheckCase, PreparedWork, Rng, Work,
};
use crate::kernels::{op_format, GpuMatrix, KernelSpec, Kernels};
use crate::quant::WeightFormat;
use crate::reference;

/// Bound on max |d| / max |want|: f32 accumulation over k <= 1024 against an f64 reference
/// stays near 1e-6 (the kernel tests bound it by 1e-4); one wrong weight, scale or nibble
/// moves an output by ~1/k of the row's scale, above 1e-3.
const TOL: f64 = 2e-4;

/// The checks of one GEMV pipeline: two shapes per kind (plain with and without its
/// epilogue, SwiGLU, QKV with and without biases), with the pipeline's norm prologue.
pub fn checks(spec: &KernelSpec, seed: u64) -> Result<Vec<CheckCase>> {
    let op = spec.op.clone();
    let format = op_format(&op)
        .ok_or_else(|| Error::Unsupported(format!("GEMV op {op} names no weight format")))?;
    let has = |d: &str| spec.defines.contains(&d);
    let norm = has("NORM");
    let pro = if norm { " +norm" } else { "" };
    let mut v = Vec::new();
    if has("SWIGLU") {
        for (n, k) in [(96, 512), (37, 1024)] {
            let op = op.clone();
            v.push(CheckCase::new(
                format!("{n}x{k} gate+up{pro}"),
                TOL,
                Box::new(move |kr| swiglu_case(kr, &op, seed, format, (n, k), norm)),
            ));
        }
    } else if has("QKV") {
        for bias in [false, true] {
            let b = if bias { " +bias" } else { "" };
            let op = op.clone();
            let case = QkvCase {
                ns: [128, 32, 32],
                k: 512,
                bias,
                norm,
            };
            v.push(CheckCase::new(
                format!("q 128, k/v 32 x 512{b}{pro}"),
                TOL,
                Box::new(move |kr| qkv_case(kr, &op, seed, format, case)),
            ));
        }
    } else {
        for (n, k, bias, acc, off) in [(96, 512, false, false, 0), (37, 1024, true, true, 5)] {
            let epi = match (bias, acc) {
                (true, true) => format!(" +bias +acc, out_offset {off}"),
                _ => String::new(),
            };
            let op = op.clone();
            let case = PlainCase {
                n,
                k,
                bias,
                acc,
                off,
                norm,
            };
            v.push(CheckCase::new(
                format!("{n}x{k}{epi}{pro}"),
                TOL,
                Box::new(move |kr| plain_case(kr, &op, seed, format, case)),
            ));
        }
    }
    Ok(v)
}

/// x, normalised on the CPU when the pipeline has the norm prologue.
fn normed_x(x: Vec<f32>, norm: Option<&[f32]>, eps: f32) -> Vec<f32> {
    match norm {
        Some(w) => reference::rmsnorm::rmsnorm(&x, w, x.len(), eps),
        None => x,
    }
}

#[derive(Clone, Copy)]
struct PlainCase {
    n: usize,
    k: usize,
    bias: bool,
    acc: bool,
    off: usize,
    norm: bool,
}

fn plain_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    c: PlainCase,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let (n, k, off) = (c.n, c.k, c.off);
    let mut rng = Rng(seed);
    let (w, wv) = random_matrix(g, &mut rng, format, n, k)?;
    let x = rng.vec(k, 1.0);
    let b = rng.vec(n, 2.0);
    let prev = rng.vec(n, 2.0);
    let nw = rng.norm_weights(k);
    let eps = 1e-5;
    let (xb, bb, nwb) = (
        g.upload("x", &x)?,
        g.upload("bias", &b)?,
        g.upload("norm", &nw)?,
    );
    let out = poisoned(g, off + n)?;
    if c.acc {
        g.write(&out, (off * 4) as u64, &prev);
    }
    let epi = GemvEpilogue {
        bias: c.bias.then_some(&bb),
        accumulate: c.acc,
        out_offset: off,
        norm: c.norm.then_some((&nwb, eps)),
    };
    let d = gemv(kr, &w, &xb, &out, epi)?;
    let got = run_checked(kr, &[&d], &out, op)?;
    let xr = normed_x(x, c.norm.then_some(&nw[..]), eps);
    let want = reference::gemv::gemv_epilogue(
        &wv,
        n,
        k,
        &xr,
        c.bias.then_some(&b[..]),
        c.acc.then_some(&prev[..]),
    );
    Ok((got[off..off + n].to_vec(), want))
}

fn swiglu_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    (n, k): (usize, usize),
    norm: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    let (gate, gv) = random_matrix(g, &mut rng, format, n, k)?;
    let (up, uv) = random_matrix(g, &mut rng, format, n, k)?;
    let x = rng.vec(k, 1.0);
    let nw = rng.norm_weights(k);
    let eps = 1e-5;
    let (xb, nwb) = (g.upload("x", &x)?, g.upload("norm", &nw)?);
    let out = poisoned(g, n)?;
    let d = if norm {
        gemv_swiglu_normed(kr, &gate, &up, &xb, (&nwb, eps), &out)?
    } else {
        gemv_swiglu(kr, &gate, &up, &xb, &out)?
    };
    let got = run_checked(kr, &[&d], &out, op)?;
    let xr = normed_x(x, norm.then_some(&nw[..]), eps);
    Ok((got, reference::gemv::gemv_swiglu(&gv, &uv, n, k, &xr)))
}

#[derive(Clone, Copy)]
struct QkvCase {
    ns: [usize; 3],
    k: usize,
    bias: bool,
    norm: bool,
}

fn qkv_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    c: QkvCase,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let (ns, k) = (c.ns, c.k);
    let mut rng = Rng(seed);
    let mut mats = Vec::new();
    for n in ns {
        mats.push(random_matrix(g, &mut rng, format, n, k)?);
    }
    if !qkv_supported(&g.caps, &mats[0].0, &mats[1].0, &mats[2].0) {
        return Err(Error::Unsupported(
            "the fused QKV GEMV does not support this shape on this device".into(),
        ));
    }
    let x = rng.vec(k, 1.0);
    let biases: Vec<Vec<f32>> = ns.iter().map(|&n| rng.vec(n, 2.0)).collect();
    let nw = rng.norm_weights(k);
    let eps = 1e-5;
    let (xb, nwb) = (g.upload("x", &x)?, g.upload("norm", &nw)?);
    let bb = biases
        .iter()
        .map(|b| g.upload("bias", b))
        .collect::<Result<Vec<_>>>()?;
    let outs = ns
        .iter()
        .map(|&n| poisoned(g, n))
        .collect::<Result<Vec<_>>>()?;
    let d = gemv_qkv(
        kr,
        [&mats[0].0, &mats[1].0, &mats[2].0],
        &xb,
        c.bias.then(|| [&bb[0], &bb[1], &bb[2]]),
        [&outs[0], &outs[1], &outs[2]],
        c.norm.then_some((&nwb, eps)),
    )?;
    let mut got = run_checked(kr, &[&d], &outs[0], op)?;
    got.extend(g.read_vec::<f32>(&outs[1])?);
    got.extend(g.read_vec::<f32>(&outs[2])?);
    let xr = normed_x(x, c.norm.then_some(&nw[..]), eps);
    let mut want = Vec::new();
    for (i, (_, wv)) in mats.iter().enumerate() {
        want.extend(reference::gemv::gemv_epilogue(
            wv,
            ns[i],
            k,
            &xr,
            c.bias.then_some(&biases[i][..]),
            None,
        ));
    }
    Ok((got, want))
}

/// The work of one GEMV bench case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvWork {
    Plain {
        format: WeightFormat,
        n: usize,
        k: usize,
    },
    Swiglu {
        format: WeightFormat,
        n: usize,
        k: usize,
    },
    Qkv {
        format: WeightFormat,
        n: [usize; 3],
        k: usize,
    },
}

/// The bench cases of one GEMV op: the decode step's matrices of each model (shapes shared by
/// several roles timed once), its gate+up pair, or its q/k/v triple.
pub fn bench(op: &str, shapes: &BenchShapes) -> Vec<BenchCase> {
    let Some(format) = op_format(op) else {
        return Vec::new();
    };
    let kind = op
        .strip_suffix(&format!("_{}", format.name()))
        .unwrap_or(op);
    let mut out = Vec::new();
    for p in &shapes.decode {
        let (q, kv) = (p.q_dim(), p.kv_dim());
        let mut case = |role: &str, work: GemvWork| {
            out.push(BenchCase {
                op: op.to_string(),
                model: p.name.clone(),
                role: role.to_string(),
                work: Arc::new(work),
            })
        };
        match kind {
            "gemv" => {
                let shapes = p.matrix_roles();
                for (role, n, k) in shapes {
                    case(&role, GemvWork::Plain { format, n, k });
                }
            }
            "gemv_swiglu" => case(
                "gate+up",
                GemvWork::Swiglu {
                    format,
                    n: p.ffn,
                    k: p.hidden,
                },
            ),
            "gemv_qkv" => case(
                "qkv",
                GemvWork::Qkv {
                    format,
                    n: [q, kv, kv],
                    k: p.hidden,
                },
            ),
            _ => {}
        }
    }
    out
}

impl Work for GemvWork {
    fn bytes(&self) -> u64 {
        match *self {
            GemvWork::Plain { format, n, k } => matrix_bytes(format, n, k) + (k + n) as u64 * 4,
            GemvWork::Swiglu { format, n, k } => {
                2 * matrix_bytes(format, n, k) + (k + n) as u64 * 4
            }
            GemvWork::Qkv { format, n, k } => {
                n.iter().map(|&r| matrix_bytes(format, r, k)).sum::<u64>()
                    + (k + n.iter().sum::<usize>()) as u64 * 4
            }
        }
    }

    fn weight_bytes(&self) -> u64 {
        match *self {
            GemvWork::Plain { format, n, k } => matrix_bytes(format, n, k),
            GemvWork::Swiglu { format, n, k } => 2 * matrix_bytes(format, n, k),
            GemvWork::Qkv { format, n, k } => n.iter().map(|&r| matrix_bytes(format, r, k)).sum(),
        }
    }

    fn flops(&self) -> f64 {
        match *self {
            GemvWork::Plain { n, k, .. } => 2.0 * (n * k) as f64,
            GemvWork::Swiglu { n, k, .. } => 4.0 * (n * k) as f64,
            GemvWork::Qkv { n, k, .. } => 2.0 * (n.iter().sum::<usize>() * k) as f64,
        }
    }

    fn shape(&self) -> String {
        match *self {
            GemvWork::Plain { n, k, .. } => format!("{n}x{k}"),
            GemvWork::Swiglu { n, k, .. } => format!("2 x {n}x{k}"),
            GemvWork::Qkv { n, k, .. } => format!("{}+{}+{}x{k}", n[0], n[1], n[2]),
        }
    }

    fn prepare(&self, gpu: &Gpu, copies: usize) -> Result<Box<dyn PreparedWork>> {
        let copies = copies.max(1);
        let mut mats = Vec::new();
        let mut bufs = Vec::new();
        match *self {
            GemvWork::Plain { format, n, k } => {
                check_k(format, k)?;
                mats.push(bench_matrices(gpu, format, n, k, 1, copies)?);
                bufs.extend([
                    bench_input(gpu, "x", k)?,
                    gpu.storage_buffer("out", (n * 4) as u64)?,
                ]);
            }
            GemvWork::Swiglu { format, n, k } => {
                check_k(format, k)?;
                mats.push(bench_matrices(gpu, format, n, k, 1, copies)?);
                mats.push(bench_matrices(gpu, format, n, k, 2, copies)?);
                bufs.extend([
                    bench_input(gpu, "x", k)?,
                    gpu.storage_buffer("out", (n * 4) as u64)?,
                ]);
            }
            GemvWork::Qkv { format, n, k } => {
                check_k(format, k)?;
                for (i, &r) in n.iter().enumerate() {
                    mats.push(bench_matrices(gpu, format, r, k, i as u64 + 1, copies)?);
                }
                bufs.push(bench_input(gpu, "x", k)?);
                for r in n {
                    bufs.push(gpu.storage_buffer("out", (r * 4) as u64)?);
                }
            }
        }
        Ok(Box::new(PreparedGemv {
            work: *self,
            copies,
            mats,
            bufs,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct PreparedGemv {
    work: GemvWork,
    copies: usize,
    /// Per matrix of the case, its weight copies.
    mats: Vec<Vec<GpuMatrix>>,
    bufs: Vec<wgpu::Buffer>,
}

impl PreparedWork for PreparedGemv {
    fn copies(&self) -> usize {
        self.copies
    }

    fn build(&self, k: &Kernels, copy: usize) -> Result<BuiltWork> {
        check_copy(copy, self.copies)?;
        let b = &self.bufs;
        let m = |i: usize| &self.mats[i][copy];
        let d = match self.work {
            GemvWork::Plain { .. } => gemv(k, m(0), &b[0], &b[1], Default::default())?,
            GemvWork::Swiglu { .. } => gemv_swiglu(k, m(0), m(1), &b[0], &b[1])?,
            GemvWork::Qkv { .. } => gemv_qkv(
                k,
                [m(0), m(1), m(2)],
                &b[0],
                None,
                [&b[1], &b[2], &b[3]],
                None,
            )?,
        };
        Ok(BuiltWork {
            dispatches: vec![d],
            scratch: None,
        })
    }
}
