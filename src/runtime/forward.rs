//! The forward pass, recorded for the least CPU work per token: every pipeline and bind group is
//! built once per session; per-token values live in one uniform ([`StepParams`]) written with
//! `queue.write_buffer`; a decode step is ONE compute pass and ONE submit; the next token's
//! id never leaves the GPU (argmax writes it where the next step's embedding gather reads it).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{AdapterClass, Capabilities, Gpu};
use crate::kernels::attention::{AttentionBuffers, AttentionShape, DecodeForm, SplitRule};
use crate::kernels::gemv_dot::DotInput;
use crate::kernels::kv_cache::KvPair;
use crate::kernels::rmsnorm::NormWeights;
use crate::kernels::rope::{RopeShape, RopeTables};
use crate::kernels::sample::{SampleBuffers, SampleChain, SampleStep};
use crate::kernels::{
    argmax, attention, embedding, gemm, gemv, gemv_dot, kv_cache, rmsnorm, rope, sample, swiglu,
    Dispatch, Kernels, StepParams,
};
use crate::model::weights::{LayerWeights, ModelWeights, SplitMatrix};
use crate::model::ModelConfig;
use crate::runtime::kv_cache::KvCache;

pub use super::plan::{prefill_chunks, PREFILL_CHUNK, PREFILL_CHUNK_LARGE, PREFILL_CHUNK_XL};

/// Activation buffers of one session, sized for a prefill chunk (decode uses row 0).
struct Activations {
    h: wgpu::Buffer,
    h_last: wgpu::Buffer,
    normed: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    /// q and k after the per-head RMSNorm (Qwen3); unused otherwise.
    qn: wgpu::Buffer,
    kn: wgpu::Buffer,
    attn: wgpu::Buffer,
    gu: wgpu::Buffer,
    act: wgpu::Buffer,
    logits: wgpu::Buffer,
    /// The decode row quantised to 8-bit blocks for the integer-dot GEMVs
    /// ([`DecodeFusion::int_dot`]); 4 bytes otherwise.
    xq: wgpu::Buffer,
    /// Split partials of decode attention, shared by every layer and split count.
    partials: wgpu::Buffer,
    /// A prefill chunk's GEMM input rows in f16, for the cooperative-matrix GEMM
    /// ([`gemm::gemm_half`]); 4 bytes where it cannot run.
    xh: wgpu::Buffer,
}

/// Which fusions the decode step uses. All on is the fast path; all off is the plain
/// sequence (RMSNorm, q/k/v GEMVs, RoPE q, RoPE k, KV write, attention, O GEMV, RMSNorm,
/// gate and up GEMVs, SwiGLU, down GEMV, RMSNorm, LM head) that tests compare it against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeFusion {
    /// q, k, v projections in one GEMV (where `gemv::qkv_supported`).
    pub qkv: bool,
    /// RMSNorm inside the GEMV that reads the normalised row (attention norm, FFN norm,
    /// final norm) instead of its own dispatch.
    pub norm_prologue: bool,
    /// RoPE and the KV-cache write in one dispatch (where `rope::rope_kv_supported`).
    pub rope_kv: bool,
    /// Gate and up GEMVs with the SwiGLU in one dispatch.
    pub swiglu: bool,
    /// Attention split count per step from the cached length (one split and no merge pass
    /// while the cache is short; [`attention::decode_splits`]) instead of the session's
    /// largest count every step.
    pub short_attention: bool,
    /// GEMVs on 8-bit quantised activations (`kernels::gemv_dot`) for the formats that
    /// have them: one quantisation (with the norm, where the GEMV would have had the norm
    /// prologue) per activation row, shared by the GEMVs reading it. Off in [`Self::ALL`];
    /// sessions take it per adapter ([`Self::for_adapter`]).
    pub int_dot: bool,
    /// Decode attention in the lanes form ([`attention::DecodeForm::Lanes`]) where the head
    /// shape and adapter allow ([`attention::lanes_unfit`]); else the tiled form. Sessions
    /// take it per adapter ([`lanes_attention_default`]).
    pub lanes_attention: bool,
    /// With `int_dot`: each integer-dot GEMV quantises its (normalised) row in its own
    /// prologue where the row fits ([`gemv_dot::prologue_fits`]) instead of a quantiser
    /// dispatch before it (`WICK_DOT_PROLOGUE=0|1`; sessions: [`DOT_PROLOGUE_DEFAULT`]).
    pub dot_prologue: bool,
}

impl DecodeFusion {
    pub const ALL: DecodeFusion = DecodeFusion {
        qkv: true,
        norm_prologue: true,
        rope_kv: true,
        swiglu: true,
        short_attention: true,
        int_dot: false,
        lanes_attention: true,
        dot_prologue: true,
    };
    pub const NONE: DecodeFusion = DecodeFusion {
        qkv: false,
        norm_prologue: false,
        rope_kv: false,
        swiglu: false,
        short_attention: false,
        int_dot: false,
        lanes_attention: false,
        dot_prologue: false,
    };

    /// [`Self::ALL`] with the per-adapter choices: the integer-dot GEMVs where
    /// [`int_dot_default`] turns them on for this adapter and model width, the lanes
    /// attention form ([`lanes_attention_default`]) and the quantising prologue
    /// ([`DOT_PROLOGUE_DEFAULT`]), each unless `WICK_INT_DOT`, `WICK_ATTN_LANES` or
    /// `WICK_DOT_PROLOGUE` says otherwise (`1` on, `0` off).
    pub fn for_adapter(caps: &Capabilities, hidden: usize) -> Result<DecodeFusion> {
        let int_dot = env_switch("WICK_INT_DOT", int_dot_default(caps, hidden))?;
        let lanes_attention = env_switch("WICK_ATTN_LANES", lanes_attention_default(caps))?;
        let dot_prologue = env_switch("WICK_DOT_PROLOGUE", DOT_PROLOGUE_DEFAULT)?;
        Ok(DecodeFusion {
            int_dot,
            lanes_attention,
            dot_prologue,
            ..DecodeFusion::ALL
        })
    }
}

