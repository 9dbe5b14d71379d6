//! What a session of a given context plans before it allocates: its prefill chunk sizes and
//! the GPU memory of its KV cache and activations (the KV cache reserves it up front; the
//! forward pass allocates to the same plan).

use crate::gpu::{AdapterClass, Capabilities};
use crate::kernels::kv_cache::{cache_bytes, KvType};
use crate::model::ModelConfig;
use crate::{Error, Result};

/// Tokens per prefill chunk for short prompts and prompt tails: every chunk's GEMMs compute
/// all of its rows, so a small chunk wastes little on a short prompt.
pub const PREFILL_CHUNK: usize = 64;

/// Tokens per chunk while at least this many prompt tokens remain: one pass over the weights
/// per 512 tokens instead of 8, and GEMM grids wide enough to fill a large GPU (H100, 8B
/// Q4_0 pp512: 536 -> 1142 tok/s with the WGSL GEMM, 857 -> 3719 with the cooperative-matrix
/// one, measured 2026-11-22).
pub const PREFILL_CHUNK_LARGE: usize = 512;

/// The largest chunk on discrete NVIDIA and AMD GPUs, for prompts of that length or more:
/// fewer passes over the weights, and grids of four times the workgroups for the narrow k/v
/// GEMMs. H200, cooperative-matrix kernels, pp4096 by largest chunk 512 / 1024 / 2048:
/// Llama-3-8B Q4_0 3655 / 3992 / 4070 tok/s, Llama-3.2-1B Q4_0 16415 / 21942 / 23488
/// (2026-12-07). Apple GPUs and the rest keep 512 (not measured there).
pub const PREFILL_CHUNK_XL: usize = 2048;

/// The prefill chunk sizes, ascending, of a session of `ctx` positions on a model of `cfg`:
/// [`PREFILL_CHUNK`], then [`PREFILL_CHUNK_LARGE`] and, on discrete NVIDIA and AMD GPUs,
/// [`PREFILL_CHUNK_XL`], each where the context holds it and its activation buffers fit the
/// device's binding limit. `WICK_PREFILL_CHUNK=N` (a multiple of 64) sets the largest instead,
/// for measurements. Activations are sized for the largest.
/// A malformed value is ignored here; [`chunk_override`], which sessions call first, refuses it.
pub fn prefill_chunks(caps: &Capabilities, cfg: &ModelConfig, ctx: usize) -> Vec<usize> {
    let discrete = matches!(caps.class, AdapterClass::Nvidia | AdapterClass::Amd);
    let top = chunk_override().ok().flatten().unwrap_or(if discrete {
        PREFILL_CHUNK_XL
    } else {
        PREFILL_CHUNK_LARGE
    });
    // The widest activation rows of a chunk: gate and up side by side, q, hidden.
    let widest = (2 * cfg.ffn).max(cfg.q_dim()).max(cfg.hidden) as u64;
    let fits = |c: usize| c <= ctx && c as u64 * widest * 4 <= caps.max_storage_buffer_binding_size;
    let mut v = vec![PREFILL_CHUNK];
    for c in [PREFILL_CHUNK_LARGE.min(top), top] {
        if c > v[v.len() - 1] && fits(c) {
            v.push(c);
        }
    }
    v
}

/// `WICK_PREFILL_CHUNK`: the largest prefill chunk, a positive multiple of [`PREFILL_CHUNK`];
/// unset or empty gives `None`, anything else an error naming the value.
pub fn chunk_override() -> Result<Option<usize>> {
    match std::env::var("WICK_PREFILL_CHUNK").as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok(v) => match v.parse::<usize>() {
            Ok(c) if c >= PREFILL_CHUNK && c % PREFILL_CHUNK == 0 => Ok(Some(c)),
            _ => Err(Error::InvalidArgument(format!(
                "WICK_PREFILL_CHUNK={v:?} (expected a positive multiple of {PREFILL_CHUNK})"
            ))),
        },
    }
}

/// Bytes of a chunk of `c` rows' GEMM inputs in f16 (the widest input row: hidden, q or ffn),
/// where the cooperative-matrix GEMM reads them (`gemm::f16_rows_enabled`); 0 elsewhere.
pub fn half_rows_bytes(caps: &Capabilities, cfg: &ModelConfig, c: usize) -> u64 {
    let usable = caps.backend == wgpu::Backend::Vulkan
        && crate::kernels::cooperative_matrix_usable(caps)
        && crate::kernels::gemm::f16_rows_enabled();
    if !usable {
        return 0;
    }
    let widest = cfg.hidden.max(cfg.q_dim()).max(cfg.ffn) as u64;
    crate::kernels::gemm::HalfRows::from_env().rows(c) as u64 * widest * 2
}

