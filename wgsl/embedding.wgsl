// Embedding gather: out[t] = table[ids[ids_offset + t] - row_offset], dequantised to f32.
// The table is in the repacked planes of src/quant (one FMT_* define picks the loader). One
// invocation per u32 word of `qs`: a word holds 1 (f32), 2 (f16/bf16), 4 (Q8_0) or 8 (Q4_0/Q4_1)
// elements, so every invocation does the same small amount of work and reads are coalesced.
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
}
