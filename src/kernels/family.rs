//! Kernel families. Each `kernels/<family>.rs` declares one [`Family`]: its pipelines with
//! the native variants that back them (and what those natives cover), the reference checks of
//! those pipelines, and the shapes it is benchmarked on. [`super::FAMILIES`] lists every
//! family; the catalog (`wick kernels list`), `wick kernels check`, `wick kernels bench` and
//! [`super::native_specs`] iterate over it, so a new family registers itself there and
//! nowhere else.
//!
//! Check cases and bench work are engine-side code (kernels and [`crate::reference`] only):
//! the tooling runs them, compares and times, and never needs to know a family by name.

use std::any::Any;
use std::sync::Arc;

use half::f16;

use super::{Dispatch, GpuMatrix, KernelChoice, KernelSpec, Kernels, Variant};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::quant::{self, WeightFormat};
use crate::reference;

/// Everything wick knows about one kernel family.
pub struct Family {
    /// The family's name (its module under `kernels/`).
    pub name: &'static str,
    /// The WGSL files (stems under `wgsl/`) whose pipelines belong to the family.
    pub wgsl: &'static [&'static str],
    /// One spec per pipeline of every op of the family, with the native variants that back it
    /// attached (for every backend), covering every set of preprocessor defines the registry
    /// builds the family's WGSL with. Read for their op names, WGSL family and entry, defines,
    /// bindings and natives; shape-dependent constants are those of a typical shape.
    pub pipelines: fn() -> Vec<KernelSpec>,
    /// What the native variants cover, shown by `wick kernels list`: requests outside it run
    /// the portable kernel. None for a family without native variants.
    pub native_coverage: Option<fn() -> String>,
    /// The reference checks of one pipeline of the family (a spec from `pipelines`), on
    /// inputs drawn from `seed`. None: the family has no checks yet (checking it fails).
    pub checks: Option<Checks>,
    /// The bench cases of one op of the family on the given model shapes (empty: the op is
    /// not timed). None: the family is not benchmarked.
    pub bench: Option<BenchCases>,
}

/// The reference checks of one pipeline, on inputs drawn from a seed.
pub type Checks = fn(&KernelSpec, u64) -> Result<Vec<CheckCase>>;

/// The bench cases of one op on the given model shapes.
pub type BenchCases = fn(&str, &BenchShapes) -> Vec<BenchCase>;

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family").field("name", &self.name).finish()
    }
}

/// Runs one check on a registry and returns (got, want).
pub type CheckRun = Box<dyn Fn(&Kernels) -> Result<(Vec<f32>, Vec<f32>)>>;

/// One reference check of a pipeline: the same inputs for every variant.
pub struct CheckCase {
    /// What the case computes, e.g. `96x512 +bias`.
    pub shape: String,
    /// Bound on max |got - want| / max |want| for the portable kernel.
    pub tolerance: f64,
    /// The bound for a native variant (looser where it rounds to f16 matrix units).
    pub native_tolerance: f64,
    pub run: CheckRun,
}

impl CheckCase {
    /// A case with one bound for every variant.
    pub fn new(shape: String, tolerance: f64, run: CheckRun) -> CheckCase {
        CheckCase {
            shape,
            tolerance,
            native_tolerance: tolerance,
            run,
        }
    }

    pub fn tolerance(&self, variant: Variant) -> f64 {
        match variant {
            Variant::Portable => self.tolerance,
            Variant::Native => self.native_tolerance,
        }
    }
}

/// Kernel-level dimensions of a model, from which families derive their bench shapes (the
/// tooling converts its model presets into these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    pub name: String,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

impl ModelShape {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The decode matrices as (roles, rows, row length), roles of one shape joined by commas
    /// ("q,o" where q and o are both hidden x hidden): each distinct shape once.
    pub fn matrix_roles(&self) -> Vec<(String, usize, usize)> {
        let (q, kv) = (self.q_dim(), self.kv_dim());
        let mut list: Vec<(String, usize, usize)> = Vec::new();
        for (role, n, k) in [
            ("q", q, self.hidden),
            ("k/v", kv, self.hidden),
            ("o", self.hidden, q),
            ("gate/up", self.ffn, self.hidden),
            ("down", self.hidden, self.ffn),
            ("lm_head", self.vocab, self.hidden),
        ] {
            match list.iter_mut().find(|s| (s.1, s.2) == (n, k)) {
                Some(s) => s.0 = format!("{},{role}", s.0),
                None => list.push((role.to_string(), n, k)),
            }
        }
        list
    }
}

