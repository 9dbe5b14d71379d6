// Helpers shared by the K-quant loaders of gemv, gemm and embedding (plane layouts: the
// module doc of src/quant/mod.rs). Included; not a kernel family of its own.

// The (scale, min) of sub-block s (0..8) of a Q4_K/Q5_K super-block from its header word
// group hdr (x: d | dmin << 16; y, z, w: GGML's 12 bytes of packed 6-bit pairs), as in GGML's
// get_scale_min_k4: sub-blocks 0..4 take the low 6 bits of bytes s and s+4; 4..8 combine the
// nibbles of byte s+4 with the top 2 bits of bytes s-4 and s.
fn k4_scale_min(hdr: vec4<u32>, s: u32) -> vec2<f32> {
    let t = s & 3u;
    let lo = vec2<u32>(extractBits(hdr.y, 8u * t, 6u), extractBits(hdr.z, 8u * t, 6u));
    let hi = vec2<u32>(
        extractBits(hdr.w, 8u * t, 4u) | (extractBits(hdr.y, 8u * t + 6u, 2u) << 4u),
        extractBits(hdr.w, 8u * t + 4u, 4u) | (extractBits(hdr.z, 8u * t + 6u, 2u) << 4u),
    );
    return vec2<f32>(select(lo, hi, s >= 4u));
}

// The signed 8-bit Q6_K scale `s` (0..16) of block b from its scales plane word `w` (byte s % 4).
fn q6_scale(w: u32, s: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(w), 8u * (s & 3u), 8u));
}
