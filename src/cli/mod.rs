//! Subcommand implementations of the `wick` binary.

pub mod bench;
pub mod chat;
pub mod common;
pub mod info;
pub mod kernels;
pub mod logits;
pub mod perplexity;
pub mod quantize;
pub mod run;
pub mod serve;
pub mod synth;
pub mod tokenize;
pub mod tune;
