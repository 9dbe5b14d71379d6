//! What a session of a given context plans before it allocates: its prefill chunk sizes and
//! the GPU memory of its KV cache and activations (the KV cache reserves it up front; the
//! forward pass allocates to the same plan).

use crate::gpu::Capabilities;
use crate::kernels::kv_cache::{cache_bytes, KvType};
use crate::model::ModelConfig;

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
    // WICK_PREFILL_CHUNK: the large chunk for measurements (a multiple of the small one).
    let want = std::env::var("WICK_PREFILL_CHUNK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&c| c >= PREFILL_CHUNK && c % PREFILL_CHUNK == 0)
        .unwrap_or(PREFILL_CHUNK_LARGE);
    let large = if ctx >= want { want } else { 0 };
    (PREFILL_CHUNK, large)
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
    let (small, large) = prefill_chunks(ctx);
    let c = small.max(large) as u64;
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
