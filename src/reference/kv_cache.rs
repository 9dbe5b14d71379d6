//! KV-cache reference: f16 packing and the cache write, on the CPU.

use half::f16;

/// f32 to the cache's f16: round to nearest even, clamped to the finite range (as the kernel
/// clamps before packing).
pub fn to_f16(v: f32) -> f16 {
    f16::from_f32(v.clamp(-65504.0, 65504.0))
}

/// Packs f16 pairs into cache words (element `2i` in the low half).
pub fn pack(values: &[f16]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|p| p[0].to_bits() as u32 | (p.get(1).map_or(0, |h| h.to_bits()) as u32) << 16)
        .collect()
}

/// Unpacks cache words into f16 values.
pub fn unpack(words: &[u32]) -> Vec<f16> {
    words
        .iter()
        .flat_map(|&w| [f16::from_bits(w as u16), f16::from_bits((w >> 16) as u16)])
        .collect()
}

/// Writes `new` (f32 `[n_tokens][n_kv_heads * head_dim]`) into `cache` (f16
/// `[n_kv_heads][capacity][head_dim]`) at positions `pos..pos + n_tokens` (those below
/// `capacity`).
pub fn kv_write(
    cache: &mut [f16],
    new: &[f32],
    pos: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
) {
    for (t, row) in new.chunks(n_kv_heads * head_dim).enumerate() {
        if pos + t >= capacity {
            break;
        }
        for (h, src) in row.chunks(head_dim).enumerate() {
            let dst = (h * capacity + pos + t) * head_dim;
            for (d, &v) in cache[dst..dst + head_dim].iter_mut().zip(src) {
                *d = to_f16(v);
            }
        }
    }
}