/// Whether decode attention takes the lanes form by default, per adapter class, from
/// measurements (`wick bench -p 0 -n 128 -d D -r 3`, `WICK_ATTN_LANES=0` -> `=1`, Vulkan, one
/// call on an NVIDIA H100, 2026-12-07):
/// - NVIDIA: off. The tiled native SPIR-V kernel is faster at every depth measured:
///   Llama-3-8B Q4_0 d0 317.3 -> 280.0 tok/s, d1024 284.3 -> 259.0, d4096 223.2 -> 187.0
///   (pass 1 1460 -> 2144 us per token); Llama-3.2-1B Q4_0 d4096 811.2 -> 542.2; SmolLM2
///   d0 1062.5 -> 843.4.
/// - Apple: off; the native MSL kernel (tiled form, simdgroup softmax) serves the shapes the
///   models use, and the lanes form has not run on an Apple GPU.
/// - AMD, Intel, others: off until measured.
pub fn lanes_attention_default(_caps: &Capabilities) -> bool {
    false
}

/// An on/off environment switch: unset or empty gives `default`, `1` on, `0` off.
fn env_switch(name: &str, default: bool) -> Result<bool> {
    match std::env::var(name).as_deref() {
        Err(_) | Ok("") => Ok(default),
        Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(o) => Err(Error::InvalidArgument(format!(
            "{name}={o:?} (expected 0 or 1)"
        ))),
    }
}

/// Whether sessions quantise in the integer-dot GEMVs' prologue ([`DecodeFusion::dot_prologue`]):
/// off, from measurements (`wick bench -p 0 -n 128 -r 3`, `WICK_DOT_PROLOGUE=0` -> `=1`,
/// Vulkan, NVIDIA H100, 2026-12-07): Llama-3-8B Q4_0 325.4 -> 241.3 tok/s, Q4_K_M 304.6 ->
/// 229.4, Q8_0 232.1 -> 198.5. The 129 quantiser dispatches per token go (325 -> 196), but
/// every GEMV workgroup repeating the quantisation costs more (Q4_0 plain GEMVs 1287 -> 2114
/// us per token): the GEMVs' workgroups are many and short, one lane per block leaves half
/// of a 256-lane workgroup idle, and the array lowers occupancy.
pub const DOT_PROLOGUE_DEFAULT: bool = false;

/// Hidden sizes from which decode runs on the integer-dot GEMVs where the adapter's entry
/// below turns them on: the quantisation adds a dispatch before each group of GEMVs reading
/// one row, which a wide model's GEMVs repay and a narrow one's do not.
pub const INT_DOT_MIN_HIDDEN: usize = 2048;

/// Whether decode quantises activations and runs the integer-dot GEMVs by default, per
/// adapter class, from measurements (`wick bench -p 0 -n 128 -r 5` decode tok/s with
/// `WICK_INT_DOT=0` -> `=1`, Vulkan, one call on an NVIDIA H200, 2026-12-07):
/// - NVIDIA: on from [`INT_DOT_MIN_HIDDEN`]. Llama-3-8B (hidden 4096) Q4_K_M 96.7 -> 331.6,
///   Q4_0 225.1 -> 371.4, Q8_0 217.4 -> 269.3; Llama-3.2-1B (2048) Q4_0 935.0 -> 1189.8;
///   below it the quantiser's dispatches cost more than the GEMVs save: Qwen2.5-0.5B (896)
///   Q8_0 985.7 -> 870.3, SmolLM2-135M (576) Q4_1 1020.2 -> 809.8.
/// - Apple: off. Apple GPUs have no int8 dot-product instruction (`dot4I8Packed` becomes
///   shifts and multiplies); not measured.
/// - AMD, Intel, others: off until measured.
/// - CPU (lavapipe): off; tests turn it on explicitly.
pub fn int_dot_default(caps: &Capabilities, hidden: usize) -> bool {
    match caps.class {
        AdapterClass::Nvidia => hidden >= INT_DOT_MIN_HIDDEN,
        AdapterClass::Apple
        | AdapterClass::Amd
        | AdapterClass::Intel
        | AdapterClass::Cpu
        | AdapterClass::Other => false,
    }
}

impl Default for DecodeFusion {
    fn default() -> Self {
        DecodeFusion::ALL
    }
}

/// The row a matmul reads and the RMSNorm a GEMV applies on load, if any.
type NormedInput<'a> = (&'a wgpu::Buffer, Option<NormWeights<'a>>);

/// Recorded work of one session: decode step, prefill chunk and the LM head, all prebuilt.
pub struct Forward {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    /// Prefill chunk sizes, ascending ([`prefill_chunks`]); `chunks[0]` is the small one.
    pub chunks: Vec<usize>,
    /// Whether a prompt rest of a few small chunks runs as one 512-token chunk instead
    /// ([`super::plan::chunk_lengths`]): on discrete NVIDIA and AMD GPUs.
    pub round_up_chunks: bool,
    pub step: wgpu::Buffer,
    /// u32 ids of a prefill chunk.
    pub ids: wgpu::Buffer,
    /// The current token: `[id, flags]` (u32). The id is read by decode's embedding and
    /// written by argmax or the sampling chain; flags come from the sampling chain.
    pub token: wgpu::Buffer,
    /// Token ids by position (the cache's tokens, then the sampled one): the sampling
    /// chain's repetition-penalty window.
    pub history: wgpu::Buffer,
    /// The sampling chain's per-token settings ([`SampleStep`]).
    sample_step: wgpu::Buffer,
    /// The sampling chain's final candidates and probabilities.
    pub probs: wgpu::Buffer,
    act: Activations,
    /// Every layer's attention and RoPE geometry.
    heads: AttentionShape,
    rope: RopeShape,
    /// The decode step per attention split count (ascending); each step takes the one
    /// [`attention::decode_splits`] picks for its cached length.
    decode: Vec<(usize, Vec<Dispatch>)>,
    /// How the step's split count follows the cached length (`WICK_ATTN_SPLIT_KEYS`, the
    /// adapter class's measured rule, or [`attention::SPLIT_KEYS`] with one split or the most).
    split_rule: SplitRule,
    /// Final norm + LM head over the decoded row (`h`) and over the prefill's last row.
    decode_lm: Vec<Dispatch>,
    /// The prefill chunk of each size in `chunks`.
    prefill: Vec<(usize, Vec<Dispatch>)>,
    prefill_lm: Vec<Dispatch>,
    /// Greedy token choice: argmax of the logits into `token`.
    argmax: argmax::Argmax,
    _argmax_status: wgpu::Buffer,
    /// Sampled token choice, when the session samples on the GPU ([`Self::set_sampler`]).
    sampler: Option<SampleChain>,
    /// The LM head over every row of a small prefill chunk, built on first use
    /// ([`Self::rows_head`]).
    rows_head: Option<RowsHead>,
    _attn: Vec<attention::DecodeAttention>,
}

