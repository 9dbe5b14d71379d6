//! `wick kernels check`: every variant this adapter can run of each op that has a native
//! variant, and the portable kernel of the same pipeline on the same inputs, against the CPU
//! reference ([`crate::reference`]) on fresh random inputs.
//!
//! Which pipelines are checked comes from [`super::native_specs`]: each spec is checked by its
//! WGSL family (GEMV plain / SwiGLU / QKV with or without the norm prologue, decode and
//! prefill attention, GEMM), through the public host functions, so the host's dispatch for a
//! native kernel (its fixed work split) is checked too. A native spec of a family without a
//! check here is reported as a failure, never skipped.

use std::sync::Arc;

use half::f16;
use serde::Serialize;

use super::catalog::{self, native_unavailable};
use super::variant_bench::registry;
use super::{
    attention, gemm, gemv, native_specs, Dispatch, GpuMatrix, KernelSpec, Kernels, StepParams,
    Variant,
};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::quant::{self, WeightFormat};
use crate::reference;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Only ops whose name contains this.
    pub filter: Option<String>,
    /// Seed of the random inputs; None draws one from the clock (reported in the results).
    pub seed: Option<u64>,
    /// Test hook: perturbs every reference output, so a test can see the check fail.
    pub corrupt_reference: bool,
}

/// One variant of one pipeline on one shape.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub op: String,
    pub variant: Variant,
    /// The pipeline's defines (format, kind, prologue), e.g. `NORM Q8_0`.
    pub pipeline: String,
    pub shape: String,
    /// max |got - want| / max |want| (infinite when an output is NaN, i.e. never written).
    pub max_rel_err: f64,
    pub tolerance: f64,
    pub pass: bool,
    /// Why the run itself failed (build, dispatch, or a variant other than the one asked).
    pub error: Option<String>,
}

/// Everything `wick kernels check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub adapter: String,
    pub backend: String,
    pub seed: u64,
    pub rows: Vec<CheckRow>,
}

impl CheckReport {
    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.pass).count()
    }

    /// Passed and total checks per variant, and for the native rows per op kind (the op
    /// without its format: `gemv_swiglu`, `gemm`, ...), e.g. `30 of 30 checks pass: portable
    /// 15/15, native 15/15 (attention_decode 3/3, gemm 8/8, gemv 4/4)`. On Vulkan the native
    /// `gemm` rows are the cooperative-matrix GEMM.
    pub fn summary(&self) -> String {
        let tally = |rows: &mut dyn Iterator<Item = &CheckRow>| {
            rows.fold((0, 0), |(p, t), r| (p + r.pass as usize, t + 1))
        };
        let (pass, total) = tally(&mut self.rows.iter());
        let per_variant = |v: Variant| tally(&mut self.rows.iter().filter(|r| r.variant == v));
        let (pp, pt) = per_variant(Variant::Portable);
        let (np, nt) = per_variant(Variant::Native);
        let mut kinds: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.variant == Variant::Native)
            .map(|r| op_kind(&r.op))
            .collect();
        kinds.sort();
        kinds.dedup();
        let per_kind: Vec<String> = kinds
            .iter()
            .map(|k| {
                let (p, t) = tally(
                    &mut self
                        .rows
                        .iter()
                        .filter(|r| r.variant == Variant::Native && op_kind(&r.op) == *k),
                );
                format!("{k} {p}/{t}")
            })
            .collect();
        let detail = if per_kind.is_empty() {
            String::new()
        } else {
            format!(" ({})", per_kind.join(", "))
        };
        format!("{pass} of {total} checks pass: portable {pp}/{pt}, native {np}/{nt}{detail}")
    }
}

/// An op name without its weight format (`gemv_swiglu_q4_0` -> `gemv_swiglu`).
fn op_kind(op: &str) -> String {
    match catalog::op_format(op) {
        Some(f) => op
            .strip_suffix(&format!("_{}", f.name()))
            .unwrap_or(op)
            .to_string(),
        None => op.to_string(),
    }
}

