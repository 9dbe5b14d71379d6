//! The integer-dot GEMV family's reference checks and bench work (see
//! [`crate::kernels::family`]).
//!
//! Each GEMV check quantises its random activations on the GPU ([`act_q8`]), reads the
//! quantised row back and compares the GEMV with the f64 product of the exact weights and
//! the dequantised activations: the kernel's integer dot products and per-block scaling
//! should add only f32 rounding to that. (The distance to the product with the unquantised
//! activations is bounded in tests/kernels/gemv_dot.rs.)

use std::any::Any;
use std::sync::Arc;

use super::{
    act_q8, act_q8_buffer, gemv_dot, gemv_dot_qkv, gemv_dot_swiglu, qkv_dot_supported, DotEpilogue,
    DotInput, ACT_Q8_OP,
};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::family::{
    bench_matrices, check_copy, check_k, matrix_bytes, poisoned, random_matrix, run_checked,
    BenchCase, BenchShapes, BuiltWork, CheckCase, PreparedWork, Rng, Work,
};
use crate::kernels::{op_format, Dispatch, GpuMatrix, KernelSpec, Kernels};
use crate::quant::WeightFormat;
use crate::reference;
use crate::reference::act_q8::{dequantize, packed_words};

/// As the float GEMV's bound (f32 accumulation against an f64 reference of the same values).
const TOL: f64 = 2e-4;

/// With the quantising prologue and the norm (QPRO + NORM) the reference row is act_q8's
/// with the same norm, whose sum of squares may differ from the GEMV's in its last bit (other
/// workgroup size) and so move an element across a rounding boundary: one step, ~1/127 of its
/// block's largest value, ~3e-3 of these outputs. A wrong layout, scale or block moves them by
/// O(1). (Without the norm the two quantisations are the same arithmetic: [`TOL`].)
const PRO_NORM_TOL: f64 = 1e-2;

/// act_q8: every element moves by at most d/2 = max|x of its block| / 254 <= max|x| / 254;
/// the slack covers the f32 norm and reciprocal. One wrong byte or scale moves an element
/// by a step (~1/127 of its block's maximum) or more.
const ACT_TOL: f64 = 1.0 / 254.0 + 1e-5;

pub fn checks(spec: &KernelSpec, seed: u64) -> Result<Vec<CheckCase>> {
    let op = spec.op.clone();
    let has = |d: &str| spec.defines.contains(&d);
    let mut v = Vec::new();
    if op == ACT_Q8_OP {
        let norm = has("NORM");
        let pro = if norm { " +norm" } else { "" };
        // 33 blocks: an odd count pads the last (d, sum) vec4.
        for k in [512, 1056] {
            v.push(CheckCase::new(
                format!("{k}{pro}"),
                ACT_TOL,
                Box::new(move |kr| act_case(kr, seed, k, norm)),
            ));
        }
        return Ok(v);
    }
    let format = op_format(&op)
        .ok_or_else(|| Error::Unsupported(format!("gemv_dot op {op} names no weight format")))?;
    let k = if format.k_multiple() > 32 { 512 } else { 352 };
    let input = InputKind {
        pro: has("QPRO"),
        norm: has("NORM"),
    };
    let tol = if input.pro && input.norm {
        PRO_NORM_TOL
    } else {
        TOL
    };
    let how = input.label();
    if has("SWIGLU") {
        for n in [96, 37] {
            let op = op.clone();
            v.push(CheckCase::new(
                format!("{n}x{k} gate+up{how}"),
                tol,
                Box::new(move |kr| swiglu_case(kr, &op, seed, format, (n, k), input)),
            ));
        }
    } else if has("QKV") {
        for bias in [false, true] {
            let b = if bias { " +bias" } else { "" };
            let op = op.clone();
            v.push(CheckCase::new(
                format!("q 128, k/v 32 x {k}{b}{how}"),
                tol,
                Box::new(move |kr| qkv_case(kr, &op, seed, format, (k, bias), input)),
            ));
        }
    } else {
        for (n, bias, acc, off) in [(96, false, false, 0), (37, true, true, 5)] {
            let epi = if bias {
                format!(" +bias +acc, out_offset {off}")
            } else {
                String::new()
            };
            let op = op.clone();
            let case = PlainCase {
                n,
                k,
                bias,
                acc,
                off,
            };
            v.push(CheckCase::new(
                format!("{n}x{k}{epi}{how}"),
                tol,
                Box::new(move |kr| plain_case(kr, &op, seed, format, case, input)),
            ));
        }
    }
    Ok(v)
}