/// Final norm and LM head over all rows of a prefill chunk of up to `rows` tokens, into
/// `logits` (`rows x vocab`): one GEMM where the decode head would take one GEMV per token.
/// Perplexity reads the logits of every position of a chunk this way.
pub struct RowsHead {
    pub rows: usize,
    pub logits: wgpu::Buffer,
    dispatches: Vec<Dispatch>,
    /// Its buffer's share of the device memory, beside the session's own reservation.
    _reservation: crate::gpu::MemoryReservation,
}

/// How the layer graph ([`Forward::layers`]) is lowered to kernels.
#[derive(Debug, Clone, Copy)]
enum Lowering {
    /// One token: matmuls are GEMVs, with the fusions of `fusion`; attention over `splits`
    /// KV splits.
    Decode { fusion: DecodeFusion, splits: usize },
    /// A chunk of `rows` tokens: matmuls are GEMMs; RoPE and the cache write fused wherever
    /// the head shape allows.
    Prefill { rows: usize },
}

impl Lowering {
    /// Activation rows of one pass.
    fn rows(self) -> usize {
        match self {
            Lowering::Decode { .. } => 1,
            Lowering::Prefill { rows } => rows,
        }
    }
}

/// Where a matmul's result goes: columns from `col0` of output rows `stride` wide (0: as wide
/// as the matrix has rows), plus `bias`, added to what is there with `accumulate`.
#[derive(Clone, Copy, Default)]
struct MatmulOut<'a> {
    bias: Option<&'a wgpu::Buffer>,
    accumulate: bool,
    col0: usize,
    stride: usize,
}

impl<'a> MatmulOut<'a> {
    fn biased(bias: Option<&'a wgpu::Buffer>) -> Self {
        MatmulOut {
            bias,
            ..Default::default()
        }
    }

    /// The residual add: `out += x W^T`.
    fn residual() -> Self {
        MatmulOut {
            accumulate: true,
            ..Default::default()
        }
    }

    /// Columns `col0..` of rows `stride` wide.
    fn columns(col0: usize, stride: usize) -> Self {
        MatmulOut {
            col0,
            stride,
            ..Default::default()
        }
    }
}

/// One dispatch list under construction: the layer graph's ops, lowered as `how` says.
struct Lower<'a> {
    k: &'a Kernels,
    act: &'a Activations,
    eps: f32,
    how: Lowering,
    list: Vec<Dispatch>,
    /// Decode attentions built (their scratch buffers live as long as the session).
    attn: Vec<attention::DecodeAttention>,
    /// What `act.xq` holds: the quantisation of (row buffer, norm weights), valid while
    /// `list` is as long as it was after the last dispatch that wrote or read it (anything
    /// else pushed in between may have changed the row).
    xq_of: Option<(*const wgpu::Buffer, Option<*const wgpu::Buffer>, usize)>,
    /// What `act.xh` holds: the f16 copy of (row buffer, values), valid as `xq_of` is.
    xh_of: Option<(*const wgpu::Buffer, usize, usize)>,
}