/// Bounds on max |d| / max |want|. GEMV/GEMM: f32 accumulation over k <= 1024 against an f64
/// reference stays near 1e-6 (the kernel tests bound it by 1e-4); one wrong weight, scale or
/// nibble moves an output by ~1/k of the row's scale, above 1e-3. Attention: f16 K/V in both,
/// f32 exp2 and sums over a few hundred keys, ~1e-6; a dropped key moves outputs ~1e-3.
/// The native GEMMs (cooperative matrices on Vulkan, simdgroup matrices on Metal) round x
/// and W to f16 (2^-11 relative each): random-sign rounding over k <= 1024 terms stays near
/// sqrt(k) * 2^-11 of the typical sum, measured up to 3.2e-4 of max|want| on an H100.
const GEMV_TOL: f64 = 2e-4;
const GEMM_TOL: f64 = 2e-4;
const GEMM_F16_TOL: f64 = 4e-3;
const ATTENTION_TOL: f64 = 1e-4;

/// splitmix64: the library has no RNG dependency and the check needs only uniform values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale].
    fn f32(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.f32(scale)).collect()
    }
}

/// max |got - want| / max |want|; NaN anywhere in `got` (the poison never overwritten) is
/// infinite. With `corrupt`, `want` is first moved by its own scale at one element.
fn rel_err(got: &[f32], want: &[f32], corrupt: bool) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let mut want = want.to_vec();
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    if corrupt {
        if let Some(w) = want.last_mut() {
            *w += scale.max(1.0) as f32;
        }
    }
    let mut max_d = 0.0f64;
    for (g, w) in got.iter().zip(&want) {
        let d = (*g as f64 - *w as f64).abs();
        if !d.is_finite() {
            return f64::INFINITY;
        }
        max_d = max_d.max(d);
    }
    max_d / scale.max(f64::MIN_POSITIVE)
}

/// A random n x k matrix in `format`'s planes and the exact values the GPU sees.
fn matrix(
    gpu: &Gpu,
    rng: &mut Rng,
    format: WeightFormat,
    n: usize,
    k: usize,
) -> Result<(GpuMatrix, Vec<f32>)> {
    let vals = rng.vec(n * k, 1.0);
    let packed = match quant::quantize_and_pack(format, &vals, n, k) {
        Ok(p) => p,
        // Formats wick cannot quantise to: random blocks (random quants, small scales).
        Err(Error::Unsupported(_)) => {
            let bytes = quant::random_blocks(format.ggml(), n * k, rng.next())?;
            quant::pack(format, &bytes, n, k)?
        }
        Err(e) => return Err(e),
    };
    Ok((
        GpuMatrix::upload(gpu, "check w", &packed)?,
        quant::unpack(&packed),
    ))
}

fn poisoned(gpu: &Gpu, len: usize) -> Result<wgpu::Buffer> {
    let b = gpu.storage_buffer("check out", (len.max(1) * 4) as u64)?;
    gpu.poison(&b);
    Ok(b)
}

/// Errors unless every dispatch of `op` among `ds` runs `variant` (and there is one).
fn ensure_variant(ds: &[&Dispatch], op: &str, variant: Variant) -> Result<()> {
    let of_op: Vec<_> = ds.iter().filter(|d| d.pipeline.op == op).collect();
    if of_op.is_empty() {
        return Err(Error::Unsupported(format!("no dispatch of {op} was built")));
    }
    match of_op.iter().find(|d| d.pipeline.variant != variant) {
        Some(d) => Err(Error::Unsupported(format!(
            "{op} ran {:?}, not {variant:?}",
            d.pipeline.variant
        ))),
        None => Ok(()),
    }
}

/// One case: builds its dispatches on a registry, runs them, returns (got, want).
type Case<'a> = Box<dyn Fn(&Kernels) -> Result<(Vec<f32>, Vec<f32>)> + 'a>;

fn has(spec: &KernelSpec, define: &str) -> bool {
    spec.defines.contains(&define)
}

