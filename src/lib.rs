//! wick — WGSL Inference Compute Kernels.
//!
//! An LLM inference engine on wgpu: portable WGSL kernels on every backend, with native
//! MSL/SPIR-V variants for hot paths. Data flows one way:
//! formats → model weights → runtime → kernels → gpu. The tooling behind `wick kernels` and
//! `wick bench` ([`tools`]) and the HTTP server behind `wick serve` ([`serve`]) sit on top of the
//! engine; `tests/layering.rs` keeps every import pointing down.
//!
//! ```no_run
//! use wick::{Engine, GenerateParams, LoadOptions, Model, Session};
//!
//! # fn main() -> wick::Result<()> {
//! let engine = Engine::new()?;
//! let model = Model::load(&engine, "SmolLM2-135M-Instruct.Q4_1.gguf", LoadOptions::default())?;
//! let prompt = model.tokenizer()?.encode("The capital of France is")?;
//! let mut session = Session::new(&model)?;
//! for token in session.generate(&prompt, GenerateParams { max_tokens: 16, ..Default::default() })? {
//!     print!("{}", token?.text);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Cargo features: `download` (fetching the default model and `hf:` sources over HTTPS) and
//! `onig` (tokenizers' Oniguruma regex engine) are on by default; `fancy-regex` is the pure-Rust
//! regex engine for builds without a C toolchain for the target (macOS/Windows cross-checks);
//! tokenizers refuses to build with neither.

pub mod engine;
pub mod error;
pub mod formats;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod reference;
pub mod runtime;
pub mod serve;
pub mod tools;

pub use engine::{Engine, EngineOptions};
pub use error::{Error, Result};
pub use model::{LoadOptions, Model};
pub use runtime::{GenerateParams, KvType, SamplingParams, Session, SessionOptions, Token};
