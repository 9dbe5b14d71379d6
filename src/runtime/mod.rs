//! The runtime: KV cache, the recorded forward pass, sessions, generation, sampling and
//! perplexity.

pub mod batch;
pub mod forward;
pub mod kv_cache;
pub mod perplexity;
pub mod plan;
pub mod sampling;
pub mod session;
pub mod stream;
pub mod token_ring;

pub use crate::kernels::kv_cache::KvType;
pub use crate::kernels::StepParams;
pub use batch::{Batch, BatchEvent, BatchOptions, SeqId};
pub use forward::DecodeFusion;
pub use sampling::SamplingParams;
pub use session::{
    GenerateParams, Generation, Picker, Session, SessionOptions, Stats, StopReason, Token,
};
