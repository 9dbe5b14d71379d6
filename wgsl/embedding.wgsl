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

#include "kquant"

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qs: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// The f16 scale `d` of block b (Q8_0/Q4_0: two blocks per word, block 2i in the low half).
fn scale_d(b: u32) -> f32 {
    let pair = unpack2x16float(scales[b >> 1u]);
    return select(pair.x, pair.y, (b & 1u) == 1u);
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
    out[o + 2u * w] = bitcast<f32>(q << 16u);
    out[o + 2u * w + 1u] = bitcast<f32>(q & 0xffff0000u);
#endif
#ifdef FMT_Q8_0
    // 8 words per block; word w holds elements 4w..4w+3 of the row.
    let d = scale_d(row * p.blocks_per_row + w / 8u);
    let qi = bitcast<i32>(q);
    for (var j = 0u; j < 4u; j++) {
        out[o + 4u * w + j] = d * f32(extractBits(qi, 8u * j, 8u));
    }
#endif
#ifdef FMT_Q4_0
    // 4 words per block; byte j of word w holds element e0+j in its low nibble, e0+j+16 in its high.
    let b = w / 4u;
    let d = scale_d(row * p.blocks_per_row + b);
    let e0 = o + 32u * b + 4u * (w % 4u);
    for (var j = 0u; j < 4u; j++) {
        let lo = i32(extractBits(q, 8u * j, 4u));
        let hi = i32(extractBits(q, 8u * j + 4u, 4u));
        out[e0 + j] = d * f32(lo - 8);
        out[e0 + j + 16u] = d * f32(hi - 8);
    }
#endif
#ifdef FMT_Q4_1
    // As Q4_0, with one word per block of scales: d in the low half, m in the high half.
    let b = w / 4u;
    let dm = unpack2x16float(scales[row * p.blocks_per_row + b]);
    let e0 = o + 32u * b + 4u * (w % 4u);
    for (var j = 0u; j < 4u; j++) {
        out[e0 + j] = dm.x * f32(extractBits(q, 8u * j, 4u)) + dm.y;
        out[e0 + j + 16u] = dm.x * f32(extractBits(q, 8u * j + 4u, 4u)) + dm.y;
    }
#endif
#ifdef FMT_Q5_0
    // As Q4_0 plus fifth bits; scales per pair of blocks: qh(2i), qh(2i+1), d(2i) | d(2i+1) << 16.
    let b = w / 4u;
    let bi = row * p.blocks_per_row + b;
    let base = 3u * (bi / 2u);
    let qh = scales[base + bi % 2u];
    let d = unpack2x16float(scales[base + 2u])[bi % 2u];
    let l0 = 4u * (w % 4u);
    let e0 = o + 32u * b + l0;
    for (var j = 0u; j < 4u; j++) {
        let lo = extractBits(q, 8u * j, 4u) | (extractBits(qh, l0 + j, 1u) << 4u);
        let hi = extractBits(q, 8u * j + 4u, 4u) | (extractBits(qh, l0 + 16u + j, 1u) << 4u);
        out[e0 + j] = d * f32(i32(lo) - 16);
        out[e0 + j + 16u] = d * f32(i32(hi) - 16);
    }
#endif
#ifdef FMT_Q5_1
    // Two scale words per block: qh, then d | m << 16.
    let b = w / 4u;
    let bi = row * p.blocks_per_row + b;
    let qh = scales[2u * bi];
    let dm = unpack2x16float(scales[2u * bi + 1u]);
    let l0 = 4u * (w % 4u);
    let e0 = o + 32u * b + l0;
    for (var j = 0u; j < 4u; j++) {
        let lo = extractBits(q, 8u * j, 4u) | (extractBits(qh, l0 + j, 1u) << 4u);
        let hi = extractBits(q, 8u * j + 4u, 4u) | (extractBits(qh, l0 + 16u + j, 1u) << 4u);
        out[e0 + j] = dm.x * f32(lo) + dm.y;
        out[e0 + j + 16u] = dm.x * f32(hi) + dm.y;
    }
#endif
#ifdef FMT_Q4_K
    embed_k45(q, row, w, o, 4u, false);
#endif
#ifdef FMT_Q5_K
    embed_k45(q, row, w, o, 12u, true);
#endif
#ifdef FMT_Q6_K
    // 48 words per super-block, 12 per pair: 8 nibble words, then 4 words of top bits.
    let bb = w / 48u;
    let pw = w % 48u;
    let j = pw / 12u;
    let r = pw % 12u;
    if (r >= 8u) { return; }
    let top = qs[row * p.words_per_row + w - r + 8u + r % 4u];
    let bi = row * p.blocks_per_row + bb;
    let base = 9u * (bi / 2u);
    let d = unpack2x16float(scales[base + 8u])[bi % 2u];
    let l0 = 4u * r;
    let e0 = o + 256u * bb + 64u * j + l0;
    // Elements 64j + l0 + i (low nibbles) and +32 (high): scales (64j + l0) / 16 and +2.
    let sw = scales[base + 4u * (bi % 2u) + j];
    let s_lo = d * q6_scale(sw, l0 / 16u);
    let s_hi = d * q6_scale(sw, l0 / 16u + 2u);
    let tshift = 2u * (r / 4u);
    for (var i = 0u; i < 4u; i++) {
        let lo = extractBits(q, 8u * i, 4u) | (extractBits(top, 8u * i + tshift, 2u) << 4u);
        let hi = extractBits(q, 8u * i + 4u, 4u) | (extractBits(top, 8u * i + tshift + 4u, 2u) << 4u);
        out[e0 + i] = s_lo * f32(i32(lo) - 32);
        out[e0 + i + 32u] = s_hi * f32(i32(hi) - 32);
    }
#endif
}

// Q4_K (swpb 4) / Q5_K (swpb 12, with fifth bits): qs word w of a row is byte group l0 of pair
// j of super-block w / 32: elements 64j + l0 + i (sub-block 2j, low nibbles) and +32
// (sub-block 2j + 1, high nibbles); x = d*sc*q - dmin*m.
fn embed_k45(q: u32, row: u32, w: u32, o: u32, swpb: u32, fifth: bool) {
    let bb = w / 32u;
    let j = (w % 32u) / 8u;
    let l0 = 4u * (w % 8u);
    let hb = (row * p.blocks_per_row + bb) * swpb;
    let hdr = vec4<u32>(scales[hb], scales[hb + 1u], scales[hb + 2u], scales[hb + 3u]);
    var qh = vec2<u32>(0u);
    if (fifth) { qh = vec2<u32>(scales[hb + 4u + 2u * j], scales[hb + 5u + 2u * j]); }
    let d = unpack2x16float(hdr.x);
    let a = k4_scale_min(hdr, 2u * j);
    let b = k4_scale_min(hdr, 2u * j + 1u);
    let e0 = o + 256u * bb + 64u * j + l0;
    for (var i = 0u; i < 4u; i++) {
        let lo = extractBits(q, 8u * i, 4u) | (extractBits(qh.x, l0 + i, 1u) << 4u);
        let hi = extractBits(q, 8u * i + 4u, 4u) | (extractBits(qh.y, l0 + i, 1u) << 4u);
        out[e0 + i] = (d.x * a.x) * f32(lo) - d.y * a.y;
        out[e0 + i + 32u] = (d.x * b.x) * f32(hi) - d.y * b.y;
    }
}