/// The cases checking `spec`: (shape label, tolerance, case).
fn cases<'a>(spec: &'a KernelSpec, seed: u64) -> Result<Vec<(String, f64, Case<'a>)>> {
    let op = spec.op.as_str();
    let format = catalog::op_format(op);
    let mut v: Vec<(String, f64, Case<'a>)> = Vec::new();
    match spec.family {
        "gemv" => {
            let format = format.ok_or_else(|| {
                Error::Unsupported(format!("GEMV op {op} names no weight format"))
            })?;
            let norm = has(spec, "NORM");
            let pro = if norm { " +norm" } else { "" };
            if has(spec, "SWIGLU") {
                for (n, k) in [(96, 512), (37, 1024)] {
                    v.push((
                        format!("{n}x{k} gate+up{pro}"),
                        GEMV_TOL,
                        Box::new(move |kr| gemv_swiglu_case(kr, op, seed, format, n, k, norm)),
                    ));
                }
            } else if has(spec, "QKV") {
                for bias in [false, true] {
                    let b = if bias { " +bias" } else { "" };
                    v.push((
                        format!("q 128, k/v 32 x 512{b}{pro}"),
                        GEMV_TOL,
                        Box::new(move |kr| {
                            gemv_qkv_case(kr, op, seed, format, [128, 32, 32], 512, bias, norm)
                        }),
                    ));
                }
            } else {
                for (n, k, bias, acc, off) in
                    [(96, 512, false, false, 0), (37, 1024, true, true, 5)]
                {
                    let epi = match (bias, acc) {
                        (true, true) => format!(" +bias +acc, out_offset {off}"),
                        _ => String::new(),
                    };
                    v.push((
                        format!("{n}x{k}{epi}{pro}"),
                        GEMV_TOL,
                        Box::new(move |kr| {
                            gemv_case(kr, op, seed, format, n, k, (bias, acc, off), norm)
                        }),
                    ));
                }
            }
        }
        "attention_decode" => {
            // (heads, kv heads, head_dim, kv_len, capacity, splits): one split writes the
            // output directly, several go through the merge pass.
            for (h, kvh, hd, len, cap, splits) in [
                (8, 2, 64, 100, 128, 1),
                (8, 2, 64, 300, 512, 4),
                (4, 4, 128, 77, 96, 3),
            ] {
                // The merge pass runs only with several splits.
                if spec.entry == "attention_merge" && splits == 1 {
                    continue;
                }
                v.push((
                    format!("{h}/{kvh} heads x {hd}, kv {len}, {splits} splits"),
                    ATTENTION_TOL,
                    Box::new(move |kr| decode_case(kr, op, seed, (h, kvh, hd), len, cap, splits)),
                ));
            }
        }
        "attention_prefill" => {
            for (h, kvh, hd, pos, toks, cap) in [(8, 2, 64, 0, 19, 32), (4, 2, 128, 40, 9, 64)] {
                v.push((
                    format!("{h}/{kvh} heads x {hd}, pos {pos}, {toks} tokens"),
                    ATTENTION_TOL,
                    Box::new(move |kr| prefill_case(kr, op, seed, (h, kvh, hd), pos, toks, cap)),
                ));
            }
        }
        "gemm" => {
            let format = format.ok_or_else(|| {
                Error::Unsupported(format!("GEMM op {op} names no weight format"))
            })?;
            let bias = has(spec, "BIAS");
            // One partial output tile of every kernel's, and 200 x 272: several tiles both
            // ways for every tiling (the cooperative-matrix GEMM's are 128 x 128, the Metal
            // one's 64 x 64), ragged in both.
            for (m, n, k, acc) in [
                (37, 96, 512, false),
                (64, 80, 256, true),
                (200, 272, 320, false),
            ] {
                let epi = match (bias, acc) {
                    (false, false) => "",
                    (false, true) => " +acc",
                    (true, false) => " +bias",
                    (true, true) => " +bias +acc",
                };
                v.push((
                    format!("{m}x{n}x{k}{epi}"),
                    GEMM_TOL,
                    Box::new(move |kr| gemm_case(kr, op, seed, format, (m, n, k), bias, acc)),
                ));
            }
        }
        other => {
            let msg = format!("no check for the {other} family yet (src/kernels/check.rs)");
            return Err(Error::Unsupported(msg));
        }
    }
    Ok(v)
}

/// Reads `out` after running `ds`, having checked that `op` ran as the variant `kr` was
/// built for ([`registry`]).
fn run(kr: &Kernels, ds: &[&Dispatch], out: &wgpu::Buffer, op: &str) -> Result<Vec<f32>> {
    let variant = if kr.policy.per_op.contains_key(op) {
        Variant::Native
    } else {
        Variant::Portable
    };
    ensure_variant(ds, op, variant)?;
    kr.run(ds)?;
    kr.gpu.read_vec(out)
}

fn rms_weights(rng: &mut Rng, k: usize) -> Vec<f32> {
    (0..k).map(|_| 1.0 + rng.f32(0.5)).collect()
}

#[allow(clippy::too_many_arguments)]
fn gemv_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    n: usize,
    k: usize,
    (bias, acc, off): (bool, bool, usize),
    norm: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    let (w, wv) = matrix(g, &mut rng, format, n, k)?;
    let x = rng.vec(k, 1.0);
    let b = rng.vec(n, 2.0);
    let prev = rng.vec(n, 2.0);
    let nw = rms_weights(&mut rng, k);
    let eps = 1e-5;
    let (xb, bb, nwb) = (
        g.upload("x", &x)?,
        g.upload("bias", &b)?,
        g.upload("norm", &nw)?,
    );
    let out = poisoned(g, off + n)?;
    if acc {
        g.write(&out, (off * 4) as u64, &prev);
    }
    let epi = gemv::GemvEpilogue {
        bias: bias.then_some(&bb),
        accumulate: acc,
        out_offset: off,
        norm: norm.then_some((&nwb, eps)),
    };
    let d = gemv::gemv(kr, &w, &xb, &out, epi)?;
    let got = run(kr, &[&d], &out, op)?;
    let xr = if norm {
        reference::rmsnorm::rmsnorm(&x, &nw, k, eps)
    } else {
        x
    };
    let want = reference::gemv::gemv_epilogue(
        &wv,
        n,
        k,
        &xr,
        bias.then_some(&b[..]),
        acc.then_some(&prev[..]),
    );
    Ok((got[off..off + n].to_vec(), want))
}

