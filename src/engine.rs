//! The library entry point: an [`Engine`] owns the GPU and the kernel registry; models are
//! loaded onto it and sessions generate from them.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::{Gpu, GpuOptions};
use crate::kernels::tuning::TuningTable;
use crate::kernels::{KernelChoice, KernelPolicy, Kernels};

/// Options for [`Engine::with_options`].
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub gpu: GpuOptions,
    /// Portable, native or auto kernels (per-op overrides come from `$WICK_KERNELS`).
    pub kernels: KernelChoice,
}

/// Owns the GPU device and the pipeline cache. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Engine {
    pub(crate) kernels: Arc<Kernels>,
}

impl Engine {
    /// Opens the best GPU (see [`Gpu::new`]) with portable kernels.
    pub fn new() -> Result<Engine> {
        Self::with_options(EngineOptions::default())
    }

    pub fn with_options(opts: EngineOptions) -> Result<Engine> {
        let gpu = Gpu::with_options(opts.gpu)?;
        let policy = KernelPolicy::from_env(opts.kernels)?;
        // Measured GEMV splits from `wick tune`, when this device has them.
        let path = TuningTable::path_for(&gpu.caps);
        let tuning = TuningTable::load(&path, &gpu.caps);
        Ok(Engine {
            kernels: Arc::new(Kernels::with_policy(gpu, policy).with_tuning(tuning)),
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.kernels.gpu
    }

    pub fn kernels(&self) -> &Arc<Kernels> {
        &self.kernels
    }
}