fn act_case(kr: &Kernels, seed: u64, k: usize, norm: bool) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    let x = rng.vec(k, 1.0);
    let nw = rng.norm_weights(k);
    let eps = 1e-5;
    let (xb, nwb) = (g.upload("x", &x)?, g.upload("norm", &nw)?);
    let xq = poisoned(g, packed_words(k))?;
    let d = act_q8(kr, &xb, k, &xq, norm.then_some((&nwb, eps)))?;
    kr.run(&[&d])?;
    let words: Vec<u32> = g.read_vec(&xq)?;
    let want = match norm {
        true => reference::rmsnorm::rmsnorm(&x, &nw, k, eps),
        false => x,
    };
    Ok((dequantize(&words, k), want))
}

/// How a check's GEMV gets its row: act_q8's output, or the f32 row it quantises itself
/// (QPRO), normalised first (NORM).
#[derive(Clone, Copy)]
struct InputKind {
    pro: bool,
    norm: bool,
}

impl InputKind {
    fn label(&self) -> &'static str {
        match (self.pro, self.norm) {
            (false, _) => "",
            (true, false) => ", prologue",
            (true, true) => ", prologue +norm",
        }
    }
}

/// A check's activation row: x (and norm weights) uploaded, and act_q8's quantisation of
/// it, which the GEMV reads (act_q8 runs first) or, with the prologue, the reference reads.
struct CheckInput {
    kind: InputKind,
    quantise: Dispatch,
    xq: wgpu::Buffer,
    xb: wgpu::Buffer,
    nw: wgpu::Buffer,
    k: usize,
}

const EPS: f32 = 1e-5;

impl CheckInput {
    fn new(kr: &Kernels, rng: &mut Rng, k: usize, kind: InputKind) -> Result<Self> {
        let g = &kr.gpu;
        let x = rng.vec(k, 1.0);
        let nw = rng.norm_weights(k);
        let (xb, nw) = (g.upload("x", &x)?, g.upload("norm", &nw)?);
        let xq = act_q8_buffer(g, k)?;
        let quantise = act_q8(kr, &xb, k, &xq, kind.norm.then_some((&nw, EPS)))?;
        Ok(CheckInput {
            kind,
            quantise,
            xq,
            xb,
            nw,
            k,
        })
    }

    /// What the GEMV binds.
    fn input(&self) -> DotInput<'_> {
        match self.kind.pro {
            false => DotInput::Quantised(&self.xq),
            true => DotInput::Row {
                x: &self.xb,
                norm: self.kind.norm.then_some((&self.nw, EPS)),
            },
        }
    }

    /// The quantiser, then the GEMV: act_q8 writes the reference row either way.
    fn run<'d>(&'d self, gemv: &'d Dispatch) -> [&'d Dispatch; 2] {
        [&self.quantise, gemv]
    }

    /// The quantised activations (read after the run).
    fn values(&self, kr: &Kernels) -> Result<Vec<f32>> {
        Ok(dequantize(&kr.gpu.read_vec::<u32>(&self.xq)?, self.k))
    }
}

#[derive(Clone, Copy)]
struct PlainCase {
    n: usize,
    k: usize,
    bias: bool,
    acc: bool,
    off: usize,
}

fn plain_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    c: PlainCase,
    kind: InputKind,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let (n, k, off) = (c.n, c.k, c.off);
    let mut rng = Rng(seed);
    let (w, wv) = random_matrix(g, &mut rng, format, n, k)?;
    let x = CheckInput::new(kr, &mut rng, k, kind)?;
    let b = rng.vec(n, 2.0);
    let prev = rng.vec(n, 2.0);
    let bb = g.upload("bias", &b)?;
    let out = poisoned(g, off + n)?;
    if c.acc {
        g.write(&out, (off * 4) as u64, &prev);
    }
    let epi = DotEpilogue {
        bias: c.bias.then_some(&bb),
        accumulate: c.acc,
        out_offset: off,
    };
    let d = gemv_dot(kr, &w, x.input(), &out, epi)?;
    let got = run_checked(kr, &x.run(&d), &out, op)?;
    let xr = x.values(kr)?;
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
    kind: InputKind,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    let (gate, gv) = random_matrix(g, &mut rng, format, n, k)?;
    let (up, uv) = random_matrix(g, &mut rng, format, n, k)?;
    let x = CheckInput::new(kr, &mut rng, k, kind)?;
    let out = poisoned(g, n)?;
    let d = gemv_dot_swiglu(kr, &gate, &up, x.input(), &out)?;
    let got = run_checked(kr, &x.run(&d), &out, op)?;
    let xr = x.values(kr)?;
    Ok((got, reference::gemv::gemv_swiglu(&gv, &uv, n, k, &xr)))
}

