//! wick — WGSL Inference Compute Kernels.
//!
//! An LLM inference engine on wgpu: portable WGSL kernels on every backend, with native
//! MSL/SPIR-V variants for hot paths. Data flows one way:
//! formats → model weights → runtime → kernels → gpu.

pub mod error;
pub mod formats;
pub mod gpu;
pub mod kernels;
pub mod quant;
pub mod reference;

pub use error::{Error, Result};
