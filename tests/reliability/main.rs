//! Reliability: hostile model files (`hostile`), GPU faults and context limits
//! (`gpu_faults`), and concurrent sessions (`concurrency`), on tiny models written by
//! `support` and the synthetic golden checkpoints. One test binary keeps link time down on
//! the 2-core CI machine; run one part with `cargo test --release --test reliability hostile::`.

#[path = "../common/mod.rs"]
pub mod common;
mod support;

mod concurrency;
mod gpu_faults;
mod hostile;