/// The shapes `wick kernels bench` times.
#[derive(Debug, Clone)]
pub struct BenchShapes {
    /// Models whose decode-step shapes (GEMV, attention) are timed.
    pub decode: Vec<ModelShape>,
    /// KV lengths of the decode attention cases.
    pub kv_lens: Vec<usize>,
    /// The model and activation rows of the prefill cases (GEMM).
    pub prefill: ModelShape,
    pub prefill_rows: usize,
}

/// One benchmarked (op, shape).
#[derive(Debug, Clone)]
pub struct BenchCase {
    pub op: String,
    /// The model the shape comes from and its role in the model (`q`, `gate/up`, ...).
    pub model: String,
    pub role: String,
    pub work: Arc<dyn Work>,
}

/// The work of one bench case: its size, and how to run it.
pub trait Work: std::fmt::Debug + Send + Sync + 'static {
    /// Bytes the kernel must move at least: weights (or K and V) read once, activations
    /// read, outputs written.
    fn bytes(&self) -> u64;
    /// Bytes of the large read-only inputs of one run (the weights, or the K and V cache):
    /// what the bench copies and rotates over so that consecutive runs read DRAM rather
    /// than the L2, as a decode step's layers do. 0: nothing worth rotating.
    fn weight_bytes(&self) -> u64;
    /// Floating-point operations (a multiply-add is two).
    fn flops(&self) -> f64;
    /// A short label of the shape, e.g. `4096x4096`.
    fn shape(&self) -> String;
    /// Uploads random inputs with `copies` (at least 1) copies of the weights; the
    /// activations, outputs and scratch are shared by every copy and every variant.
    fn prepare(&self, gpu: &Gpu, copies: usize) -> Result<Box<dyn PreparedWork>>;
    fn as_any(&self) -> &dyn Any;
}

impl dyn Work {
    /// The family's own description of the work, when it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }
}

/// A bench case's inputs on the GPU.
pub trait PreparedWork {
    /// The weight copies prepared (at least 1).
    fn copies(&self) -> usize;
    /// The case's dispatches on `k` (whose policy picks the variant), reading weight copy
    /// `copy` (errors unless below [`PreparedWork::copies`]).
    fn build(&self, k: &Kernels, copy: usize) -> Result<BuiltWork>;
}

/// Dispatches of one run of a case, and scratch buffers they bind.
pub struct BuiltWork {
    pub dispatches: Vec<Dispatch>,
    pub scratch: Option<wgpu::Buffer>,
}

/// Bytes of an n x k matrix of `f` in GPU planes.
pub fn matrix_bytes(f: WeightFormat, n: usize, k: usize) -> u64 {
    (f.qs_words_per_row(k) * n + f.scale_words(n, k)) as u64 * 4
}

/// Errors unless `k` is a multiple of `f`'s block.
pub fn check_k(f: WeightFormat, k: usize) -> Result<()> {
    if !k.is_multiple_of(f.k_multiple()) {
        return Err(Error::Shape(format!(
            "k = {k} is not a multiple of {} for {}",
            f.k_multiple(),
            f.name()
        )));
    }
    Ok(())
}

/// Random n x k `f` weights for a bench case (scaled like a real layer's).
pub fn bench_matrix(
    gpu: &Gpu,
    f: WeightFormat,
    n: usize,
    k: usize,
    seed: u64,
) -> Result<GpuMatrix> {
    let bytes = quant::random_weights(f.ggml(), n * k, seed, 1.0 / (k as f32).sqrt())?;
    GpuMatrix::upload(gpu, "bench w", &quant::pack(f, &bytes, n, k)?)
}

