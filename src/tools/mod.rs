//! Tooling over the engine: the op catalog (`wick kernels list`), the reference checks
//! (`wick kernels check`), the portable-vs-native bench (`wick kernels bench`), the model
//! benchmark (`wick bench`), GEMV split sweeps (`wick bench gemv`, `wick tune`), the read
//! bandwidth probe, per-dispatch session profiling and the HTTP load generator of
//! `wick bench serve`. Everything here depends on the engine
//! (kernels, runtime, model); nothing in the engine depends on it.

pub mod bandwidth;
pub mod catalog;
pub mod check;
pub mod kernel_bench;
pub mod model_bench;
pub mod profile;
pub mod serve_bench;
pub mod timing;
pub mod tune;
