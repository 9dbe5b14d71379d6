//! The forward pass, recorded for the least CPU work per token: every pipeline and bind group is
//! built once per session; per-token values live in one uniform ([`StepParams`]) written with
//! `queue.write_buffer`; a decode step is ONE compute pass and ONE submit; the next token's
//! id never leaves the GPU (argmax writes it where the next step's embedding gather reads it).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::sample::{SampleBuffers, SampleChain, SampleStep};
use crate::kernels::{
    argmax, attention, embedding, gemm, gemv, kv_cache, rmsnorm, rope, sample, swiglu, Dispatch,
    Kernels, StepParams,
};
use crate::model::weights::{LayerWeights, ModelWeights, SplitMatrix};
use crate::model::ModelConfig;
use crate::runtime::kv_cache::KvCache;

/// Tokens per prefill chunk for short prompts and prompt tails: every chunk's GEMMs compute
/// all of its rows, so a small chunk wastes little on a short prompt.
pub const PREFILL_CHUNK: usize = 64;

/// Tokens per chunk while at least this many prompt tokens remain: one pass over the weights
/// per 512 tokens instead of 8, and GEMM grids wide enough to fill a large GPU (H100, 8B
/// Q4_0 pp512: 536 -> 1142 tok/s with the WGSL GEMM, 857 -> 3719 with the cooperative-matrix
/// one, measured 2026-11-22).
pub const PREFILL_CHUNK_LARGE: usize = 512;

/// The prefill chunk sizes a session of `ctx` positions uses: (small, large), large 0 when
/// the context cannot hold a large chunk. Activations are sized for the larger.
pub fn prefill_chunks(ctx: usize) -> (usize, usize) {
    let large = if ctx >= PREFILL_CHUNK_LARGE {
        PREFILL_CHUNK_LARGE
    } else {
        0
    };
    (PREFILL_CHUNK, large)
}

/// Cached positions up to which decode attention runs as one split per KV head, without the
/// merge pass: one dispatch fewer per layer, and a single workgroup per head still covers
/// this many positions quickly.
pub const SHORT_ATTENTION: usize = 256;

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
    /// Single-split attention without the merge pass while the cache is short.
    pub short_attention: bool,
}

impl DecodeFusion {
    pub const ALL: DecodeFusion = DecodeFusion {
        qkv: true,
        norm_prologue: true,
        rope_kv: true,
        swiglu: true,
        short_attention: true,
    };
    pub const NONE: DecodeFusion = DecodeFusion {
        qkv: false,
        norm_prologue: false,
        rope_kv: false,
        swiglu: false,
        short_attention: false,
    };
}

impl Default for DecodeFusion {
    fn default() -> Self {
        DecodeFusion::ALL
    }
}

/// The row a GEMV reads and the RMSNorm it applies on load, if any.
type NormedInput<'a> = (&'a wgpu::Buffer, Option<(&'a wgpu::Buffer, f32)>);

/// Recorded work of one session: decode step, prefill chunk and the LM head, all prebuilt.
pub struct Forward {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    /// Prefill chunk sizes ([`prefill_chunks`]); `chunk_large` is 0 without a large list.
    pub chunk: usize,
    pub chunk_large: usize,
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
    decode: Vec<Dispatch>,
    /// The decode step with single-split attention (no merge pass), used while the cache
    /// holds at most [`SHORT_ATTENTION`] positions.
    decode_short: Vec<Dispatch>,
    /// Final norm + LM head over the decoded row (`h`) and over the prefill's last row.
    decode_lm: Vec<Dispatch>,
    prefill: Vec<Dispatch>,
    /// The prefill chunk of `chunk_large` tokens (empty when `chunk_large` is 0).
    prefill_large: Vec<Dispatch>,
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

/// The row chunks of `m`, refusing a bias on a split matrix (the epilogue adds the whole
/// bias vector to each chunk's rows, so it would be misaligned).
fn chunks_for<'a>(
    m: &'a SplitMatrix,
    bias: Option<&wgpu::Buffer>,
) -> Result<&'a [(usize, crate::kernels::GpuMatrix)]> {
    if bias.is_some() && m.chunks.len() > 1 {
        return Err(Error::Unsupported(
            "bias on a matrix split across bindings".into(),
        ));
    }
    Ok(&m.chunks)
}