fn gemv_swiglu_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    n: usize,
    k: usize,
    norm: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    let (gate, gv) = matrix(g, &mut rng, format, n, k)?;
    let (up, uv) = matrix(g, &mut rng, format, n, k)?;
    let x = rng.vec(k, 1.0);
    let nw = rms_weights(&mut rng, k);
    let eps = 1e-5;
    let (xb, nwb) = (g.upload("x", &x)?, g.upload("norm", &nw)?);
    let out = poisoned(g, n)?;
    let d = if norm {
        gemv::gemv_swiglu_normed(kr, &gate, &up, &xb, (&nwb, eps), &out)?
    } else {
        gemv::gemv_swiglu(kr, &gate, &up, &xb, &out)?
    };
    let got = run(kr, &[&d], &out, op)?;
    let xr = if norm {
        reference::rmsnorm::rmsnorm(&x, &nw, k, eps)
    } else {
        x
    };
    Ok((got, reference::gemv::gemv_swiglu(&gv, &uv, n, k, &xr)))
}

#[allow(clippy::too_many_arguments)]
fn gemv_qkv_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    ns: [usize; 3],
    k: usize,
    bias: bool,
    norm: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    let mut mats = Vec::new();
    for n in ns {
        mats.push(matrix(g, &mut rng, format, n, k)?);
    }
    if !gemv::qkv_supported(&g.caps, &mats[0].0, &mats[1].0, &mats[2].0) {
        return Err(Error::Unsupported(
            "the fused QKV GEMV does not support this shape on this device".into(),
        ));
    }
    let x = rng.vec(k, 1.0);
    let biases: Vec<Vec<f32>> = ns.iter().map(|&n| rng.vec(n, 2.0)).collect();
    let nw = rms_weights(&mut rng, k);
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
    let d = gemv::gemv_qkv(
        kr,
        [&mats[0].0, &mats[1].0, &mats[2].0],
        &xb,
        bias.then(|| [&bb[0], &bb[1], &bb[2]]),
        [&outs[0], &outs[1], &outs[2]],
        norm.then_some((&nwb, eps)),
    )?;
    let mut got = run(kr, &[&d], &outs[0], op)?;
    got.extend(g.read_vec::<f32>(&outs[1])?);
    got.extend(g.read_vec::<f32>(&outs[2])?);
    let xr = if norm {
        reference::rmsnorm::rmsnorm(&x, &nw, k, eps)
    } else {
        x
    };
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