/// How prefill splits `n` fresh prompt tokens into chunks of the ascending `sizes`: the largest
/// size the rest of the prompt fills, then the smallest for the tail. With `round_up` (discrete
/// GPUs, where a small chunk's GEMMs leave most of the GPU idle) a rest of at least a quarter
/// of [`PREFILL_CHUNK_LARGE`] runs as one chunk of that size instead of several small ones
/// (H200, Llama-3-8B Q4_0: a 64-token chunk takes ~68 ms, a 512-token one ~121 ms).
pub fn chunk_lengths(sizes: &[usize], n: usize, round_up: bool) -> Vec<usize> {
    let small = sizes.first().copied().unwrap_or(PREFILL_CHUNK);
    let large = sizes.iter().copied().find(|&s| s == PREFILL_CHUNK_LARGE);
    let mut lengths = Vec::new();
    let mut rest = n;
    while rest > 0 {
        let fill = sizes.iter().rev().find(|&&s| s <= rest).copied();
        let c = match (fill, large) {
            (Some(f), Some(l)) if round_up && f < l && 4 * rest >= l => rest,
            (Some(f), _) => f,
            (None, Some(l)) if round_up && 4 * rest >= l => rest,
            (None, _) => small.min(rest),
        };
        lengths.push(c);
        rest -= c;
    }
    lengths
}

/// GPU memory of one session, by part (see [`session_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SessionMemory {
    /// Keys and values of every layer: 2 x layers x kv_heads x ctx x the bytes of a row of
    /// head_dim values (f16: 2 x head_dim; q8_0: head_dim codes + head_dim / 32 f32 scales).
    pub kv: u64,
    /// f32 activations of one prefill chunk, the logits, decode attention's split-KV
    /// partials, and the sampling buffers.
    pub activations: u64,
}

impl SessionMemory {
    pub fn total(&self) -> u64 {
        self.kv + self.activations
    }
}

/// What a session of `ctx` tokens with a `kv_type` cache on a model of `cfg` allocates on the
/// GPU (the buffers `Forward::new` and the KV cache create; uniforms and the 32-byte token ring
/// aside).
pub fn session_memory(
    caps: &Capabilities,
    cfg: &ModelConfig,
    ctx: usize,
    kv_type: KvType,
) -> SessionMemory {
    let c = *prefill_chunks(caps, cfg, ctx)
        .last()
        .unwrap_or(&PREFILL_CHUNK) as u64;
    let (h, qd, kvd, ffn, vocab) = (
        cfg.hidden as u64,
        cfg.q_dim() as u64,
        cfg.kv_dim() as u64,
        cfg.ffn as u64,
        cfg.vocab as u64,
    );
    let f32s = |n: u64| (n * 4).max(4);
    let qk_norm = |n: u64| if cfg.qk_norm { f32s(n) } else { 4 };
    // h, h_last, normed, q, k, v, q/k normed, attn, gate_up, ffn_act, logits; prefill ids.
    let mut act = f32s(c * h) + f32s(h) + f32s(c * h) + f32s(c * qd) + 2 * f32s(c * kvd);
    act += qk_norm(c * qd) + qk_norm(c * kvd) + f32s(c * qd) + f32s(c * 2 * ffn);
    act += f32s(c * ffn) + f32s(vocab) + c * 4;
    act += half_rows_bytes(caps, cfg, c as usize);
    // Token history (repetition penalty), sampled candidates, and the GPU sampling chain's
    // first-level partials (built with the session's first sampled generation).
    let k = crate::kernels::sample::K_MAX as u64;
    let groups = vocab.div_ceil(crate::kernels::sample::SORT as u64);
    act += (ctx as u64).max(1) * 4 + k * 8 + groups * 8 * (1 + k);
    // Split-KV decode attention: one partials buffer for every layer and split count.
    let attention = crate::kernels::attention::choose_splits(caps, cfg.n_kv_heads, ctx);
    act += crate::kernels::attention::partials_bytes(cfg.n_heads, cfg.head_dim, attention);
    SessionMemory {
        kv: 2 * cfg.n_layers as u64 * cache_bytes(kv_type, cfg.n_kv_heads, cfg.head_dim, ctx),
        activations: act,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_split_into_the_largest_chunks_then_the_small_one() {
        let sizes = [64, 512, 2048];
        assert_eq!(chunk_lengths(&sizes, 0, false), Vec::<usize>::new());
        assert_eq!(chunk_lengths(&sizes, 40, false), [40]);
        assert_eq!(chunk_lengths(&sizes, 4096, false), [2048, 2048]);
        assert_eq!(chunk_lengths(&sizes, 2700, false), [2048, 512, 64, 64, 12]);
        assert_eq!(chunk_lengths(&[64, 512], 1100, false), [512, 512, 64, 12]);
        assert_eq!(chunk_lengths(&[64], 150, false), [64, 64, 22]);
    }

    #[test]
    fn round_up_runs_a_mid_sized_rest_as_one_large_chunk() {
        let sizes = [64, 512, 2048];
        // 128 and more below 512: one chunk of the 512 list; less: small chunks.
        assert_eq!(chunk_lengths(&sizes, 300, true), [300]);
        assert_eq!(chunk_lengths(&sizes, 128, true), [128]);
        assert_eq!(chunk_lengths(&sizes, 127, true), [64, 63]);
        assert_eq!(chunk_lengths(&sizes, 40, true), [40]);
        // Never up to the largest size: 2700 = 2048 + 512 + a rest of 140 as one chunk.
        assert_eq!(chunk_lengths(&sizes, 2700, true), [2048, 512, 140]);
        assert_eq!(chunk_lengths(&sizes, 1000, true), [512, 488]);
        // Without a 512 size there is nothing to round up to.
        assert_eq!(chunk_lengths(&[64], 300, true), [64, 64, 64, 64, 44]);
        let total: usize = chunk_lengths(&sizes, 5000, true).iter().sum();
        assert_eq!(total, 5000);
    }
}