/// GEMVs of every row chunk of `m`; with `norm`, x is RMS-normalised on load.
#[allow(clippy::too_many_arguments)]
fn gemv_all(
    k: &Kernels,
    m: &SplitMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    accumulate: bool,
    norm: Option<(&wgpu::Buffer, f32)>,
    list: &mut Vec<Dispatch>,
) -> Result<()> {
    for (row0, chunk) in chunks_for(m, bias)? {
        list.push(gemv::gemv(
            k,
            chunk,
            x,
            out,
            gemv::GemvEpilogue {
                bias,
                accumulate,
                out_offset: *row0,
                norm,
            },
        )?);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn gemm_all(
    k: &Kernels,
    m: &SplitMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    bias: Option<&wgpu::Buffer>,
    accumulate: bool,
    col0: usize,
    stride: usize,
    list: &mut Vec<Dispatch>,
) -> Result<()> {
    for (row0, chunk) in chunks_for(m, bias)? {
        list.push(gemm::gemm(
            k,
            chunk,
            x,
            out,
            rows,
            gemm::GemmEpilogue {
                bias,
                accumulate,
                out_offset: col0 + row0,
                out_stride: stride,
            },
        )?);
    }
    Ok(())
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
        let (small, large) = prefill_chunks(kv.capacity);
        let c = small.max(large);
        let f32b = |label: &str, n: usize| gpu.storage_buffer(label, (n * 4) as u64);
        let act = Activations {
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
            chunk: small,
            chunk_large: large,
            step,
            ids,
            token,
            history,
            sample_step,
            probs,
            act,
            decode: Vec::new(),
            decode_short: Vec::new(),
            decode_lm: Vec::new(),
            prefill: Vec::new(),
            prefill_large: Vec::new(),
            prefill_lm: Vec::new(),
            argmax,
            _argmax_status: argmax_status,
            sampler: None,
            rows_head: None,
            _attn: Vec::new(),
        };
        fwd.build_decode(k, w, kv, inv_freq, fusion)?;
        fwd.prefill = fwd.build_prefill(k, w, kv, inv_freq, small)?;
        if large > 0 {
            fwd.prefill_large = fwd.build_prefill(k, w, kv, inv_freq, large)?;
        }
        fwd.prefill_lm = fwd.lm_head(k, w, &fwd.act.h_last, true)?;
        Ok(fwd)
    }

    fn embed(
        &self,
        k: &Kernels,
        w: &ModelWeights,
        ids: &wgpu::Buffer,
        n_tokens: usize,
        list: &mut Vec<Dispatch>,
    ) -> Result<()> {
        for (row0, chunk) in &w.embed.chunks {
            list.push(embedding::embedding(
                k,
                chunk,
                ids,
                &self.act.h,
                n_tokens,
                0,
                *row0,
            )?);
        }
        Ok(())
    }

    /// The q and k buffers attention reads: normalised copies when the model has q/k norms.
    fn qk(&self) -> (&wgpu::Buffer, &wgpu::Buffer) {
        if self.cfg.qk_norm {
            (&self.act.qn, &self.act.kn)
        } else {
            (&self.act.q, &self.act.k)
        }
    }

    /// Q/K normalisation (Qwen3), RoPE and the KV-cache write for `tokens` rows (RoPE and
    /// the cache write fused into one dispatch when the whole head rotates).
    #[allow(clippy::too_many_arguments)]
    fn post_qkv(
        &self,
        k: &Kernels,
        l: &LayerWeights,
        kv: &KvCache,
        layer: usize,
        inv_freq: &wgpu::Buffer,
        tokens: usize,
        fuse_rope_kv: bool,
        list: &mut Vec<Dispatch>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let a = &self.act;
        let (q, kk) = self.qk();
        if cfg.qk_norm {
            let (qw, kw) = l
                .q_norm
                .as_ref()
                .zip(l.k_norm.as_ref())
                .ok_or_else(|| Error::Model("q/k norm weights missing".into()))?;
            list.push(rmsnorm::rmsnorm(
                k,
                &a.q,
                qw,
                q,
                cfg.head_dim,
                tokens * cfg.n_heads,
                cfg.rms_eps,
            )?);
            list.push(rmsnorm::rmsnorm(
                k,
                &a.k,
                kw,
                kk,
                cfg.head_dim,
                tokens * cfg.n_kv_heads,
                cfg.rms_eps,
            )?);
        }
        if fuse_rope_kv && rope::rope_kv_supported(cfg.head_dim, cfg.rope_dim) {
            list.push(rope::rope_kv(
                k,
                q,
                kk,
                &a.v,
                &kv.k[layer],
                &kv.v[layer],
                &self.step,
                inv_freq,
                tokens,
                cfg.n_heads,
                cfg.n_kv_heads,
                cfg.head_dim,
                kv.capacity,
                cfg.rope_style,
            )?);
            return Ok(());
        }
        list.push(rope::rope(
            k,
            q,
            &self.step,
            inv_freq,
            tokens,
            cfg.n_heads,
            cfg.head_dim,
            cfg.rope_dim,
            cfg.rope_style,
        )?);
        list.push(rope::rope(
            k,
            kk,
            &self.step,
            inv_freq,
            tokens,
            cfg.n_kv_heads,
            cfg.head_dim,
            cfg.rope_dim,
            cfg.rope_style,
        )?);
        list.push(kv_cache::kv_write(
            k,
            kk,
            &a.v,
            &kv.k[layer],
            &kv.v[layer],
            &self.step,
            tokens,
            cfg.n_kv_heads,
            cfg.head_dim,
            kv.capacity,
        )?);
        Ok(())
    }

    fn build_decode(
        &mut self,
        k: &Kernels,
        w: &ModelWeights,
        kv: &KvCache,
        inv_freq: &wgpu::Buffer,
        fusion: DecodeFusion,
    ) -> Result<()> {
        let splits = attention::choose_splits(&self.gpu.caps, self.cfg.n_kv_heads, kv.capacity);
        self.decode = self.decode_list(k, w, kv, inv_freq, splits, fusion)?;
        self.decode_short = if splits > 1 && fusion.short_attention {
            self.decode_list(k, w, kv, inv_freq, 1, fusion)?
        } else {
            self.decode.clone()
        };
        self.decode_lm = self.lm_head(k, w, &self.act.h, fusion.norm_prologue)?;
        Ok(())
    }

    /// One decode step's dispatches with `splits`-way split attention.
    fn decode_list(
        &mut self,
        k: &Kernels,
        w: &ModelWeights,
        kv: &KvCache,
        inv_freq: &wgpu::Buffer,
        splits: usize,
        fusion: DecodeFusion,
    ) -> Result<Vec<Dispatch>> {
        let cfg = self.cfg.clone();
        let mut list = Vec::new();
        self.embed(k, w, &self.token, 1, &mut list)?;
        let a = &self.act;
        let eps = cfg.rms_eps;
        // The row a norm-consuming GEMV reads, and its norm prologue: `h` normalised on
        // load, or a separate RMSNorm into `normed` first.
        fn normed<'a>(
            k: &Kernels,
            a: &'a Activations,
            norm: &'a wgpu::Buffer,
            hidden: usize,
            eps: f32,
            prologue: bool,
            list: &mut Vec<Dispatch>,
        ) -> Result<NormedInput<'a>> {
            if prologue {
                return Ok((&a.h, Some((norm, eps))));
            }
            list.push(rmsnorm::rmsnorm(k, &a.h, norm, &a.normed, hidden, 1, eps)?);
            Ok((&a.normed, None))
        }
        let np = fusion.norm_prologue;
        for (i, l) in w.layers.iter().enumerate() {
            let (x, an) = normed(k, a, &l.attn_norm, cfg.hidden, eps, np, &mut list)?;
            match qkv_fusable(k, l).filter(|_| fusion.qkv) {
                // q, k and v projections in one dispatch.
                Some(w) => {
                    let bias = match (&l.bq, &l.bk, &l.bv) {
                        (Some(q), Some(kb), Some(v)) => Some([q, kb, v]),
                        _ => None,
                    };
                    list.push(gemv::gemv_qkv(k, w, x, bias, [&a.q, &a.k, &a.v], an)?);
                }
                None => {
                    gemv_all(k, &l.wq, x, &a.q, l.bq.as_ref(), false, an, &mut list)?;
                    gemv_all(k, &l.wk, x, &a.k, l.bk.as_ref(), false, an, &mut list)?;
                    gemv_all(k, &l.wv, x, &a.v, l.bv.as_ref(), false, an, &mut list)?;
                }
            }
            self.post_qkv(k, l, kv, i, inv_freq, 1, fusion.rope_kv, &mut list)?;
            let att = attention::attention_decode(
                k,
                self.qk().0,
                &kv.k[i],
                &kv.v[i],
                &self.step,
                &a.attn,
                cfg.n_heads,
                cfg.n_kv_heads,
                cfg.head_dim,
                kv.capacity,
                cfg.attn_scale(),
                splits,
            )?;
            list.extend(att.dispatches.iter().cloned());
            self._attn.push(att);
            gemv_all(k, &l.wo, &a.attn, &a.h, None, true, None, &mut list)?;
            let single = l.w_gate.chunks.len() == 1 && l.w_up.chunks.len() == 1;
            if fusion.swiglu && fusion.norm_prologue && single {
                // FFN norm + gate + up + SwiGLU in one dispatch.
                list.push(gemv::gemv_swiglu_normed(
                    k,
                    &l.w_gate.chunks[0].1,
                    &l.w_up.chunks[0].1,
                    &a.h,
                    (&l.ffn_norm, eps),
                    &a.act,
                )?);
            } else {
                // Gate and up into one [gate | up] row, then SwiGLU.
                let (x, fnorm) = normed(k, a, &l.ffn_norm, cfg.hidden, eps, np, &mut list)?;
                for (m, base) in [(&l.w_gate, 0), (&l.w_up, cfg.ffn)] {
                    for (row0, chunk) in &m.chunks {
                        let epi = gemv::GemvEpilogue {
                            bias: None,
                            accumulate: false,
                            out_offset: base + row0,
                            norm: fnorm,
                        };
                        list.push(gemv::gemv(k, chunk, x, &a.gu, epi)?);
                    }
                }
                list.push(swiglu::swiglu(k, &a.gu, &a.act, 1, cfg.ffn)?);
            }
            gemv_all(k, &l.w_down, &a.act, &a.h, None, true, None, &mut list)?;
        }
        Ok(list)
    }

    /// The dispatches of one prefill chunk of up to `c` tokens (the GEMMs compute all `c`
    /// rows; attention and the KV write take the step's token count).
    fn build_prefill(
        &self,
        k: &Kernels,
        w: &ModelWeights,
        kv: &KvCache,
        inv_freq: &wgpu::Buffer,
        c: usize,
    ) -> Result<Vec<Dispatch>> {
        let cfg = self.cfg.clone();
        let mut list = Vec::new();
        self.embed(k, w, &self.ids, c, &mut list)?;
        let a = &self.act;
        for (i, l) in w.layers.iter().enumerate() {
            list.push(rmsnorm::rmsnorm(
                k,
                &a.h,
                &l.attn_norm,
                &a.normed,
                cfg.hidden,
                c,
                cfg.rms_eps,
            )?);
            gemm_all(
                k,
                &l.wq,
                &a.normed,
                &a.q,
                c,
                l.bq.as_ref(),
                false,
                0,
                0,
                &mut list,
            )?;
            gemm_all(
                k,
                &l.wk,
                &a.normed,
                &a.k,
                c,
                l.bk.as_ref(),
                false,
                0,
                0,
                &mut list,
            )?;
            gemm_all(
                k,
                &l.wv,
                &a.normed,
                &a.v,
                c,
                l.bv.as_ref(),
                false,
                0,
                0,
                &mut list,
            )?;
            self.post_qkv(k, l, kv, i, inv_freq, c, true, &mut list)?;
            list.push(attention::attention_prefill(
                k,
                self.qk().0,
                &kv.k[i],
                &kv.v[i],
                &self.step,
                &a.attn,
                c,
                cfg.n_heads,
                cfg.n_kv_heads,
                cfg.head_dim,
                kv.capacity,
                cfg.attn_scale(),
            )?);
            gemm_all(k, &l.wo, &a.attn, &a.h, c, None, true, 0, 0, &mut list)?;
            list.push(rmsnorm::rmsnorm(
                k,
                &a.h,
                &l.ffn_norm,
                &a.normed,
                cfg.hidden,
                c,
                cfg.rms_eps,
            )?);
            gemm_all(
                k,
                &l.w_gate,
                &a.normed,
                &a.gu,
                c,
                None,
                false,
                0,
                2 * cfg.ffn,
                &mut list,
            )?;
            gemm_all(
                k,
                &l.w_up,
                &a.normed,
                &a.gu,
                c,
                None,
                false,
                cfg.ffn,
                2 * cfg.ffn,
                &mut list,
            )?;
            list.push(swiglu::swiglu(k, &a.gu, &a.act, c, cfg.ffn)?);
            gemm_all(k, &l.w_down, &a.act, &a.h, c, None, true, 0, 0, &mut list)?;
        }
        Ok(list)
    }

    /// Final norm and LM head over the hidden row 0 of `h`, into the logits; the norm
    /// inside the GEMV (`norm_prologue`) or as its own dispatch.
    fn lm_head(
        &self,
        k: &Kernels,
        w: &ModelWeights,
        h: &wgpu::Buffer,
        norm_prologue: bool,
    ) -> Result<Vec<Dispatch>> {
        let cfg = &self.cfg;
        let mut list = Vec::new();
        let logits = &self.act.logits;
        if norm_prologue {
            let norm = Some((&w.output_norm, cfg.rms_eps));
            gemv_all(k, w.lm_head(), h, logits, None, false, norm, &mut list)?;
        } else {
            let normed = &self.act.normed;
            let eps = cfg.rms_eps;
            list.push(rmsnorm::rmsnorm(
                k,
                h,
                &w.output_norm,
                normed,
                cfg.hidden,
                1,
                eps,
            )?);
            gemv_all(k, w.lm_head(), normed, logits, None, false, None, &mut list)?;
        }
        Ok(list)
    }

    /// The LM head over every row of a small prefill chunk ([`RowsHead`]), built (and its
    /// `chunk x vocab` logits buffer reserved) on first use.
    pub fn rows_head(&mut self, k: &Kernels, w: &ModelWeights) -> Result<&RowsHead> {
        if self.rows_head.is_none() {
            let (rows, vocab) = (self.chunk, self.cfg.vocab);
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
            let a = &self.act;
            let mut dispatches = vec![rmsnorm::rmsnorm(
                k,
                &a.h,
                &w.output_norm,
                &a.normed,
                self.cfg.hidden,
                rows,
                self.cfg.rms_eps,
            )?];
            gemm_all(
                k,
                w.lm_head(),
                &a.normed,
                &logits,
                rows,
                None,
                false,
                0,
                vocab,
                &mut dispatches,
            )?;
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
    /// LM head and token choice.
    fn decode_step(&self, kv_len: usize, head: bool) -> impl Iterator<Item = &Dispatch> {
        let head: &[Dispatch] = if head { &self.decode_lm } else { &[] };
        let pick: &[Dispatch] = if head.is_empty() { &[] } else { self.picker() };
        self.decode_for(kv_len).iter().chain(head).chain(pick)
    }

    /// The decode list for a step that leaves `kv_len` positions in the cache.
    fn decode_for(&self, kv_len: usize) -> &[Dispatch] {
        if kv_len <= SHORT_ATTENTION {
            &self.decode_short
        } else {
            &self.decode
        }
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

    /// The dispatches of one decode step with its head, into an open pass.
    pub fn record_decode_into(&self, pass: &mut wgpu::ComputePass<'_>, kv_len: usize) {
        for d in self.decode_step(kv_len, true) {
            d.record(pass);
        }
    }

    /// [`Self::record_decode`] with a timestamp pair around every dispatch, labelled with its
    /// op (needs TIMESTAMP_QUERY_INSIDE_PASSES; for `wick bench`'s per-kernel profile only:
    /// the timestamps themselves add a little time per dispatch).
    pub fn record_decode_profiled(
        &self,
        enc: &mut wgpu::CommandEncoder,
        prof: &mut crate::gpu::GpuProfiler,
        kv_len: usize,
    ) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("decode (profiled)"),
            timestamp_writes: None,
        });
        for d in self.decode_step(kv_len, true) {
            let region = prof.begin(&mut pass, &d.pipeline.op);
            d.record(&mut pass);
            prof.end(&mut pass, region);
        }
    }

    /// The dispatch list for a chunk of `n` tokens: the large chunk's when `n` needs it.
    fn prefill_list(&self, n: usize) -> &[Dispatch] {
        if n > self.chunk && !self.prefill_large.is_empty() {
            &self.prefill_large
        } else {
            &self.prefill
        }
    }

    /// Records one prefill chunk of `n` tokens (without the LM head) with timestamps around
    /// each dispatch.
    pub fn record_prefill_profiled(
        &self,
        enc: &mut wgpu::CommandEncoder,
        prof: &mut crate::gpu::GpuProfiler,
        n: usize,
    ) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("prefill (profiled)"),
            timestamp_writes: None,
        });
        for d in self.prefill_list(n) {
            let region = prof.begin(&mut pass, &d.pipeline.op);
            d.record(&mut pass);
            prof.end(&mut pass, region);
        }
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

    pub fn prefill_dispatches(&self) -> usize {
        self.prefill.len().max(self.prefill_large.len())
            + self.prefill_lm.len()
            + self.picker().len()
    }

    pub fn logits(&self) -> &wgpu::Buffer {
        &self.act.logits
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