/// An f16 cache `[n_kv_heads][capacity][head_dim]`, random at positions below `len` and NaN
/// after, so a read past the live length shows.
fn cache(rng: &mut Rng, n_kv: usize, hd: usize, cap: usize, len: usize) -> Vec<f16> {
    let mut c = Vec::with_capacity(n_kv * cap * hd);
    for _ in 0..n_kv {
        for p in 0..cap {
            for _ in 0..hd {
                c.push(if p < len {
                    reference::kv_cache::to_f16(rng.f32(1.0))
                } else {
                    f16::NAN
                });
            }
        }
    }
    c
}

/// Random attention inputs on the GPU: K and V caches holding `pos + toks` positions, queries
/// for `toks` tokens, the step uniform, and a poisoned output.
struct AttentionInputs {
    ck: Vec<half::f16>,
    cv: Vec<half::f16>,
    q: Vec<f32>,
    scale: f32,
    ckb: wgpu::Buffer,
    cvb: wgpu::Buffer,
    qb: wgpu::Buffer,
    step: wgpu::Buffer,
    out: wgpu::Buffer,
}

fn attention_inputs(
    g: &crate::gpu::Gpu,
    seed: u64,
    (h, kvh, hd): (usize, usize, usize),
    pos: usize,
    toks: usize,
    cap: usize,
) -> Result<AttentionInputs> {
    let mut rng = Rng(seed);
    let len = pos + toks;
    let ck = cache(&mut rng, kvh, hd, cap, len);
    let cv = cache(&mut rng, kvh, hd, cap, len);
    let q = rng.vec(toks * h * hd, 1.0);
    Ok(AttentionInputs {
        scale: 1.0 / (hd as f32).sqrt(),
        ckb: g.upload("cache k", &reference::kv_cache::pack(&ck))?,
        cvb: g.upload("cache v", &reference::kv_cache::pack(&cv))?,
        qb: g.upload("q", &q)?,
        step: g.uniform(
            "step",
            &StepParams {
                pos: pos as u32,
                n_tokens: toks as u32,
                kv_len: len as u32,
                ..Default::default()
            },
        )?,
        out: poisoned(g, toks * h * hd)?,
        ck,
        cv,
        q,
    })
}

fn decode_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    (h, kvh, hd): (usize, usize, usize),
    len: usize,
    cap: usize,
    splits: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let i = attention_inputs(&kr.gpu, seed, (h, kvh, hd), len - 1, 1, cap)?;
    let att = attention::attention_decode(
        kr, &i.qb, &i.ckb, &i.cvb, &i.step, &i.out, h, kvh, hd, cap, i.scale, splits,
    )?;
    let ds: Vec<&Dispatch> = att.dispatches.iter().collect();
    let got = run(kr, &ds, &i.out, op)?;
    let want =
        reference::attention::attention_decode(&i.q, &i.ck, &i.cv, len, h, kvh, hd, cap, i.scale);
    Ok((got, want))
}

fn prefill_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    (h, kvh, hd): (usize, usize, usize),
    pos: usize,
    toks: usize,
    cap: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let i = attention_inputs(&kr.gpu, seed, (h, kvh, hd), pos, toks, cap)?;
    let d = attention::attention_prefill(
        kr, &i.qb, &i.ckb, &i.cvb, &i.step, &i.out, toks, h, kvh, hd, cap, i.scale,
    )?;
    let got = run(kr, &[&d], &i.out, op)?;
    let want = reference::attention::attention_prefill(
        &i.q, &i.ck, &i.cv, pos, toks, h, kvh, hd, cap, i.scale,
    );
    Ok((got, want))
}

