// The attention passes' uniforms: the per-step one and the pass's own (mirror of the Rust
// `AttentionParams`, whose `flags` and `group` words only the native kernels read).

#include "step"

struct Params {
    n_heads: u32,
    n_splits: u32,
    capacity: u32,
    max_tokens: u32,
    scale_log2e: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
