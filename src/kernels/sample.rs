//! GPU sampling: repetition penalty, top-k, temperature, top-p, min-p and the draw over a
//! vocabulary of f32 logits, leaving the chosen id in a GPU buffer (as argmax does) so the
//! next decode step reads it without the CPU in between. See `wgsl/sample.wgsl` for the
//! algorithm (a tree of per-workgroup bitonic sorts, then one workgroup that draws).
//!
//! The chain is built once per (vocabulary, k) and reads its per-token settings from a
//! [`SampleStep`] uniform that the runtime rewrites before each submit.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{Binding, Dispatch, KernelSpec, Kernels};
use crate::error::{Error, Result};

/// The GPU sampling chain: top-k levels, merges and the draw.
pub static FAMILY: Family = Family {
    name: "sample",
    wgsl: &["sample"],
    pipelines: || {
        [(true, true), (true, false), (false, false), (false, true)]
            .map(|(l, f)| spec(l, f))
            .to_vec()
    },
    native_coverage: None,
    checks: None,
    bench: None,
};

/// Elements one workgroup sorts (`C` in sample.wgsl).
pub const SORT: usize = 2048;
/// Most candidates the chain keeps: top-k up to this is exact; top-k off (0) or larger
/// keeps this many (exact unless the kept set would extend past them, then flagged).
pub const K_MAX: usize = 256;
/// `token[1]` flag: top-k off and the top-p/min-p set extended past the K_MAX candidates.
pub const FLAG_TRUNCATED: u32 = 1;
/// Bit set in the chosen id when a logit was not finite; the low bits hold the lowest such
/// index (as the checked argmax writes it).
pub use super::argmax::NON_FINITE;

const WG: u32 = 256;

/// One level of the top-k tree (WGSL `Level` in sample.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Level {
    pub n: u32,
    pub n_groups: u32,
    pub k: u32,
    pub n0: u32,
}

/// Per-token settings of the chain (WGSL `Step` in sample.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SampleStep {
    /// <= 0: the best candidate after the penalty (greedy).
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub penalty: f32,
    /// The penalty window: `history[hist_start..hist_end]`.
    pub hist_start: u32,
    pub hist_end: u32,
    /// Where the chosen id is appended to the history (ignored past its end).
    pub hist_out: u32,
    /// Uniform random number in [0, 1) for the draw.
    pub u: f32,
    /// 1 when top-k is off (0 or at least the vocabulary): probabilities are normalised
    /// over the whole vocabulary.
    pub full_norm: u32,
    pub vocab: u32,
    pub _pad: u32,
}

/// Whether the chain samples these settings exactly as the CPU sampler does: top-k within
/// 1..=K_MAX, or off (0 or at least the vocabulary; then exact unless flagged). A top-k
/// between K_MAX and the vocabulary normalises over candidates the chain does not keep.
pub fn supports(top_k: usize, vocab: usize) -> bool {
    top_k <= K_MAX || top_k >= vocab
}

/// Candidates the chain keeps for a top-k setting (and 1 for greedy).
pub fn chain_k(temperature: f32, top_k: usize) -> usize {
    if temperature <= 0.0 {
        1
    } else if top_k == 0 || top_k > K_MAX {
        K_MAX
    } else {
        top_k
    }
}

/// The buffers a chain shares with its caller.
pub struct SampleBuffers<'a> {
    pub logits: &'a wgpu::Buffer,
    /// [`SampleStep`] uniform.
    pub step: &'a wgpu::Buffer,
    /// u32 token ids by position (the penalty window is read from it, the chosen id
    /// appended).
    pub history: &'a wgpu::Buffer,
    /// At least 8 bytes: `[chosen id, flags]`.
    pub token: &'a wgpu::Buffer,
    /// `K_MAX` pairs `(id, probability bits)` of the final candidates, by rank (dropped
    /// candidates have probability 0, unused slots id `u32::MAX`).
    pub probs: &'a wgpu::Buffer,
}

