//! The KV cache: per layer, f16 keys and values laid out `[kv_head][capacity][head_dim]`.
//!
//! Creating one also reserves, in the device's memory accounting, everything the session
//! that owns it will allocate (cache, activations, scratch): a context too large for what is
//! left of the device's memory is refused here, before any buffer exists.

use crate::error::{Error, Result};
use crate::gpu::{Capabilities, Gpu, MemoryKind, MemoryReservation};
use crate::kernels::kv_cache::cache_bytes;
use crate::model::ModelConfig;

/// GPU memory of one session, by part (see [`session_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SessionMemory {
    /// Keys and values of every layer: 2 x layers x kv_heads x head_dim x ctx x 2 bytes (f16).
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

/// What a session of `ctx` tokens on a model of `cfg` allocates on the GPU (the buffers
/// `Forward::new` and the KV cache create; uniforms and the 32-byte token ring aside).
pub fn session_memory(caps: &Capabilities, cfg: &ModelConfig, ctx: usize) -> SessionMemory {
    let (small, large) = crate::runtime::forward::prefill_chunks(ctx);
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
    // Split-KV decode attention: per layer, (head_dim + 2) f32 per (head, split).
    let splits = crate::kernels::attention::choose_splits(caps, cfg.n_kv_heads, ctx) as u64;
    if splits > 1 {
        act += cfg.n_layers as u64 * cfg.n_heads as u64 * splits * (cfg.head_dim as u64 + 2) * 4;
    }
    SessionMemory {
        kv: 2 * cfg.n_layers as u64 * cache_bytes(cfg.n_kv_heads, cfg.head_dim, ctx),
        activations: act,
    }
}

#[derive(Debug)]
pub struct KvCache {
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
    /// Positions each layer can hold.
    pub capacity: usize,
    /// The session's share of the device memory (cache and activations), given back on drop.
    reservation: MemoryReservation,
}

impl KvCache {
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, capacity: usize) -> Result<KvCache> {
        if capacity == 0 {
            return Err(Error::InvalidArgument("a context of 0 tokens".into()));
        }
        if capacity > cfg.context_len {
            return Err(Error::InvalidArgument(format!(
                "a context of {capacity} tokens exceeds the model's context length {}",
                cfg.context_len
            )));
        }
        let bytes = cache_bytes(cfg.n_kv_heads, cfg.head_dim, capacity);
        if !gpu.fits_binding(bytes) {
            return Err(Error::InvalidArgument(format!(
                "a context of {capacity} tokens needs {bytes} bytes of KV cache per layer, more than the device's {}-byte binding limit; use a smaller --ctx",
                gpu.caps.max_storage_buffer_binding_size
            )));
        }
        let mem = session_memory(&gpu.caps, cfg, capacity);
        let reservation = gpu.reserve(
            MemoryKind::Session,
            &format!(
                "a session with a context of {capacity} tokens ({} bytes of KV cache, {} of activations)",
                mem.kv, mem.activations
            ),
            mem.total(),
        )?;
        let mut k = Vec::with_capacity(cfg.n_layers);
        let mut v = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            k.push(gpu.storage_buffer(&format!("kv.k.{l}"), bytes)?);
            v.push(gpu.storage_buffer(&format!("kv.v.{l}"), bytes)?);
        }
        Ok(KvCache {
            k,
            v,
            capacity,
            reservation,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.k.iter().chain(&self.v).map(|b| b.size()).sum()
    }

    /// Bytes reserved for the whole session (cache and activations).
    pub fn reserved_bytes(&self) -> u64 {
        self.reservation.bytes()
    }
}
