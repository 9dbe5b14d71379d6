//! CPU reference implementations of every kernel, in plain f32/f64 Rust. Tests compare the
//! GPU kernels against these on fresh random inputs.

pub mod act_q8;
pub mod argmax;
pub mod attention;
pub mod embedding;
pub mod gemm;
pub mod gemv;
pub mod kv_cache;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod softmax;
pub mod swiglu;
