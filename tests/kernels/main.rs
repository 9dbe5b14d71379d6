//! Kernel tests: every GPU kernel against its CPU reference on fresh random inputs, with
//! outputs poisoned before each run and relative-error bounds suited to the precision.
//! One test binary for all families keeps link time down on the 2-core CI machine.

#[path = "../common/mod.rs"]
pub mod common;
mod support;

mod argmax;
mod attention;
mod embedding;
mod gemm;
mod gemv;
mod gemv_batch;
mod gemv_dot;
mod kv_cache;
mod rmsnorm;
mod rope;
mod sample;
mod softmax;
mod swiglu;
