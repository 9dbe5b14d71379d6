// Decoding the weight formats' GPU planes (layouts: the module doc of src/quant/mod.rs),
// shared by the embedding gather, GEMV, the integer-dot GEMV and GEMM through
// `#include "dequant"`. Kernels apply the scales at different points (GEMV after its dot
// products, the gather and GEMM per element), so this file holds the pieces they share: the
// quantised values a qs word holds, where a block's words sit in the scales plane, and each
// format's map from quantised values to weights. Included; not a kernel family of its own.

// ---- qs words ------------------------------------------------------------------------------
// Byte b of word w of a block: Q8_0 element 4w+b (signed); nibble words: element 4w+b in the
// low nibble and 4w+b+16 (32-element blocks) or 4w+b+32 (K-quant pairs) in the high one.
// "Packed" values below are one small unsigned value per byte of a u32, in the word's byte
// order: what dot4I8Packed takes, and what bytes4 / u8x4 unpack.

const NIB: u32 = 0x0F0F0F0Fu;

// The four bytes of w, unsigned.
fn bytes4(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu);
}
// The four bytes of w as floats, unsigned / signed.
fn u8x4(w: u32) -> vec4<f32> {
    return vec4<f32>(bytes4(w));
}
fn i8x4(w: u32) -> vec4<f32> {
    // Move each byte to the top, then an arithmetic shift sign-extends it.
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}
// The low / high nibbles of w's bytes as floats.
fn nib_lo(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
}
fn nib_hi(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
}
// Bits s..s+3 of h as floats (the fifth bits of four consecutive elements).
fn bits4(h: u32, s: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(h) >> (vec4<u32>(s) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u));
}
// Two bf16 (element 2i in the low half) as f32: bf16 is the high half of an f32.
fn bf16x2(w: u32) -> vec2<f32> {
    return bitcast<vec2<f32>>(vec2<u32>(w << 16u, w & 0xFFFF0000u));
}

// Packed: the low / high nibbles of w's bytes.
fn lo_nibbles(w: u32) -> u32 {
    return w & NIB;
}
fn hi_nibbles(w: u32) -> u32 {
    return (w >> 4u) & NIB;
}
// Packed: bits 0..3 of h moved to bit 4 of bytes 0..3 (fifth bits, to OR onto nibbles).
fn fifth_bits(h: u32) -> u32 {
    return ((h & 1u) << 4u) | ((h & 2u) << 11u) | ((h & 4u) << 18u) | ((h & 8u) << 25u);
}
// Packed 5-bit values: the packed nibbles n of elements e..e+3 with their fifth bits from qh
// (bit i is element i's).
fn with_fifth(n: u32, qh: u32, e: u32) -> u32 {
    return n | fifth_bits(qh >> e);
}
// Q5_0/Q5_1: the 5-bit values of nibble word w (0..4) of a block with fifth bits qh, its low
// nibbles (elements 4w..) and its high ones (16 + 4w..).
fn q5_lo(q: u32, qh: u32, w: u32) -> u32 {
    return with_fifth(lo_nibbles(q), qh, 4u * w);
}
fn q5_hi(q: u32, qh: u32, w: u32) -> u32 {
    return with_fifth(hi_nibbles(q), qh, 16u + 4u * w);
}
// Q6_K: the top-bit word `top` of a pair (word 8 + i % 4) aligned to nibble word i: half 0 for
// words 0..4, 1 for 4..8. Bits 0-1 of each byte then belong to the low nibble, 4-5 to the high.
fn q6_top(top: u32, half: u32) -> u32 {
    return (top >> (2u * half)) & 0x33333333u;
}
// Packed 6-bit values of the low / high nibbles of word qw with its aligned top bits v.
fn q6_lo(qw: u32, v: u32) -> u32 {
    return lo_nibbles(qw) | ((v & 0x03030303u) << 4u);
}
fn q6_hi(qw: u32, v: u32) -> u32 {
    return hi_nibbles(qw) | (v & 0x30303030u);
}

// ---- scales plane ----------------------------------------------------------------------------