fn qkv_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    (k, bias): (usize, bool),
    kind: InputKind,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let ns = [128, 32, 32];
    let mut rng = Rng(seed);
    let mut mats = Vec::new();
    for n in ns {
        mats.push(random_matrix(g, &mut rng, format, n, k)?);
    }
    if !qkv_dot_supported(kr, &mats[0].0, &mats[1].0, &mats[2].0) {
        return Err(Error::Unsupported(
            "the fused QKV integer-dot GEMV does not support this shape on this device".into(),
        ));
    }
    let x = CheckInput::new(kr, &mut rng, k, kind)?;
    let biases: Vec<Vec<f32>> = ns.iter().map(|&n| rng.vec(n, 2.0)).collect();
    let bb = biases
        .iter()
        .map(|b| g.upload("bias", b))
        .collect::<Result<Vec<_>>>()?;
    let outs = ns
        .iter()
        .map(|&n| poisoned(g, n))
        .collect::<Result<Vec<_>>>()?;
    let d = gemv_dot_qkv(
        kr,
        [&mats[0].0, &mats[1].0, &mats[2].0],
        x.input(),
        bias.then(|| [&bb[0], &bb[1], &bb[2]]),
        [&outs[0], &outs[1], &outs[2]],
    )?;
    let mut got = run_checked(kr, &x.run(&d), &outs[0], op)?;
    got.extend(g.read_vec::<f32>(&outs[1])?);
    got.extend(g.read_vec::<f32>(&outs[2])?);
    let xr = x.values(kr)?;
    let mut want = Vec::new();
    for (i, (_, wv)) in mats.iter().enumerate() {
        want.extend(reference::gemv::gemv_epilogue(
            wv,
            ns[i],
            k,
            &xr,
            bias.then_some(&biases[i][..]),
            None,
        ));
    }
    Ok((got, want))
}

/// The work of one bench case. The GEMV cases time the GEMV alone: decode quantises each
/// activation row once for all the matrices that read it, which the `act_q8` cases time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotWork {
    /// Quantise a row of k.
    Act { k: usize },
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

