// The per-step uniform shared by every position-dependent kernel (mirror of the Rust
// `kernels::StepParams`): written once per decoded token or prefill chunk.
struct Step {
    pos: u32,
    n_tokens: u32,
    kv_len: u32,
    _pad: u32,
}
