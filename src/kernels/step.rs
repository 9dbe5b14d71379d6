//! The per-step uniform every position-dependent kernel binds.
//!
//! It lives with the kernels rather than the runtime because it is their binding contract:
//! attention, RoPE and the KV-cache write read it in WGSL (and the native attention in
//! SPIR-V/MSL) at this exact layout, and the families' check cases build one. The runtime
//! only fills it (`runtime::forward`), so the arrow points runtime -> kernels; it is
//! re-exported as `runtime::StepParams`.

/// Per-step values shared by every position-dependent kernel of one forward step (a decoded
/// token or a prefill chunk). One uniform buffer holds it; the runtime rewrites it with
/// `queue.write_buffer` before each submit, so bind groups never change.
/// Mirrors: `struct Step` in `wgsl/step.wgsl`, `metal_overrides/attention_decode.metal`,
/// `metal_overrides/attention_prefill.metal` and `vulkan_overrides/attention_decode.comp`
/// (`pos, n_tokens, kv_len, pad`: 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    /// Absolute position of the first token of this step (tokens already in the KV cache).
    pub pos: u32,
    /// Tokens processed in this step (1 for decode).
    pub n_tokens: u32,
    /// Cached length after this step's KV write: `pos + n_tokens`.
    pub kv_len: u32,
    /// Keeps the uniform a multiple of 16 bytes.
    pub _pad: u32,
}
