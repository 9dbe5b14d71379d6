//! The KV cache: per layer, keys and values laid out `[kv_head][capacity][head_dim]`, as f16
//! or as q8_0 codes with a plane of block scales ([`KvType`]; layouts in
//! [`crate::kernels::kv_cache`]).
//!
//! Creating one also reserves, in the device's memory accounting, everything the session
//! that owns it will allocate (cache, activations, scratch): a context too large for what is
//! left of the device's memory is refused here, before any buffer exists.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, MemoryKind, MemoryReservation};
use crate::kernels::kv_cache::{CacheShape, KvType};
use crate::model::ModelConfig;

pub use super::plan::{session_memory, SessionMemory};

#[derive(Debug)]
pub struct KvCache {
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
    /// Positions each layer can hold.
    pub capacity: usize,
    pub kv_type: KvType,
    /// The session's share of the device memory (cache and activations), given back on drop.
    reservation: MemoryReservation,
}

impl KvCache {
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, capacity: usize, kv_type: KvType) -> Result<KvCache> {
        if capacity == 0 {
            return Err(Error::InvalidArgument("a context of 0 tokens".into()));
        }
        if capacity > cfg.context_len {
            return Err(Error::InvalidArgument(format!(
                "a context of {capacity} tokens exceeds the model's context length {}",
                cfg.context_len
            )));
        }
        if let Some(p) = kv_type.head_dim_problem(cfg.head_dim) {
            return Err(Error::InvalidArgument(p));
        }
        let bytes = CacheShape {
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            capacity,
            kv_type,
        }
        .bytes();
        if !gpu.fits_binding(bytes) {
            return Err(Error::InvalidArgument(format!(
                "a context of {capacity} tokens needs {bytes} bytes of KV cache per layer, more than the device's {}-byte binding limit; use a smaller --ctx",
                gpu.caps.max_storage_buffer_binding_size
            )));
        }
        let mem = session_memory(&gpu.caps, cfg, capacity, kv_type);
        let reservation = gpu.reserve(
            MemoryKind::Session,
            &format!(
                "a session with a context of {capacity} tokens ({} bytes of KV cache in {kv_type}, {} of activations)",
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
            kv_type,
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
