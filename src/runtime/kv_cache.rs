//! The KV cache: per layer, f16 keys and values laid out `[kv_head][capacity][head_dim]`.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::kv_cache::cache_bytes;
use crate::model::ModelConfig;

#[derive(Debug)]
pub struct KvCache {
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
    /// Positions each layer can hold.
    pub capacity: usize,
}

impl KvCache {
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, capacity: usize) -> Result<KvCache> {
        if capacity == 0 {
            return Err(Error::InvalidArgument("a context of 0 tokens".into()));
        }
        let bytes = cache_bytes(cfg.n_kv_heads, cfg.head_dim, capacity);
        if !gpu.fits_binding(bytes) {
            return Err(Error::InvalidArgument(format!(
                "a context of {capacity} tokens needs {bytes} bytes of KV cache per layer, more than the device's {}-byte binding limit; use a smaller --ctx",
                gpu.caps.max_storage_buffer_binding_size
            )));
        }
        let mut k = Vec::with_capacity(cfg.n_layers);
        let mut v = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            k.push(gpu.storage_buffer(&format!("kv.k.{l}"), bytes)?);
            v.push(gpu.storage_buffer(&format!("kv.v.{l}"), bytes)?);
        }
        Ok(KvCache { k, v, capacity })
    }

    pub fn bytes(&self) -> u64 {
        self.k.iter().chain(&self.v).map(|b| b.size()).sum()
    }
}