impl<'a> Lower<'a> {
    /// The row a norm-consuming matmul reads: `h` normalised on load (decode with the norm
    /// prologue), or an RMSNorm of `h` into `normed` first.
    fn norm<'w>(&mut self, weight: &'w wgpu::Buffer, hidden: usize) -> Result<NormedInput<'w>>
    where
        'a: 'w,
    {
        let a = self.act;
        if let Lowering::Decode { fusion, .. } = self.how {
            if fusion.norm_prologue {
                return Ok((&a.h, Some((weight, self.eps))));
            }
        }
        let rows = self.how.rows();
        self.list.push(rmsnorm::rmsnorm(
            self.k,
            &a.h,
            (weight, self.eps),
            &a.normed,
            hidden,
            rows,
        )?);
        Ok((&a.normed, None))
    }

    /// `out (+)= x W^T (+ bias)` over every row chunk of `m`: GEMVs in decode (with `x`'s
    /// norm prologue), GEMMs in prefill.
    fn matmul(
        &mut self,
        m: &SplitMatrix,
        (x, norm): NormedInput,
        out: &wgpu::Buffer,
        o: MatmulOut,
    ) -> Result<()> {
        check_split_bias(m, o.bias.is_some())?;
        for (row0, chunk) in &m.chunks {
            let epi_offset = o.col0 + row0;
            if let Some(xq) = self.quantised(chunk.format, (x, norm), m.k)? {
                let epi = gemv_dot::DotEpilogue {
                    bias: o.bias,
                    accumulate: o.accumulate,
                    out_offset: epi_offset,
                };
                let d = gemv_dot::gemv_dot(self.k, chunk, xq, out, epi)?;
                self.push_dot(d);
                continue;
            }
            self.list.push(match self.how {
                Lowering::Decode { .. } => gemv::gemv(
                    self.k,
                    chunk,
                    x,
                    out,
                    gemv::GemvEpilogue {
                        bias: o.bias,
                        accumulate: o.accumulate,
                        out_offset: epi_offset,
                        norm,
                    },
                )?,
                Lowering::Prefill { rows } => {
                    if norm.is_some() {
                        return Err(Error::Unsupported("a GEMM with a norm prologue".into()));
                    }
                    let epi = gemm::GemmEpilogue {
                        bias: o.bias,
                        accumulate: o.accumulate,
                        out_offset: epi_offset,
                        out_stride: o.stride,
                    };
                    if gemm::f16_rows_enabled()
                        && gemm::reads_half(self.k, chunk.format, o.bias.is_some())?
                    {
                        let xh = self.halved(x, rows * m.k)?;
                        let d = gemm::gemm_half(self.k, chunk, (x, xh), out, rows, epi)?;
                        self.list.push(d);
                        if let Some(of) = self.xh_of.as_mut() {
                            of.2 = self.list.len();
                        }
                        continue;
                    }
                    gemm::gemm(self.k, chunk, x, out, rows, epi)?
                }
            });
        }
        Ok(())
    }

    /// Decode with the QKV fusion: q, k and v in one GEMV where [`qkv_fusable`]. Returns
    /// whether it did.
    fn fused_qkv(&mut self, l: &LayerWeights, x: NormedInput) -> Result<bool> {
        let Lowering::Decode { fusion, .. } = self.how else {
            return Ok(false);
        };
        let Some(w) = qkv_fusable(self.k, l).filter(|_| fusion.qkv) else {
            return Ok(false);
        };
        let bias = match (&l.bq, &l.bk, &l.bv) {
            (Some(q), Some(kb), Some(v)) => Some([q, kb, v]),
            _ => None,
        };
        let a = self.act;
        if gemv_dot::qkv_dot_supported(self.k, w[0], w[1], w[2]) {
            if let Some(xq) = self.quantised(w[0].format, x, w[0].k)? {
                let d = gemv_dot::gemv_dot_qkv(self.k, w, xq, bias, [&a.q, &a.k, &a.v])?;
                self.push_dot(d);
                return Ok(true);
            }
        }
        let d = gemv::gemv_qkv(self.k, w, x.0, bias, [&a.q, &a.k, &a.v], x.1)?;
        self.list.push(d);
        Ok(true)
    }

    /// Decode with the SwiGLU fusion and the norm prologue: the FFN norm, gate, up and
    /// SwiGLU in one GEMV (unsplit gate and up). Returns whether it did.
    fn fused_ffn(&mut self, l: &LayerWeights) -> Result<bool> {
        let Lowering::Decode { fusion, .. } = self.how else {
            return Ok(false);
        };
        let single = l.w_gate.chunks.len() == 1 && l.w_up.chunks.len() == 1;
        if !(fusion.swiglu && fusion.norm_prologue && single) {
            return Ok(false);
        }
        let a = self.act;
        let (gate, up) = (&l.w_gate.chunks[0].1, &l.w_up.chunks[0].1);
        let x = (&a.h, Some((&l.ffn_norm, self.eps)));
        if let Some(xq) = self.quantised(gate.format, x, gate.k)? {
            let d = gemv_dot::gemv_dot_swiglu(self.k, gate, up, xq, &a.act)?;
            self.push_dot(d);
            return Ok(true);
        }
        self.list.push(gemv::gemv_swiglu_normed(
            self.k,
            &l.w_gate.chunks[0].1,
            &l.w_up.chunks[0].1,
            &a.h,
            (&l.ffn_norm, self.eps),
            &a.act,
        )?);
        Ok(true)
    }

    /// Decode with [`DecodeFusion::int_dot`] and a `format` that has an integer-dot GEMV:
    /// `act.xq` holding the quantised (normalised) row `x` of `k` elements, quantising it
    /// first unless it already does. None: the float GEMV runs.
    /// With [`DecodeFusion::dot_prologue`] the GEMV quantises the row itself instead
    /// ([`gemv_dot::DotInput::Row`]) where the row fits its workgroup memory.
    fn quantised<'x>(
        &mut self,
        format: crate::kernels::WeightFormat,
        (x, norm): NormedInput<'x>,
        k: usize,
    ) -> Result<Option<DotInput<'x>>>
    where
        'a: 'x,
    {
        let Lowering::Decode { fusion, .. } = self.how else {
            return Ok(None);
        };
        if !fusion.int_dot || !gemv_dot::dot_supported(format) {
            return Ok(None);
        }
        let caps = &self.k.gpu.caps;
        // The fused QKV GEMV with the norm binds one more buffer than the plain one.
        let bindings = caps.max_storage_buffers_per_shader_stage >= gemv::QKV_STORAGE_BINDINGS;
        if fusion.dot_prologue && bindings && gemv_dot::prologue_fits(caps, k).is_some() {
            return Ok(Some(DotInput::Row { x, norm }));
        }
        let key = (
            x as *const wgpu::Buffer,
            norm.map(|(w, _)| w as *const wgpu::Buffer),
        );
        let act: &'a Activations = self.act;
        let xq = &act.xq;
        if self.xq_of != Some((key.0, key.1, self.list.len())) {
            let d = gemv_dot::act_q8(self.k, x, k, xq, norm)?;
            self.list.push(d);
            self.xq_of = Some((key.0, key.1, self.list.len()));
        }
        Ok(Some(DotInput::Quantised(xq)))
    }

    /// `act.xh` holding the first `n` values of `x` in f16 for the cooperative-matrix GEMMs,
    /// converting them first unless it already does (q, k and v, or gate and up, read the
    /// same rows).
    fn halved(&mut self, x: &wgpu::Buffer, n: usize) -> Result<&'a wgpu::Buffer> {
        let act: &'a Activations = self.act;
        let key = (x as *const wgpu::Buffer, n);
        if self.xh_of != Some((key.0, key.1, self.list.len())) {
            self.list.push(gemm::input_f16(self.k, x, n, &act.xh)?);
            self.xh_of = Some((key.0, key.1, self.list.len()));
        }
        Ok(&act.xh)
    }

    /// Pushes an integer-dot GEMV, keeping `act.xq` valid for the next one.
    fn push_dot(&mut self, d: Dispatch) {
        self.list.push(d);
        if let Some(of) = self.xq_of.as_mut() {
            of.2 = self.list.len();
        }
    }

    /// Whether RoPE and the cache write run as one dispatch (where the head shape allows).
    fn fuse_rope_kv(&self) -> bool {
        match self.how {
            Lowering::Decode { fusion, .. } => fusion.rope_kv,
            Lowering::Prefill { .. } => true,
        }
    }

    /// Attention of the pass's rows over the layer's cache.
    fn attention(&mut self, io: &AttentionBuffers, shape: &AttentionShape) -> Result<()> {
        match self.how {
            Lowering::Decode { splits, fusion } => {
                let partials = (splits > 1).then_some(&self.act.partials);
                let lanes = fusion.lanes_attention
                    && attention::lanes_unfit(&self.k.gpu.caps, shape).is_none();
                let form = if lanes {
                    DecodeForm::Lanes
                } else {
                    DecodeForm::Tiled
                };
                let att = attention::attention_decode(self.k, io, shape, form, splits, partials)?;
                self.list.extend(att.dispatches.iter().cloned());
                self.attn.push(att);
            }
            Lowering::Prefill { rows } => {
                let d = attention::attention_prefill(self.k, io, shape, rows)?;
                self.list.push(d);
            }
        }
        Ok(())
    }
}

