//! CPU reference implementations of every kernel, in plain f32/f64 Rust. Tests compare the
//! GPU kernels against these on fresh random inputs.

pub mod attention;
pub mod kv_cache;
pub mod rmsnorm;
pub mod rope;