/// The dispatches of one sampling chain, recorded in order after the LM head.
#[derive(Debug)]
pub struct SampleChain {
    pub dispatches: Vec<Dispatch>,
    pub k: usize,
    _buffers: Vec<wgpu::Buffer>,
}

/// The spec of one sampling pass: over the logits (`FROM_LOGITS`) or over candidates, and
/// the last pass of the chain (`FINAL`, which draws) or not.
pub fn spec(from_logits: bool, last: bool) -> KernelSpec {
    let op = match (from_logits, last) {
        (true, true) => "sample_small",
        (true, false) => "sample_topk",
        (false, false) => "sample_merge",
        (false, true) => "sample_draw",
    };
    let mut s = KernelSpec::new(
        op,
        "sample",
        "sample",
        &[
            Binding::Uniform,
            Binding::Uniform,
            Binding::Read,
            Binding::ReadWrite,
            Binding::ReadWrite,
            Binding::ReadWrite,
            Binding::ReadWrite,
            Binding::ReadWrite,
        ],
    )
    .constant("WG", WG);
    if from_logits {
        s = s.define("FROM_LOGITS");
    }
    if last {
        s = s.define("FINAL");
    }
    s
}

/// Builds the chain sampling from `vocab` logits with `k` candidates ([`chain_k`]).
pub fn sample_chain(
    kernels: &Kernels,
    b: &SampleBuffers<'_>,
    vocab: usize,
    k: usize,
) -> Result<SampleChain> {
    if vocab == 0 || vocab >= NON_FINITE as usize {
        return Err(Error::Shape(format!("sampling over {vocab} logits")));
    }
    if k == 0 || k > K_MAX {
        return Err(Error::Shape(format!(
            "sampling keeps 1..={K_MAX} candidates, not {k}"
        )));
    }
    let need = [
        (b.logits, vocab as u64 * 4, "logits"),
        (b.token, 8, "token"),
        (b.probs, K_MAX as u64 * 8, "probs"),
        (b.history, 4, "history"),
    ];
    for (buf, bytes, what) in need {
        need_bytes("sampling", what, buf, bytes)?;
    }
    let gpu = &kernels.gpu;
    let max_dim = gpu.caps.max_compute_workgroups_per_dimension as usize;
    let groups = |n: usize| n.div_ceil(SORT);
    let n0 = groups(vocab);
    if n0 > max_dim {
        return Err(Error::Shape(format!(
            "sampling over {vocab} logits needs {n0} workgroups (device limit {max_dim})"
        )));
    }
    let norm = gpu.storage_buffer("sample norm partials", n0 as u64 * 8)?;
    let status = gpu.storage_buffer("sample status", 4)?;
    let mut keep = Vec::new();
    let mut dispatches = Vec::new();
    let mut n = vocab;
    let mut input: Option<wgpu::Buffer> = None;
    loop {
        let g = groups(n);
        let last = g == 1;
        let from_logits = input.is_none();
        let level = gpu.uniform(
            "sample level",
            &Level {
                n: n as u32,
                n_groups: g as u32,
                k: k as u32,
                n0: n0 as u32,
            },
        )?;
        let output = if last {
            None
        } else {
            Some(gpu.storage_buffer("sample candidates", (g * k) as u64 * 8)?)
        };
        let src = input.as_ref().unwrap_or(b.logits);
        let dst = output.as_ref().unwrap_or(b.probs);
        dispatches.push(kernels.dispatch(
            &spec(from_logits, last),
            &[&level, b.step, src, b.history, dst, &norm, &status, b.token],
            [g as u32, 1, 1],
        )?);
        keep.push(level);
        if let Some(prev) = input.take() {
            keep.push(prev);
        }
        if last {
            break;
        }
        input = output;
        n = g * k;
    }
    keep.push(norm);
    keep.push(status);
    Ok(SampleChain {
        dispatches,
        k,
        _buffers: keep,
    })
}