/// The q, k, v matrices of a layer when one fused GEMV can compute them: each in one
/// binding, biases all present or all absent, and a device the fused kernel supports.
fn qkv_fusable<'a>(k: &Kernels, l: &'a LayerWeights) -> Option<[&'a crate::kernels::GpuMatrix; 3]> {
    let one = |m: &'a SplitMatrix| (m.chunks.len() == 1).then(|| &m.chunks[0].1);
    let w = [one(&l.wq)?, one(&l.wk)?, one(&l.wv)?];
    let biases = [l.bq.is_some(), l.bk.is_some(), l.bv.is_some()];
    let consistent = biases.iter().all(|&b| b) || biases.iter().all(|&b| !b);
    (consistent && gemv::qkv_supported(&k.gpu.caps, w[0], w[1], w[2])).then_some(w)
}

/// Refuses a bias on a matrix split across bindings: the epilogue adds the whole bias vector
/// to each chunk's rows, misaligned on a split.
pub(crate) fn check_split_bias(m: &SplitMatrix, bias: bool) -> Result<()> {
    if bias && m.chunks.len() > 1 {
        return Err(Error::Unsupported(
            "bias on a matrix split across bindings".into(),
        ));
    }
    Ok(())
}

/// The q, k and v rows a layer's projections wrote, and the q/k norms' outputs (Qwen3).
pub(crate) struct QkvRows<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub qn: &'a wgpu::Buffer,
    pub kn: &'a wgpu::Buffer,
}

impl<'a> QkvRows<'a> {
    /// The q and k buffers attention reads: the normalised copies when the model has q/k
    /// norms.
    pub fn attended(&self, qk_norm: bool) -> (&'a wgpu::Buffer, &'a wgpu::Buffer) {
        if qk_norm {
            (self.qn, self.kn)
        } else {
            (self.q, self.k)
        }
    }
}

/// Where [`post_qkv`] writes and with what geometry.
pub(crate) struct PostQkvTarget<'a> {
    /// The layer's cache.
    pub cache: KvPair<'a>,
    /// The RoPE tables and the step uniform (positions).
    pub tables: RopeTables<'a>,
    pub heads: &'a AttentionShape,
    pub rope: &'a RopeShape,
}

/// Q/K normalisation (Qwen3), RoPE and the KV-cache write of `tokens` rows of `rows`: RoPE
/// and the cache write in one dispatch with `fuse` where the whole head rotates, else RoPE of
/// q, RoPE of k and the cache write. The forward pass and the batched decode step (on one
/// sequence's row) both lower a layer's post-projection work here.
pub(crate) fn post_qkv(
    k: &Kernels,
    cfg: &ModelConfig,
    l: &LayerWeights,
    rows: &QkvRows,
    at: PostQkvTarget,
    tokens: usize,
    fuse: bool,
) -> Result<Vec<Dispatch>> {
    let PostQkvTarget {
        cache,
        tables,
        heads,
        rope: rope_shape,
    } = at;
    let mut list = Vec::new();
    let (q, kk) = rows.attended(cfg.qk_norm);
    if cfg.qk_norm {
        let (qw, kw) = l
            .q_norm
            .as_ref()
            .zip(l.k_norm.as_ref())
            .ok_or_else(|| Error::Model("q/k norm weights missing".into()))?;
        let (eps, hd) = (cfg.rms_eps, cfg.head_dim);
        list.push(rmsnorm::rmsnorm(
            k,
            rows.q,
            (qw, eps),
            q,
            hd,
            tokens * cfg.n_heads,
        )?);
        list.push(rmsnorm::rmsnorm(
            k,
            rows.k,
            (kw, eps),
            kk,
            hd,
            tokens * cfg.n_kv_heads,
        )?);
    }
    let new = KvPair { k: kk, v: rows.v };
    if fuse && rope::rope_kv_supported(cfg.head_dim, cfg.rope_dim) {
        let io = rope::RopeKvBuffers { q, new, cache };
        list.push(rope::rope_kv(k, &io, tables, heads, rope_shape, tokens)?);
        return Ok(list);
    }
    list.push(rope::rope(k, q, cfg.n_heads, tables, rope_shape, tokens)?);
    list.push(rope::rope(
        k,
        kk,
        cfg.n_kv_heads,
        tables,
        rope_shape,
        tokens,
    )?);
    list.push(kv_cache::kv_write(
        k,
        new,
        cache,
        tables.step,
        &heads.cache(),
        tokens,
    )?);
    Ok(list)
}