fn gemm_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    format: WeightFormat,
    (m, n, k): (usize, usize, usize),
    bias: bool,
    acc: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let g = &kr.gpu;
    let mut rng = Rng(seed);
    let (w, wv) = matrix(g, &mut rng, format, n, k)?;
    let x = rng.vec(m * k, 1.0);
    let b = rng.vec(n, 2.0);
    let prev = rng.vec(m * n, 2.0);
    let (xb, bb) = (g.upload("x", &x)?, g.upload("bias", &b)?);
    let out = poisoned(g, m * n)?;
    if acc {
        g.write(&out, 0, &prev);
    }
    let epi = gemm::GemmEpilogue {
        bias: bias.then_some(&bb),
        accumulate: acc,
        out_offset: 0,
        out_stride: 0,
    };
    let d = gemm::gemm(kr, &w, &xb, &out, m, epi)?;
    let got = run(kr, &[&d], &out, op)?;
    let mut want = if acc { prev } else { vec![0.0; m * n] };
    let result = reference::gemm::gemm(&wv, &x, m, n, k);
    reference::gemm::epilogue(&mut want, &result, n, bias.then_some(&b[..]), acc, 0, n);
    Ok((got, want))
}

/// Checks every native pipeline ([`super::native_specs`]) whose op matches the filter: the
/// portable kernel and each native variant this adapter can run, on the same inputs.
pub fn check(gpu: &Arc<Gpu>, opts: &CheckOptions) -> Result<CheckReport> {
    check_specs(gpu, &native_specs(), opts)
}

/// [`check`] over the given pipeline specs (tests pass portable-only specs to exercise every
/// family's check before a native variant exists for it).
pub fn check_specs(
    gpu: &Arc<Gpu>,
    specs: &[KernelSpec],
    opts: &CheckOptions,
) -> Result<CheckReport> {
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let caps = &gpu.caps;
    let mut rows = Vec::new();
    let specs: Vec<&KernelSpec> = specs
        .iter()
        .filter(|s| opts.filter.as_deref().is_none_or(|f| s.op.contains(f)))
        .collect();
    for (i, spec) in specs.iter().enumerate() {
        let mut defines = spec.defines.clone();
        defines.sort();
        let pipeline = defines.join(" ");
        let native_here = catalog::catalog()
            .into_iter()
            .find(|o| o.op == spec.op)
            .is_some_and(|o| {
                o.native
                    .iter()
                    .any(|n| n.defines == defines && native_unavailable(caps, n).is_none())
            });
        let mut variants = vec![Variant::Portable];
        if native_here {
            variants.push(Variant::Native);
        }
        let row = |variant, shape: String, tol, result: Result<f64>| {
            let (err, error) = match result {
                Ok(e) => (e, None),
                Err(e) => (f64::INFINITY, Some(e.to_string())),
            };
            CheckRow {
                op: spec.op.clone(),
                variant,
                pipeline: pipeline.clone(),
                shape,
                max_rel_err: err,
                tolerance: tol,
                pass: error.is_none() && err <= tol,
                error,
            }
        };
        // Every pipeline gets its own inputs; both variants of one case share them.
        let seed = seed.wrapping_add(i as u64 * 0x1_0000);
        let cases = match cases(spec, seed) {
            Ok(c) => c,
            Err(e) => {
                rows.push(row(Variant::Portable, "-".into(), 0.0, Err(e)));
                continue;
            }
        };
        for variant in variants {
            let kr = registry(gpu, &spec.op, variant);
            for (shape, tol, case) in &cases {
                let result =
                    case(&kr).map(|(got, want)| rel_err(&got, &want, opts.corrupt_reference));
                let tol = if variant == Variant::Native && spec.family == "gemm" {
                    GEMM_F16_TOL
                } else {
                    *tol
                };
                rows.push(row(variant, shape.clone(), tol, result));
            }
        }
    }
    Ok(CheckReport {
        adapter: caps.adapter_name.clone(),
        backend: caps.backend.clone(),
        seed,
        rows,
    })
}