/// The bench cases of one op: the decode step's matrices of each model (as the float GEMV's
/// cases, so `wick kernels bench --all --filter gemv` times both side by side), or the
/// quantiser on each distinct activation length.
pub fn bench(op: &str, shapes: &BenchShapes) -> Vec<BenchCase> {
    let mut out = Vec::new();
    for p in &shapes.decode {
        let (q, kv) = (p.q_dim(), p.kv_dim());
        let mut case = |role: &str, work: DotWork| {
            out.push(BenchCase {
                op: op.to_string(),
                model: p.name.clone(),
                role: role.to_string(),
                work: Arc::new(work),
            })
        };
        if op == ACT_Q8_OP {
            case("x", DotWork::Act { k: p.hidden });
            case("ffn x", DotWork::Act { k: p.ffn });
            continue;
        }
        let Some(format) = op_format(op) else {
            continue;
        };
        let kind = op
            .strip_suffix(&format!("_{}", format.name()))
            .unwrap_or(op);
        match kind {
            "gemv_dot" => {
                let list = p.matrix_roles();
                for (role, n, k) in list {
                    case(&role, DotWork::Plain { format, n, k });
                }
            }
            "gemv_dot_swiglu" => case(
                "gate+up",
                DotWork::Swiglu {
                    format,
                    n: p.ffn,
                    k: p.hidden,
                },
            ),
            "gemv_dot_qkv" => case(
                "qkv",
                DotWork::Qkv {
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

impl DotWork {
    fn k(&self) -> usize {
        match *self {
            DotWork::Act { k }
            | DotWork::Plain { k, .. }
            | DotWork::Swiglu { k, .. }
            | DotWork::Qkv { k, .. } => k,
        }
    }
}

impl Work for DotWork {
    fn bytes(&self) -> u64 {
        let xq = super::act_q8_bytes(self.k());
        match *self {
            DotWork::Act { k } => k as u64 * 4 + xq,
            DotWork::Plain { format, n, k } => matrix_bytes(format, n, k) + xq + n as u64 * 4,
            DotWork::Swiglu { format, n, k } => 2 * matrix_bytes(format, n, k) + xq + n as u64 * 4,
            DotWork::Qkv { format, n, k } => {
                n.iter().map(|&r| matrix_bytes(format, r, k)).sum::<u64>()
                    + xq
                    + n.iter().sum::<usize>() as u64 * 4
            }
        }
    }

    fn weight_bytes(&self) -> u64 {
        match *self {
            // The quantiser reads only the activation row.
            DotWork::Act { .. } => 0,
            DotWork::Plain { format, n, k } => matrix_bytes(format, n, k),
            DotWork::Swiglu { format, n, k } => 2 * matrix_bytes(format, n, k),
            DotWork::Qkv { format, n, k } => n.iter().map(|&r| matrix_bytes(format, r, k)).sum(),
        }
    }

    fn flops(&self) -> f64 {
        match *self {
            DotWork::Act { k } => 3.0 * k as f64,
            DotWork::Plain { n, k, .. } => 2.0 * (n * k) as f64,
            DotWork::Swiglu { n, k, .. } => 4.0 * (n * k) as f64,
            DotWork::Qkv { n, k, .. } => 2.0 * (n.iter().sum::<usize>() * k) as f64,
        }
    }

    fn shape(&self) -> String {
        match *self {
            DotWork::Act { k } => format!("{k}"),
            DotWork::Plain { n, k, .. } => format!("{n}x{k}"),
            DotWork::Swiglu { n, k, .. } => format!("2 x {n}x{k}"),
            DotWork::Qkv { n, k, .. } => format!("{}+{}+{}x{k}", n[0], n[1], n[2]),
        }
    }

    fn prepare(&self, gpu: &Gpu, copies: usize) -> Result<Box<dyn PreparedWork>> {
        let k = self.k();
        // Nothing to rotate for the quantiser: one copy, whatever was asked.
        let copies = match self {
            DotWork::Act { .. } => 1,
            _ => copies.max(1),
        };
        check_k(WeightFormat::Q8_0, k)?;
        // Activations like a normalised row: quantised once on the CPU.
        let x: Vec<f32> = (0..k).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        let xq = gpu.upload("xq", &reference::act_q8::quantize(&x))?;
        let mut mats = Vec::new();
        let mut bufs = vec![gpu.upload("x", &x)?, xq];
        match *self {
            DotWork::Act { .. } => {}
            DotWork::Plain { format, n, k } => {
                check_k(format, k)?;
                mats.push(bench_matrices(gpu, format, n, k, 1, copies)?);
                bufs.push(gpu.storage_buffer("out", (n * 4) as u64)?);
            }
            DotWork::Swiglu { format, n, k } => {
                check_k(format, k)?;
                mats.push(bench_matrices(gpu, format, n, k, 1, copies)?);
                mats.push(bench_matrices(gpu, format, n, k, 2, copies)?);
                bufs.push(gpu.storage_buffer("out", (n * 4) as u64)?);
            }
            DotWork::Qkv { format, n, k } => {
                check_k(format, k)?;
                for (i, &r) in n.iter().enumerate() {
                    mats.push(bench_matrices(gpu, format, r, k, i as u64 + 1, copies)?);
                }
                for r in n {
                    bufs.push(gpu.storage_buffer("out", (r * 4) as u64)?);
                }
            }
        }
        Ok(Box::new(PreparedDot {
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

struct PreparedDot {
    work: DotWork,
    copies: usize,
    /// Per matrix of the case, its weight copies.
    mats: Vec<Vec<GpuMatrix>>,
    /// x, xq, then the outputs.
    bufs: Vec<wgpu::Buffer>,
}

impl PreparedWork for PreparedDot {
    fn copies(&self) -> usize {
        self.copies
    }

    fn build(&self, k: &Kernels, copy: usize) -> Result<BuiltWork> {
        check_copy(copy, self.copies)?;
        let b = &self.bufs;
        let m = |i: usize| &self.mats[i][copy];
        let d = match self.work {
            DotWork::Act { k: len } => act_q8(k, &b[0], len, &b[1], None)?,
            DotWork::Plain { .. } => gemv_dot(k, m(0), &b[1], &b[2], Default::default())?,
            DotWork::Swiglu { .. } => gemv_dot_swiglu(k, m(0), m(1), &b[1], &b[2])?,
            DotWork::Qkv { .. } => {
                gemv_dot_qkv(k, [m(0), m(1), m(2)], &b[1], None, [&b[2], &b[3], &b[4]])?
            }
        };
        Ok(BuiltWork {
            dispatches: vec![d],
            scratch: None,
        })
    }
}