impl Forward {
    pub fn new(
        k: &Kernels,
        cfg: &ModelConfig,
        w: &ModelWeights,
        kv: &KvCache,
        inv_freq: &wgpu::Buffer,
        fusion: DecodeFusion,
    ) -> Result<Forward> {
        let gpu = k.gpu.clone();
        super::plan::chunk_override()?;
        let chunks = prefill_chunks(&gpu.caps, cfg, kv.capacity);
        let c = *chunks.last().unwrap_or(&PREFILL_CHUNK);
        let f32b = |label: &str, n: usize| gpu.storage_buffer(label, (n * 4) as u64);
        let max_splits = attention::choose_splits(&gpu.caps, cfg.n_kv_heads, kv.capacity);
        // Split counts per cached length: the environment's keys per split, else the adapter
        // class's measured rule, else one split or the largest count.
        let rule = match attention::split_keys()? {
            Some(keys) => Some(SplitRule {
                keys,
                min_splits: 1,
            }),
            None => attention::default_split_rule(&gpu.caps, cfg.n_kv_heads, cfg.head_dim),
        };
        let act = Activations {
            partials: gpu.storage_buffer(
                "attention partials",
                attention::partials_bytes(cfg.n_heads, cfg.head_dim, max_splits),
            )?,
            h: f32b("h", c * cfg.hidden)?,
            h_last: f32b("h_last", cfg.hidden)?,
            normed: f32b("normed", c * cfg.hidden)?,
            q: f32b("q", c * cfg.q_dim())?,
            k: f32b("k", c * cfg.kv_dim())?,
            v: f32b("v", c * cfg.kv_dim())?,
            qn: f32b("q normed", if cfg.qk_norm { c * cfg.q_dim() } else { 1 })?,
            kn: f32b("k normed", if cfg.qk_norm { c * cfg.kv_dim() } else { 1 })?,
            attn: f32b("attn", c * cfg.q_dim())?,
            gu: f32b("gate_up", c * 2 * cfg.ffn)?,
            act: f32b("ffn_act", c * cfg.ffn)?,
            logits: f32b("logits", cfg.vocab)?,
            xh: gpu.storage_buffer("xh", super::plan::half_rows_bytes(&gpu.caps, cfg, c).max(4))?,
            xq: if fusion.int_dot {
                let k = cfg.hidden.max(cfg.ffn).max(cfg.q_dim());
                gpu.storage_buffer("xq", gemv_dot::act_q8_bytes(k.next_multiple_of(32)))?
            } else {
                gpu.storage_buffer("xq", 4)?
            },
        };
        let step = gpu.uniform("step", &StepParams::default())?;
        let ids = gpu.upload("prefill ids", &vec![0u32; c])?;
        let token = gpu.upload("token", &[0u32; 2])?;
        let history = gpu.storage_buffer("token history", kv.capacity.max(1) as u64 * 4)?;
        let sample_step = gpu.uniform("sample step", &SampleStep::default())?;
        let probs = gpu.storage_buffer("sample probs", sample::K_MAX as u64 * 8)?;
        let argmax_status = gpu.storage_buffer("argmax status", 4)?;
        let argmax = argmax::argmax_checked(k, &act.logits, cfg.vocab, &token, 0, &argmax_status)?;
        let mut fwd = Forward {
            gpu: gpu.clone(),
            cfg: cfg.clone(),
            chunks: chunks.clone(),
            round_up_chunks: matches!(
                gpu.caps.class,
                crate::gpu::AdapterClass::Nvidia | crate::gpu::AdapterClass::Amd
            ),
            step,
            ids,
            token,
            history,
            sample_step,
            probs,
            act,
            heads: AttentionShape {
                n_heads: cfg.n_heads,
                n_kv_heads: cfg.n_kv_heads,
                head_dim: cfg.head_dim,
                capacity: kv.capacity,
                scale: cfg.attn_scale(),
                kv_type: kv.kv_type,
            },
            rope: RopeShape {
                head_dim: cfg.head_dim,
                rot_dim: cfg.rope_dim,
                half_split: cfg.rope_style.half_split(),
            },
            decode: Vec::new(),
            split_rule: rule.unwrap_or(SplitRule {
                keys: attention::SPLIT_KEYS,
                min_splits: 1,
            }),
            decode_lm: Vec::new(),
            prefill: Vec::new(),
            prefill_lm: Vec::new(),
            argmax,
            _argmax_status: argmax_status,
            sampler: None,
            rows_head: None,
            _attn: Vec::new(),
        };
        let mut attn = Vec::new();
        let mut lower = |how| -> Result<Vec<Dispatch>> {
            let (list, a) = fwd.lower(k, w, kv, inv_freq, how)?;
            attn.extend(a);
            Ok(list)
        };
        // Without `short_attention` every step runs the largest split count; with a split rule
        // (WICK_ATTN_SPLIT_KEYS or the adapter class's) every power of two; else one split or
        // the largest.
        let counts = match (fusion.short_attention, rule) {
            (false, _) => vec![max_splits],
            (true, None) if max_splits > 1 => vec![1, max_splits],
            (true, None) => vec![1],
            (true, Some(_)) => attention::split_counts(max_splits),
        };
        let mut decode = Vec::with_capacity(counts.len());
        for splits in counts {
            decode.push((splits, lower(Lowering::Decode { fusion, splits })?));
        }
        let mut prefill = Vec::with_capacity(chunks.len());
        for &rows in &chunks {
            prefill.push((rows, lower(Lowering::Prefill { rows })?));
        }
        fwd.decode_lm = fwd.lm_head(k, w, &fwd.act.h, fusion)?;
        // The prompt's last row: float GEMV with the norm prologue, as prefill computes
        // every other row in float.
        let prefill_head = DecodeFusion {
            norm_prologue: true,
            ..DecodeFusion::NONE
        };
        fwd.prefill_lm = fwd.lm_head(k, w, &fwd.act.h_last, prefill_head)?;
        fwd.decode = decode;
        fwd.prefill = prefill;
        fwd._attn = attn;
        Ok(fwd)
    }

    /// Every layer's ops in order, written once: decode and prefill are this graph lowered
    /// two ways ([`Lowering`]).
    fn layers(
        &self,
        low: &mut Lower<'_>,
        w: &ModelWeights,
        kv: &KvCache,
        inv_freq: &wgpu::Buffer,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (a, k, rows) = (&self.act, low.k, low.how.rows());
        let (ids, n_ids) = match low.how {
            Lowering::Decode { .. } => (&self.token, 1),
            Lowering::Prefill { rows } => (&self.ids, rows),
        };
        for (row0, chunk) in &w.embed.chunks {
            let d = embedding::embedding(k, chunk, ids, &a.h, n_ids, 0, *row0)?;
            low.list.push(d);
        }
        let heads = &self.heads;
        for (i, l) in w.layers.iter().enumerate() {
            let cache = KvPair {
                k: &kv.k[i],
                v: &kv.v[i],
            };
            // Attention block: norm, q/k/v projections, q/k norm, RoPE and the cache write,
            // attention, o projection into the residual.
            let x = low.norm(&l.attn_norm, cfg.hidden)?;
            if !low.fused_qkv(l, x)? {
                low.matmul(&l.wq, x, &a.q, MatmulOut::biased(l.bq.as_ref()))?;
                low.matmul(&l.wk, x, &a.k, MatmulOut::biased(l.bk.as_ref()))?;
                low.matmul(&l.wv, x, &a.v, MatmulOut::biased(l.bv.as_ref()))?;
            }
            self.post_qkv(low, l, cache, inv_freq)?;
            let io = AttentionBuffers {
                q: self.qk().0,
                cache,
                step: &self.step,
                out: &a.attn,
            };
            low.attention(&io, heads)?;
            low.matmul(&l.wo, (&a.attn, None), &a.h, MatmulOut::residual())?;
            // FFN block: norm, gate and up projections into one [gate | up] row, SwiGLU, down
            // projection into the residual.
            if !low.fused_ffn(l)? {
                let x = low.norm(&l.ffn_norm, cfg.hidden)?;
                let ffn = cfg.ffn;
                low.matmul(&l.w_gate, x, &a.gu, MatmulOut::columns(0, 2 * ffn))?;
                low.matmul(&l.w_up, x, &a.gu, MatmulOut::columns(ffn, 2 * ffn))?;
                low.list.push(swiglu::swiglu(k, &a.gu, &a.act, rows, ffn)?);
            }
            low.matmul(&l.w_down, (&a.act, None), &a.h, MatmulOut::residual())?;
        }
        Ok(())
    }