// Half i % 2 of a word of two f16 (i even: the low half).
fn f16_of(pair: u32, i: u32) -> f32 {
    return unpack2x16float(pair)[i & 1u];
}
// Q8_0, Q4_0: one f16 d per block, blocks 2i and 2i+1 in one word.
fn q8_d_word(b: u32) -> u32 {
    return b >> 1u;
}
// Q4_1: word b is d | m << 16 of block b.
// Q5_0: per pair of blocks three words, qh(2i), qh(2i+1), d(2i) | d(2i+1) << 16.
fn q5_0_qh_word(b: u32) -> u32 {
    return 3u * (b >> 1u) + (b & 1u);
}
fn q5_0_d_word(b: u32) -> u32 {
    return 3u * (b >> 1u) + 2u;
}
// Q5_1: two words per block, qh then d | m << 16.
fn q5_1_qh_word(b: u32) -> u32 {
    return 2u * b;
}
fn q5_1_dm_word(b: u32) -> u32 {
    return 2u * b + 1u;
}
// Q4_K: 4 words per super-block, the header: d | dmin << 16, then GGML's 12 bytes of packed
// 6-bit (scale, min) pairs. Q5_K: 12, that header and then 8 words of fifth bits, word s for
// sub-block s (bit l: element 32s + l).
const Q4K_SCALE_WORDS: u32 = 4u;
const Q5K_SCALE_WORDS: u32 = 12u;
// K-quant qs words per super-block: Q4_K/Q5_K 8 nibble words per pair; Q6_K 12 per pair,
// 8 nibble words then 4 words of top bits.
const Q4K_QS_WORDS: u32 = 32u;
const Q6K_QS_WORDS: u32 = 48u;
// Q6_K: per pair of super-blocks nine words: the 16 i8 scales of each (scale s in byte s % 4
// of its word s / 4, covering elements 16s..16s+16), then d(2i) | d(2i+1) << 16.
fn q6k_scales_word(bb: u32, w: u32) -> u32 {
    return 9u * (bb >> 1u) + 4u * (bb & 1u) + w;
}
fn q6k_d_word(bb: u32) -> u32 {
    return 9u * (bb >> 1u) + 8u;
}

// The (scale, min) of sub-block s (0..8) of a Q4_K/Q5_K super-block from its header hdr (x: d |
// dmin << 16; y, z, w: the 12 bytes of 6-bit pairs), as in GGML's get_scale_min_k4:
// sub-blocks 0..4 take the low 6 bits of bytes s and s+4; 4..8 combine the nibbles of byte
// s+4 with the top 2 bits of bytes s-4 and s.
fn k4_scale_min(hdr: vec4<u32>, s: u32) -> vec2<f32> {
    let t = s & 3u;
    let lo = vec2<u32>(extractBits(hdr.y, 8u * t, 6u), extractBits(hdr.z, 8u * t, 6u));
    let hi = vec2<u32>(
        extractBits(hdr.w, 8u * t, 4u) | (extractBits(hdr.y, 8u * t + 6u, 2u) << 4u),
        extractBits(hdr.w, 8u * t + 4u, 4u) | (extractBits(hdr.z, 8u * t + 6u, 2u) << 4u),
    );
    return vec2<f32>(select(lo, hi, s >= 4u));
}
// Sub-block s's weights are x = a * q - b with (a, b) = (d * scale, dmin * min).
fn k4_sub_affine(hdr: vec4<u32>, s: u32) -> vec2<f32> {
    let d = unpack2x16float(hdr.x);
    let sm = k4_scale_min(hdr, s);
    return vec2<f32>(d.x * sm.x, d.y * sm.y);
}

// The signed 8-bit Q6_K scale `s` (0..16) of a super-block from its scales word `w` (byte s % 4).
fn q6_scale(w: u32, s: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(w), 8u * (s & 3u), 8u));
}

// ---- weights from packed values (the gather and GEMM) -------------------------------------------

// d * (q - zero): Q4_0 (zero 8), Q5_0 (16), Q6_K (32, d the scale times the super-block's d).
fn dq_offset(v: u32, d: f32, zero: i32) -> vec4<f32> {
    return d * vec4<f32>(vec4<i32>(bytes4(v)) - vec4<i32>(zero));
}
// d * q + m: Q4_1, Q5_1 (dm = (d, m)).
fn dq_affine(v: u32, dm: vec2<f32>) -> vec4<f32> {
    return dm.x * vec4<f32>(bytes4(v)) + dm.y;
}
// a * q - b: Q4_K, Q5_K (ab from k4_sub_affine).
fn dq_kquant(v: u32, ab: vec2<f32>) -> vec4<f32> {
    return ab.x * vec4<f32>(bytes4(v)) - ab.y;
}
