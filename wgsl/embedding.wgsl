// Embedding gather: out[t] = table[ids[ids_offset + t] - row_offset], dequantised to f32.
// The table is in the repacked planes of src/quant (one FMT_* define picks the loader). One
// invocation per u32 word of `qs`: a word holds 1 (f32), 2 (f16/bf16), 4 (Q8_0) or 8 (Q4/Q5,
// Q4_K/Q5_K, Q6_K's nibble words) elements, so every invocation does the same small amount of
// work and reads are coalesced. (Q6_K's top-bit words are read by the nibble words' invocations;
// their own invocations do nothing.)
// Grid: x over the words of one row, y over tokens.
//
// The table may be one row-chunk of a vocabulary split across bindings: ids outside
// [row_offset, row_offset + n_rows) are skipped, leaving that token's output row untouched for
// the dispatch of the chunk that owns it. An id beyond the whole vocabulary is thus never read
// from any chunk and its row stays as it was (the runtime rejects such ids on the CPU).

struct Params {
    n_rows: u32,
    k: u32,
    row_offset: u32,
    ids_offset: u32,
    n_tokens: u32,
    words_per_row: u32,
    blocks_per_row: u32,
    _pad: u32,
}

override WG: u32 = 64u;

#include "dequant"

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qs: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// out[e..e+4] = v.
fn put4(e: u32, v: vec4<f32>) {
    out[e] = v.x;
    out[e + 1u] = v.y;
    out[e + 2u] = v.z;
    out[e + 3u] = v.w;
}

@compute @workgroup_size(WG)
fn embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = wid.x * WG + lid;
    let t = wid.y;
    if (w >= p.words_per_row || t >= p.n_tokens) { return; }
    let id = ids[p.ids_offset + t];
    // Unsigned: an id below row_offset wraps around and fails the same test.
    let row = id - p.row_offset;
    if (id < p.row_offset || row >= p.n_rows) { return; }
    let q = qs[row * p.words_per_row + w];
    let o = t * p.k;
#ifdef FMT_F32
    out[o + w] = bitcast<f32>(q);
#endif
#ifdef FMT_F16
    let v = unpack2x16float(q);
    out[o + 2u * w] = v.x;
    out[o + 2u * w + 1u] = v.y;
#endif
#ifdef FMT_BF16
    let v = bf16x2(q);
    out[o + 2u * w] = v.x;
    out[o + 2u * w + 1u] = v.y;
#endif
#ifdef FMT_Q8_0
    // 8 words per block; word w holds elements 4w..4w+3 of the row.
    let b = row * p.blocks_per_row + w / 8u;
    put4(o + 4u * w, f16_of(scales[q8_d_word(b)], b) * i8x4(q));
#endif
#ifdef FMT_Q4_0
    // 4 words per block; word w % 4 holds elements e0.. in its low nibbles, e0 + 16.. in its high.
    let b = row * p.blocks_per_row + w / 4u;
    let d = f16_of(scales[q8_d_word(b)], b);
    let e0 = o + 32u * (w / 4u) + 4u * (w % 4u);
    put4(e0, dq_offset(lo_nibbles(q), d, 8));
    put4(e0 + 16u, dq_offset(hi_nibbles(q), d, 8));
#endif
#ifdef FMT_Q4_1
    // As Q4_0, with one word d | m << 16 per block.
    let dm = unpack2x16float(scales[row * p.blocks_per_row + w / 4u]);
    let e0 = o + 32u * (w / 4u) + 4u * (w % 4u);
    put4(e0, dq_affine(lo_nibbles(q), dm));
    put4(e0 + 16u, dq_affine(hi_nibbles(q), dm));
#endif
#ifdef FMT_Q5_0
    // As Q4_0 plus fifth bits.
    let b = row * p.blocks_per_row + w / 4u;
    let qh = scales[q5_0_qh_word(b)];
    let d = f16_of(scales[q5_0_d_word(b)], b);
    let e0 = o + 32u * (w / 4u) + 4u * (w % 4u);
    put4(e0, dq_offset(q5_lo(q, qh, w % 4u), d, 16));
    put4(e0 + 16u, dq_offset(q5_hi(q, qh, w % 4u), d, 16));
#endif
#ifdef FMT_Q5_1
    let b = row * p.blocks_per_row + w / 4u;
    let qh = scales[q5_1_qh_word(b)];
    let dm = unpack2x16float(scales[q5_1_dm_word(b)]);
    let e0 = o + 32u * (w / 4u) + 4u * (w % 4u);
    put4(e0, dq_affine(q5_lo(q, qh, w % 4u), dm));
    put4(e0 + 16u, dq_affine(q5_hi(q, qh, w % 4u), dm));
#endif
#ifdef FMT_Q4_K
    embed_k45(q, row, w, o, Q4K_SCALE_WORDS, false);
#endif
#ifdef FMT_Q5_K
    embed_k45(q, row, w, o, Q5K_SCALE_WORDS, true);
#endif
#ifdef FMT_Q6_K
    // 48 words per super-block, 12 per pair: 8 nibble words, then 4 words of top bits.
    let bb = w / Q6K_QS_WORDS;
    let pw = w % Q6K_QS_WORDS;
    let j = pw / 12u;
    let r = pw % 12u;
    if (r >= 8u) { return; }
    let v = q6_top(qs[row * p.words_per_row + w - r + 8u + r % 4u], r / 4u);
    let bi = row * p.blocks_per_row + bb;
    let d = f16_of(scales[q6k_d_word(bi)], bi);
    let l0 = 4u * r;
    let e0 = o + 256u * bb + 64u * j + l0;
    // Elements 64j + l0 + i (low nibbles) and +32 (high): scales (64j + l0) / 16 and +2.
    let sw = scales[q6k_scales_word(bi, j)];
    put4(e0, dq_offset(q6_lo(q, v), d * q6_scale(sw, l0 / 16u), 32));
    put4(e0 + 32u, dq_offset(q6_hi(q, v), d * q6_scale(sw, l0 / 16u + 2u), 32));
#endif
}

// Q4_K / Q5_K (swpb: scale words per super-block; fifth: Q5_K's fifth bits): qs word w of a
// row is byte group l0 of pair j of super-block w / 32: elements 64j + l0 + i (sub-block 2j,
// low nibbles) and +32 (sub-block 2j + 1, high nibbles).
fn embed_k45(q: u32, row: u32, w: u32, o: u32, swpb: u32, fifth: bool) {
    let bb = w / Q4K_QS_WORDS;
    let j = (w % Q4K_QS_WORDS) / 8u;
    let l0 = 4u * (w % 8u);
    let hb = (row * p.blocks_per_row + bb) * swpb;
    let hdr = vec4<u32>(scales[hb], scales[hb + 1u], scales[hb + 2u], scales[hb + 3u]);
    var qh = vec2<u32>(0u);
    // Q5_K: the fifth bits of sub-blocks 2j and 2j + 1, after the header.
    let qw = hb + Q4K_SCALE_WORDS + 2u * j;
    if (fifth) { qh = vec2<u32>(scales[qw], scales[qw + 1u]); }
    let e0 = o + 256u * bb + 64u * j + l0;
    put4(e0, dq_kquant(with_fifth(lo_nibbles(q), qh.x, l0), k4_sub_affine(hdr, 2u * j)));
    put4(e0 + 32u, dq_kquant(with_fifth(hi_nibbles(q), qh.y, l0), k4_sub_affine(hdr, 2u * j + 1u)));
}