    /// The dispatches of the layer graph lowered as `how`, and the decode attentions built.
    fn lower(
        &self,
        k: &Kernels,
        w: &ModelWeights,
        kv: &KvCache,
        inv_freq: &wgpu::Buffer,
        how: Lowering,
    ) -> Result<(Vec<Dispatch>, Vec<attention::DecodeAttention>)> {
        let mut low = Lower {
            k,
            act: &self.act,
            eps: self.cfg.rms_eps,
            how,
            list: Vec::new(),
            attn: Vec::new(),
            xq_of: None,
            xh_of: None,
        };
        self.layers(&mut low, w, kv, inv_freq)?;
        Ok((low.list, low.attn))
    }

    /// The q and k buffers attention reads: normalised copies when the model has q/k norms.
    fn qk(&self) -> (&wgpu::Buffer, &wgpu::Buffer) {
        self.qkv_rows().attended(self.cfg.qk_norm)
    }

    fn qkv_rows(&self) -> QkvRows<'_> {
        let a = &self.act;
        QkvRows {
            q: &a.q,
            k: &a.k,
            v: &a.v,
            qn: &a.qn,
            kn: &a.kn,
        }
    }

    /// Q/K normalisation, RoPE and the KV-cache write for the pass's rows ([`post_qkv`]).
    fn post_qkv(
        &self,
        low: &mut Lower<'_>,
        l: &LayerWeights,
        cache: KvPair,
        inv_freq: &wgpu::Buffer,
    ) -> Result<()> {
        let at = PostQkvTarget {
            cache,
            tables: RopeTables {
                step: &self.step,
                inv_freq,
            },
            heads: &self.heads,
            rope: &self.rope,
        };
        let rows = self.qkv_rows();
        let list = post_qkv(
            low.k,
            &self.cfg,
            l,
            &rows,
            at,
            low.how.rows(),
            low.fuse_rope_kv(),
        )?;
        low.list.extend(list);
        Ok(())
    }

    /// Final norm and LM head over the hidden row 0 of `h`, into the logits; the norm
    /// inside the GEMV (`fusion.norm_prologue`; with `fusion.int_dot` inside the activation
    /// quantisation) or as its own dispatch.
    fn lm_head(
        &self,
        k: &Kernels,
        w: &ModelWeights,
        h: &wgpu::Buffer,
        fusion: DecodeFusion,
    ) -> Result<Vec<Dispatch>> {
        let cfg = &self.cfg;
        let norm_prologue = fusion.norm_prologue;
        // A decode pass with only the fusions the head uses.
        let fusion = DecodeFusion {
            norm_prologue,
            int_dot: fusion.int_dot,
            dot_prologue: fusion.dot_prologue,
            ..DecodeFusion::NONE
        };
        let mut low = Lower {
            k,
            act: &self.act,
            eps: cfg.rms_eps,
            how: Lowering::Decode { fusion, splits: 1 },
            list: Vec::new(),
            attn: Vec::new(),
            xq_of: None,
            xh_of: None,
        };
        let x = if norm_prologue {
            (h, Some((&w.output_norm, cfg.rms_eps)))
        } else {
            let normed = &self.act.normed;
            let d = rmsnorm::rmsnorm(k, h, (&w.output_norm, cfg.rms_eps), normed, cfg.hidden, 1)?;
            low.list.push(d);
            (normed, None)
        };
        low.matmul(w.lm_head(), x, &self.act.logits, MatmulOut::default())?;
        Ok(low.list)
    }

    /// The LM head over every row of a small prefill chunk ([`RowsHead`]), built (and its
    /// `chunk x vocab` logits buffer reserved) on first use.
    pub fn rows_head(&mut self, k: &Kernels, w: &ModelWeights) -> Result<&RowsHead> {
        if self.rows_head.is_none() {
            let (rows, vocab) = (self.chunks[0], self.cfg.vocab);
            let bytes = (rows * vocab * 4) as u64;
            if !self.gpu.fits_binding(bytes) {
                return Err(Error::Unsupported(format!(
                    "logits of {rows} positions need {bytes} bytes, more than the device's {}-byte binding limit",
                    self.gpu.caps.max_storage_buffer_binding_size
                )));
            }
            let reservation = self.gpu.reserve(
                crate::gpu::MemoryKind::Session,
                &format!("the logits of {rows} positions ({bytes} bytes)"),
                bytes,
            )?;
            let logits = self
                .gpu
                .storage_buffer("logits of every chunk row", bytes)?;
            let mut low = Lower {
                k,
                act: &self.act,
                eps: self.cfg.rms_eps,
                how: Lowering::Prefill { rows },
                list: Vec::new(),
                attn: Vec::new(),
                xq_of: None,
                xh_of: None,
            };
            let x = low.norm(&w.output_norm, self.cfg.hidden)?;
            low.matmul(w.lm_head(), x, &logits, MatmulOut::default())?;
            let dispatches = low.list;
            self.rows_head = Some(RowsHead {
                rows,
                logits,
                dispatches,
                _reservation: reservation,
            });
        }
        Ok(self.rows_head.as_ref().expect("built above"))
    }

    /// Records the [`RowsHead`] over the rows of the prefill chunk just recorded (built
    /// with [`Self::rows_head`] first; a no-op otherwise).
    pub fn record_rows_head(&self, enc: &mut wgpu::CommandEncoder) {
        let Some(head) = &self.rows_head else {
            return;
        };
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("prefill head, every row"),
            timestamp_writes: None,
        });
        for d in &head.dispatches {
            d.record(&mut pass);
        }
    }

    /// Chooses how the token after each step is picked: `None` argmax (greedy), `Some(k)`
    /// the GPU sampling chain keeping `k` candidates (built on first use of that `k`). The
    /// chain reads its settings from [`Self::write_sample_step`].
    pub fn set_sampler(&mut self, k: &Kernels, candidates: Option<usize>) -> Result<()> {
        let Some(n) = candidates else {
            self.sampler = None;
            return Ok(());
        };
        if self.sampler.as_ref().is_some_and(|c| c.k == n) {
            return Ok(());
        }
        self.sampler = Some(sample::sample_chain(
            k,
            &SampleBuffers {
                logits: &self.act.logits,
                step: &self.sample_step,
                history: &self.history,
                token: &self.token,
                probs: &self.probs,
            },
            self.cfg.vocab,
            n,
        )?);
        Ok(())
    }

    pub fn write_sample_step(&self, s: &SampleStep) {
        self.gpu
            .write(&self.sample_step, 0, std::slice::from_ref(s));
    }

    /// The dispatches that pick the token from the logits.
    fn picker(&self) -> &[Dispatch] {
        match &self.sampler {
            Some(c) => &c.dispatches,
            None => &self.argmax.dispatches,
        }
    }

    /// Every dispatch of a decode step that leaves `kv_len` positions, with or without the
    /// LM head and token choice, in recording order.
    pub fn decode_step(&self, kv_len: usize, head: bool) -> impl Iterator<Item = &Dispatch> {
        let head: &[Dispatch] = if head { &self.decode_lm } else { &[] };
        let pick: &[Dispatch] = if head.is_empty() { &[] } else { self.picker() };
        self.decode_for(kv_len).iter().chain(head).chain(pick)
    }

    /// The decode list for a step that leaves `kv_len` positions in the cache.
    fn decode_for(&self, kv_len: usize) -> &[Dispatch] {
        let counts = self.decode.iter().map(|(s, _)| *s);
        let want = attention::decode_splits(counts, kv_len, self.split_rule);
        self.decode
            .iter()
            .find(|(s, _)| *s == want)
            .map_or(&[][..], |(_, list)| list)
    }

    /// Dispatches of the decode step that leaves `kv_len` positions in the cache (with the
    /// LM head and token choice).
    pub fn decode_dispatches(&self, kv_len: usize) -> usize {
        self.decode_step(kv_len, true).count()
    }

    /// Records one decode step (the token id is already in `self.token`; the step uniform
    /// says `kv_len`) into one pass. Without `head` only the cache is filled (prompt tokens
    /// whose logits nobody reads).
    pub fn record_decode(&self, enc: &mut wgpu::CommandEncoder, kv_len: usize, head: bool) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("decode"),
            timestamp_writes: None,
        });
        for d in self.decode_step(kv_len, head) {
            d.record(&mut pass);
        }
    }

    /// The dispatch list for a chunk of `n` tokens (the LM head excluded): the smallest chunk
    /// size that holds `n`.
    pub fn prefill_list(&self, n: usize) -> &[Dispatch] {
        let fit = self.prefill.iter().find(|(rows, _)| *rows >= n);
        fit.or(self.prefill.last()).map_or(&[], |(_, l)| &l[..])
    }

    /// Records one prefill chunk of `n` tokens whose ids are already in `self.ids`. With
    /// `head` (the prompt's last chunk) the last token's logits land in `logits()` and the
    /// chosen next token in `self.token`.
    pub fn record_prefill(&self, enc: &mut wgpu::CommandEncoder, n: usize, head: bool) {
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("prefill"),
                timestamp_writes: None,
            });
            for d in self.prefill_list(n) {
                d.record(&mut pass);
            }
        }
        if !head {
            return;
        }
        let row = (self.cfg.hidden * 4) as u64;
        enc.copy_buffer_to_buffer(&self.act.h, (n as u64 - 1) * row, &self.act.h_last, 0, row);
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("prefill head"),
            timestamp_writes: None,
        });
        for d in self.prefill_lm.iter().chain(self.picker()) {
            d.record(&mut pass);
        }
    }

    pub fn logits(&self) -> &wgpu::Buffer {
        &self.act.logits
    }

    /// Every layer's attention geometry (batched decode builds its attention on it).
    pub(crate) fn attention_shape(&self) -> &AttentionShape {
        &self.heads
    }

    pub(crate) fn rope_shape(&self) -> &RopeShape {
        &self.rope
    }

    /// The sampling chain's per-token settings uniform.
    pub(crate) fn sample_step_buffer(&self) -> &wgpu::Buffer {
        &self.sample_step
    }

    /// The attention split counts the decode step is built for (ascending).
    pub(crate) fn split_counts(&self) -> Vec<usize> {
        self.decode.iter().map(|(s, _)| *s).collect()
    }

    /// The split count of the step that leaves `kv_len` positions in the cache.
    pub(crate) fn splits_for(&self, kv_len: usize) -> usize {
        let counts = self.decode.iter().map(|(s, _)| *s);
        attention::decode_splits(counts, kv_len, self.split_rule)
    }

    /// Hidden state rows of the last recorded step (tests of intermediate values).
    pub fn hidden(&self) -> &wgpu::Buffer {
        &self.act.h
    }

    pub fn write_step(&self, s: &StepParams) {
        self.gpu.write(&self.step, 0, std::slice::from_ref(s));
    }

    /// The step uniform of one decoded token at `pos`.
    pub fn write_decode_step(&self, pos: usize) {
        self.write_step(&StepParams {
            pos: pos as u32,
            n_tokens: 1,
            kv_len: (pos + 1) as u32,
            ..Default::default()
        });
    }
}