/// `copies` (at least 1) GPU copies of random n x k `f` weights: one packing, uploaded once
/// and copied on the GPU (content does not change speed; distinct buffers are what count).
pub fn bench_matrices(
    gpu: &Gpu,
    f: WeightFormat,
    n: usize,
    k: usize,
    seed: u64,
    copies: usize,
) -> Result<Vec<GpuMatrix>> {
    let first = bench_matrix(gpu, f, n, k, seed)?;
    let mut qs = bench_copies(gpu, first.qs, copies)?.into_iter();
    let mut scales = bench_copies(gpu, first.scales, copies)?.into_iter();
    let mut out = Vec::with_capacity(copies.max(1));
    while let (Some(qs), Some(scales)) = (qs.next(), scales.next()) {
        out.push(GpuMatrix {
            format: f,
            n,
            k,
            qs,
            scales,
        });
    }
    Ok(out)
}

/// `first` and `copies - 1` more buffers of its size and usage holding its content (copied
/// on the GPU; queue order makes the copies land before any later submit reads them).
pub fn bench_copies(gpu: &Gpu, first: wgpu::Buffer, copies: usize) -> Result<Vec<wgpu::Buffer>> {
    let mut out = Vec::with_capacity(copies.max(1));
    if copies > 1 {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for i in 1..copies {
            let label = format!("bench copy {i}");
            let b = gpu.storage_buffer(&label, first.size())?;
            enc.copy_buffer_to_buffer(&first, 0, &b, 0, first.size());
            out.push(b);
        }
        gpu.scoped(|| gpu.queue.submit([enc.finish()]))?;
    }
    out.insert(0, first);
    Ok(out)
}

/// Errors unless `copy` is one of the `copies` a bench case prepared.
pub fn check_copy(copy: usize, copies: usize) -> Result<()> {
    if copy >= copies {
        return Err(Error::InvalidArgument(format!(
            "weight copy {copy} asked of a bench case prepared with {copies}"
        )));
    }
    Ok(())
}

/// A bench activation buffer of `len` f32 (content does not change speed).
pub fn bench_input(gpu: &Gpu, label: &str, len: usize) -> Result<wgpu::Buffer> {
    gpu.upload(label, &vec![0.25f32; len.max(1)])
}

/// splitmix64: the library has no RNG dependency and the checks need only uniform values.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale].
    pub fn f32(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    pub fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.f32(scale)).collect()
    }

    /// RMSNorm weights near 1.
    pub fn norm_weights(&mut self, k: usize) -> Vec<f32> {
        (0..k).map(|_| 1.0 + self.f32(0.5)).collect()
    }
}

/// A random n x k matrix in `format`'s planes and the exact values the GPU sees.
pub fn random_matrix(
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
            let bytes = quant::random_blocks(format.ggml(), n * k, rng.next_u64())?;
            quant::pack(format, &bytes, n, k)?
        }
        Err(e) => return Err(e),
    };
    Ok((
        GpuMatrix::upload(gpu, "check w", &packed)?,
        quant::unpack(&packed),
    ))
}

/// An output buffer of `len` f32 filled with NaN, so an element never written shows.
pub fn poisoned(gpu: &Gpu, len: usize) -> Result<wgpu::Buffer> {
    let b = gpu.storage_buffer("check out", (len.max(1) * 4) as u64)?;
    gpu.poison(&b);
    Ok(b)
}

/// An f16 cache `[n_kv_heads][capacity][head_dim]`, random at positions below `len` and NaN
/// after, so a read past the live length shows.
pub fn random_cache(rng: &mut Rng, n_kv: usize, hd: usize, cap: usize, len: usize) -> Vec<f16> {
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

/// Errors unless every dispatch of `op` among `ds` runs `variant` (and there is one).
pub fn ensure_variant(ds: &[&Dispatch], op: &str, variant: Variant) -> Result<()> {
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

/// Reads `out` after running `ds`, having checked that `op` ran as the variant the registry
/// was built for (native when its policy picks native for `op`, else portable).
pub fn run_checked(
    kr: &Kernels,
    ds: &[&Dispatch],
    out: &wgpu::Buffer,
    op: &str,
) -> Result<Vec<f32>> {
    let variant = match kr.policy.choice_for(op) {
        KernelChoice::Native => Variant::Native,
        _ => Variant::Portable,
    };
    ensure_variant(ds, op, variant)?;
    kr.run(ds)?;
    kr.gpu.read_vec(out)
}
