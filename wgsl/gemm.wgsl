// Prefill GEMM: out[r][off + j] (+)= sum_k x[r][k] * W[j][k] (+ bias[j]) for m activation rows
// against an n x k weight matrix in the repacked GPU planes (src/quant/mod.rs).
//
// Tiled: each workgroup owns a BM x BN output tile (rows of x by rows of W), walks k in steps
// of BK = 32 (one quantisation block per weight row), and stages both operands in workgroup
// memory as f32. The weight loader dequantises while it stages, so every weight is decoded
// once per tile and reused by BM activation rows. Each invocation accumulates TM x TN = 4 x 4
// outputs in f32 registers; its rows are ty + WG_M*i and its columns tx + WG_N*j, so the
// invocations of a subgroup read consecutive workgroup words in the inner loop (no bank
// conflicts) and write consecutive output columns.
//
// Both tiles are stored k-major (tile[kk][row]) so the inner loop reads them contiguously;
// the loaders write them transposed, and a row stride of BM + PAD (PAD = 1) spreads those
// writes over the banks. PAD = 0 is for devices with only 16 KiB of workgroup storage:
// 64x64x32 f32 tiles fill it exactly, at the price of conflicting stores.
//
// Formats (one define): FMT_F32, FMT_F16, FMT_BF16, FMT_Q8_0, FMT_Q4_0, FMT_Q4_1, FMT_Q5_0,
// FMT_Q5_1, FMT_Q4_K, FMT_Q5_K, FMT_Q6_K (a k step is one 32-element block, or one sub-block
// of a 256-element K-quant super-block). BIAS adds an f32[n] bias binding. Accumulation is
// always f32.
//
// COOP (the native Vulkan variant, docs/kernels.md): the same loaders stage both tiles as f16 in
// workgroup memory and cooperative matrices (tensor cores on NVIDIA) do the products, f16
// operands with f32 accumulators. Entry `gemm_coop`: 256 invocations in 8 subgroups of 32,
// a 128 x 128 output tile, each subgroup a 32 x 64 block as 2 x 4 16x16 accumulators, k in
// steps of 32. Staging is double-buffered: the next k step is loaded into one pair of tiles
// while the subgroups multiply the other, one barrier per step. The tiles are arrays of
// vec4<f16> (one 8-byte store per four values instead of four 2-byte ones); the cooperative
// loads take the row stride in those vec4 elements. The
// accumulators go through workgroup memory on the way out so the epilogue (bounds, bias,
// accumulate, strided output) is the portable kernel's. Needs EXPERIMENTAL_COOPERATIVE_MATRIX
// with f16 16x16x16 -> f32 and subgroups of exactly 32. COOP_XH (with COOP): x holds the rows
// already in f16 (gemm_input.wgsl), four per vec4<f16>, staged as they are: half the bytes of
// the f32 rows, which every column tile re-reads (7x the weight bytes per step for Q4_0).
// COOP_XDIRECT (with COOP_XH): no activation tile at all; each subgroup loads its A fragments
// straight from the f16 rows in memory (the caches serve the re-reads), so a k step stages
// only the weights. x must then hold whole 128-row tiles (rows past m are read, and their
// results discarded). COOP_BK64 (with COOP_XDIRECT): k steps of 64, which needs k a multiple
// of 64. COOP_WPIPE (with COOP_XDIRECT): each step's weight loads are issued before the
// products of the previous step and decoded into the tile after them (fetch_w / decode_w).

#ifdef COOP
enable f16;
enable wgpu_cooperative_matrix;
#endif

#include "dequant"

struct Params {
    m: u32,
    n: u32,
    k: u32,
    out_stride: u32,
    out_offset: u32,
    // 1: out += result (residual add); 0: out = result.
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
}

// Invocations along the output rows (m) and columns (n); tile = 4 * that.
override WG_M: u32 = 16u;
override WG_N: u32 = 16u;
override PAD: u32 = 1u;

const TM: u32 = 4u;
const TN: u32 = 4u;
const BK: u32 = 32u;
override TPB: u32 = WG_M * WG_N;
override BM: u32 = WG_M * TM;
override BN: u32 = WG_N * TN;
override XS: u32 = BM + PAD;
override WS: u32 = BN + PAD;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qs: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
// COOP_XH alone (the portable side of its specs) changes nothing.
#ifdef COOP
#ifdef COOP_XH
#define X_HALF
#endif
#endif
#ifdef X_HALF
#ifdef COOP_XDIRECT
#define X_DIRECT
#endif
@group(0) @binding(3) var<storage, read> x: array<vec4<f16>>;
#else
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
#endif
#ifdef BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#endif

#ifdef COOP
// Workgroup tile CBM x CBN (activation rows x weight rows) of 256 invocations = 8 subgroups
// of 32 in a 4 x 2 arrangement; each subgroup owns a 32 x 64 block as 2 x 4 accumulators
// (c<i><j> below, written out: an array of cooperative matrices indexed in a loop was spilled
// to memory by NVIDIA's compiler, 9x slower). Rows of both f16 tiles are padded by 8 halves
// (16 bytes) so the cooperative loads of consecutive rows spread over the banks.
const CBM: u32 = 128u;
const CBN: u32 = 128u;
const CTPB: u32 = 256u;
// k per step of the cooperative kernel: one loader step (BK), or with COOP_BK64 (only with
// X_DIRECT, whose freed activation tiles make room) two, half the barriers per k.
#ifdef X_DIRECT
#ifdef COOP_BK64
#define CBK64
#endif
#endif
#ifdef X_DIRECT
#ifdef COOP_WPIPE
#define WPIPE
#endif
#endif
#ifdef CBK64
const CBK: u32 = 64u;
#else
const CBK: u32 = BK;
#endif
// Row stride of the tiles: CBK + 8 halves, in vec4<f16> elements.
const CW2: u32 = (CBK + 8u) / 4u;
// vec4 elements of one activation and one weight tile.
const XT: u32 = CBM * CW2;
const WT: u32 = CBN * CW2;
const F16_MAX: f32 = 65504.0;
#ifndef X_DIRECT
// Two activation tiles, row-major: tile_x2[buf * XT + r * CW2 + kk / 4] holds kk .. kk+3.
var<workgroup> tile_x2: array<vec4<f16>, 2u * XT>;
#endif
// Two weight tiles, one weight row per tile row (B in column-major order), same packing.
var<workgroup> tile_w2: array<vec4<f16>, 2u * WT>;
// One 16 x 16 f32 fragment per subgroup on its way out.
var<workgroup> stage: array<f32, 8u * 256u>;
// Offset of the weight tile the loaders are staging into.
var<private> wbuf: u32;
// k offset (in the tile row) of the loader step being staged: 0, or 32 for the second
// loader step of a 64-wide step.
var<private> wkk: u32;

// Four values as f16, clamped (an f32 beyond the f16 range would otherwise become inf).
fn pack4(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(v, vec4<f32>(-F16_MAX), vec4<f32>(F16_MAX)));
}

// Four consecutive weights of tile column `col`, from k offset kk (a multiple of 4) on.
fn put_w4(kk: u32, col: u32, v: vec4<f32>) {
    tile_w2[wbuf + col * CW2 + (wkk + kk) / 4u] = pack4(v);
}

// Writes fragment (fi, fj) of subgroup `sg` through its staging slot with the portable
// epilogue. Called the same number of times by every subgroup (uniform barriers).
fn store_fragment(c: coop_mat16x16<f32, C>, sg: u32, lane: u32, row: u32, col: u32) {
    let slot = sg * 256u;
    coopStoreT(c, &stage[slot], 16u);
    workgroupBarrier();
    for (var e = lane; e < 256u; e += 32u) {
        store_out(row + e / 16u, col + e % 16u, stage[slot + e]);
    }
    workgroupBarrier();
}
#else
var<workgroup> tile_x: array<f32, BK * XS>;
var<workgroup> tile_w: array<f32, BK * WS>;

// Four consecutive weights of tile column `col`, from row kk on.
fn put_w4(kk: u32, col: u32, v: vec4<f32>) {
    tile_w[kk * WS + col] = v.x;
    tile_w[(kk + 1u) * WS + col] = v.y;
    tile_w[(kk + 2u) * WS + col] = v.z;
    tile_w[(kk + 3u) * WS + col] = v.w;
}
#endif

// The words one load_w call reads, fetched (fetch_w: memory loads only, zero outside the
// matrix) apart from their decoding (decode_w: arithmetic and the tile stores), so the
// cooperative kernel can issue the next step's loads before its products and store them after.
// Per format: q holds the weight words, s the scale words (and a block index whose parity picks
// an f16 half).
struct WRaw {
    q: vec4<u32>,
    s: vec4<u32>,
}

// K-quant sub-block s = (k0 / 32) % 8 of its super-block: the low (even s) or high nibbles of
// pair s / 2.
fn kq_sub(k0: u32) -> u32 {
    return (k0 / 32u) % 8u;
}

// Q4_K (swpb 4) and Q5_K (swpb 12, fifth bits): q.xy the nibble words, q.z the fifth bits of
// the sub-block (Q5_K), s the super-block header.
fn fetch_k45(wrow: u32, k0: u32, part: u32, swpb: u32, fifth: bool) -> WRaw {
    var r = WRaw(vec4<u32>(0u), vec4<u32>(0u));
    if (wrow < p.n) {
        let s = kq_sub(k0);
        let bb = wrow * (p.k / 256u) + k0 / 256u;
        let pw = bb * Q4K_QS_WORDS + 8u * (s / 2u) + 2u * part;
        r.q.x = qs[pw];
        r.q.y = qs[pw + 1u];
        let hb = bb * swpb;
        r.s = vec4<u32>(scales[hb], scales[hb + 1u], scales[hb + 2u], scales[hb + 3u]);
        if (fifth) { r.q.z = scales[hb + Q4K_SCALE_WORDS + s]; }
    }
    return r;
}

fn decode_k45(r: WRaw, col: u32, k0: u32, part: u32) {
    let s = kq_sub(k0);
    let ab = k4_sub_affine(r.s, s);
    let shift = 4u * (s % 2u);
    for (var h = 0u; h < 2u; h++) {
        let l = 8u * part + 4u * h;
        put_w4(l, col, dq_kquant(with_fifth(lo_nibbles(r.q[h] >> shift), r.q.z, l), ab));
    }
}

// The words of 8 weights of weight row `wrow` for k0..k0+BK, part `part` of 4.
// Float formats: k0 + 8*part .. +8 (k is a multiple of 4, so each half is whole or absent).
// Q8_0: bytes 8*part .. +8 of the block. Q4/Q5: qs word `part`, elements 4*part+b and +16.
// K-quants: sub-block elements 8*part .. +8, nibble words 2*part and 2*part+1 of its pair.
fn fetch_w(wrow: u32, k0: u32, part: u32) -> WRaw {
    var r = WRaw(vec4<u32>(0u), vec4<u32>(0u));
    let inside = wrow < p.n;
#ifdef FMT_F32
    // q: k0 + 8*part .. +4, s: the next four.
    if (inside && k0 + 8u * part < p.k) {
        let b = wrow * p.k + k0 + 8u * part;
        r.q = vec4<u32>(qs[b], qs[b + 1u], qs[b + 2u], qs[b + 3u]);
    }
    if (inside && k0 + 8u * part + 4u < p.k) {
        let b = wrow * p.k + k0 + 8u * part + 4u;
        r.s = vec4<u32>(qs[b], qs[b + 1u], qs[b + 2u], qs[b + 3u]);
    }
#endif
#ifdef FMT_F16
    // q.xy: k0 + 8*part .. +4, q.zw: the next four (two halves per word).
    for (var h = 0u; h < 2u; h++) {
        let kk = 8u * part + 4u * h;
        if (inside && k0 + kk < p.k) {
            let base = (wrow * p.k + k0 + kk) / 2u;
            r.q[2u * h] = qs[base];
            r.q[2u * h + 1u] = qs[base + 1u];
        }
    }
#endif
#ifdef FMT_BF16
    for (var h = 0u; h < 2u; h++) {
        let kk = 8u * part + 4u * h;
        if (inside && k0 + kk < p.k) {
            let base = (wrow * p.k + k0 + kk) / 2u;
            r.q[2u * h] = qs[base];
            r.q[2u * h + 1u] = qs[base + 1u];
        }
    }
#endif
#ifdef FMT_Q8_0
    if (inside) {
        let b = wrow * (p.k / 32u) + k0 / 32u;
        r.q.x = qs[b * 8u + 2u * part];
        r.q.y = qs[b * 8u + 2u * part + 1u];
        r.s.x = scales[q8_d_word(b)];
        r.s.y = b;
    }
#endif
#ifdef FMT_Q4_0
    if (inside) {
        let b = wrow * (p.k / 32u) + k0 / 32u;
        r.q.x = qs[b * 4u + part];
        r.s.x = scales[q8_d_word(b)];
        r.s.y = b;
    }
#endif
#ifdef FMT_Q4_1
    if (inside) {
        let b = wrow * (p.k / 32u) + k0 / 32u;
        r.q.x = qs[b * 4u + part];
        r.s.x = scales[b];
    }
#endif
#ifdef FMT_Q5_0
    if (inside) {
        let b = wrow * (p.k / 32u) + k0 / 32u;
        r.q.x = qs[b * 4u + part];
        r.q.y = scales[q5_0_qh_word(b)];
        r.s.x = scales[q5_0_d_word(b)];
        r.s.y = b;
    }
#endif
#ifdef FMT_Q5_1
    if (inside) {
        let b = wrow * (p.k / 32u) + k0 / 32u;
        r.q.x = qs[b * 4u + part];
        r.q.y = scales[q5_1_qh_word(b)];
        r.s.x = scales[q5_1_dm_word(b)];
    }
#endif
#ifdef FMT_Q4_K
    r = fetch_k45(wrow, k0, part, Q4K_SCALE_WORDS, false);
#endif
#ifdef FMT_Q5_K
    r = fetch_k45(wrow, k0, part, Q5K_SCALE_WORDS, true);
#endif
#ifdef FMT_Q6_K
    // Sub-block s of super-block bb: pair s / 2 (12 qs words), low (even s) or high nibbles.
    // q.xy the nibble words 2*part and +1, q.zw their top-bit words, s.x the d word, s.y the
    // scales word of elements 16*(2s + part/2) .. +16, s.z bb.
    if (inside) {
        let s = kq_sub(k0);
        let bb = wrow * (p.k / 256u) + k0 / 256u;
        let pw = bb * Q6K_QS_WORDS + 12u * (s / 2u);
        r.q.x = qs[pw + 2u * part];
        r.q.y = qs[pw + 2u * part + 1u];
        // Nibble words w = 2*part + h; their top bits: word 8 + w % 4.
        r.q.z = qs[pw + 8u + (2u * part) % 4u];
        r.q.w = qs[pw + 8u + (2u * part + 1u) % 4u];
        let si = 2u * s + part / 2u;
        r.s.x = scales[q6k_d_word(bb)];
        r.s.y = scales[q6k_scales_word(bb, si / 4u)];
        r.s.z = bb;
    }
#endif
    return r;
}

// Decodes fetch_w's words into tile column `col` (put_w4); zero words give zero weights.
fn decode_w(r: WRaw, col: u32, k0: u32, part: u32) {
#ifdef FMT_F32
    put_w4(8u * part, col, bitcast<vec4<f32>>(r.q));
    put_w4(8u * part + 4u, col, bitcast<vec4<f32>>(r.s));
#endif
#ifdef FMT_F16
    put_w4(8u * part, col, vec4<f32>(unpack2x16float(r.q.x), unpack2x16float(r.q.y)));
    put_w4(8u * part + 4u, col, vec4<f32>(unpack2x16float(r.q.z), unpack2x16float(r.q.w)));
#endif
#ifdef FMT_BF16
    put_w4(8u * part, col, vec4<f32>(bf16x2(r.q.x), bf16x2(r.q.y)));
    put_w4(8u * part + 4u, col, vec4<f32>(bf16x2(r.q.z), bf16x2(r.q.w)));
#endif
#ifdef FMT_Q8_0
    let d = f16_of(r.s.x, r.s.y);
    put_w4(8u * part, col, d * i8x4(r.q.x));
    put_w4(8u * part + 4u, col, d * i8x4(r.q.y));
#endif
#ifdef FMT_Q4_0
    let d = f16_of(r.s.x, r.s.y);
    put_w4(4u * part, col, dq_offset(lo_nibbles(r.q.x), d, 8));
    put_w4(4u * part + 16u, col, dq_offset(hi_nibbles(r.q.x), d, 8));
#endif
#ifdef FMT_Q4_1
    let dm = unpack2x16float(r.s.x);
    put_w4(4u * part, col, dq_affine(lo_nibbles(r.q.x), dm));
    put_w4(4u * part + 16u, col, dq_affine(hi_nibbles(r.q.x), dm));
#endif
#ifdef FMT_Q5_0
    let d = f16_of(r.s.x, r.s.y);
    put_w4(4u * part, col, dq_offset(q5_lo(r.q.x, r.q.y, part), d, 16));
    put_w4(4u * part + 16u, col, dq_offset(q5_hi(r.q.x, r.q.y, part), d, 16));
#endif
#ifdef FMT_Q5_1
    let dm = unpack2x16float(r.s.x);
    put_w4(4u * part, col, dq_affine(q5_lo(r.q.x, r.q.y, part), dm));
    put_w4(4u * part + 16u, col, dq_affine(q5_hi(r.q.x, r.q.y, part), dm));
#endif
#ifdef FMT_Q4_K
    decode_k45(r, col, k0, part);
#endif
#ifdef FMT_Q5_K
    decode_k45(r, col, k0, part);
#endif
#ifdef FMT_Q6_K
    let s = kq_sub(k0);
    let si = 2u * s + part / 2u;
    let sd = f16_of(r.s.x, r.s.z) * q6_scale(r.s.y, si);
    // The high nibbles (odd s) are the low ones shifted down by 4, in both words.
    let shift = 4u * (s % 2u);
    for (var h = 0u; h < 2u; h++) {
        let v = q6_top(r.q[2u + h], (2u * part + h) / 4u);
        put_w4(8u * part + 4u * h, col, dq_offset(q6_lo(r.q[h] >> shift, v >> shift), sd, 32));
    }
#endif
}

// Stages 8 weights of weight row `wrow` (tile column `col`) for k0..k0+BK: part `part` of 4.
fn load_w(wrow: u32, col: u32, k0: u32, part: u32) {
    decode_w(fetch_w(wrow, k0, part), col, k0, part);
}

#ifdef X_HALF
// Activations x[row][k0 + 4q .. +4] as f16, zero past the rows or the end of k.
fn load_xh(row: u32, k0: u32, q: u32) -> vec4<f16> {
    if (row < p.m && k0 + 4u * q < p.k) {
        return x[row * (p.k / 4u) + k0 / 4u + q];
    }
    return vec4<f16>(0.0);
}
#else
// Activations x[row][k0 + 4q .. +4], zero past the rows or the end of k.
fn load_x(row: u32, k0: u32, q: u32) -> vec4<f32> {
    if (row < p.m && k0 + 4u * q < p.k) {
        return x[row * (p.k / 4u) + k0 / 4u + q];
    }
    return vec4<f32>(0.0);
}
#endif

// Stores one result: bounds, bias and accumulate exactly as the portable kernel.
fn store_out(row: u32, c: u32, acc: f32) {
    if (row >= p.m || c >= p.n) { return; }
    var v = acc;
#ifdef BIAS
    v += bias[c];
#endif
    let o = row * p.out_stride + p.out_offset + c;
    if (p.accumulate != 0u) { v += out[o]; }
    out[o] = v;
}

#ifdef COOP
// Stages k step k0 into tile pair `buf`: CBM activation rows x 8 vec4 (f16-rounded), and CBN
// weight rows x 4 parts of 8 values dequantised by the shared loaders.
fn stage_step(row0: u32, col0: u32, k0: u32, buf: u32, lid: u32) {
#ifndef X_DIRECT
    for (var i = lid; i < CBM * (BK / 4u); i += CTPB) {
        let r = i / (BK / 4u);
        let q = i % (BK / 4u);
#ifdef X_HALF
        tile_x2[buf * XT + r * CW2 + q] = load_xh(row0 + r, k0, q);
#else
        tile_x2[buf * XT + r * CW2 + q] = pack4(load_x(row0 + r, k0, q));
#endif
    }
#endif
    wbuf = buf * WT;
    for (var h = 0u; h < CBK / BK; h++) {
        wkk = h * BK;
        for (var i = lid; i < CBN * 4u; i += CTPB) {
            let c = i / 4u;
            load_w(col0 + c, c, k0 + h * BK, i % 4u);
        }
    }
}

#ifdef WPIPE
// Loader calls per invocation per k step.
const NRAW: u32 = (CBK / BK) * (CBN * 4u / CTPB);

// The memory loads of the weights of k step k0 (stage_step's, without the stores).
fn fetch_step(col0: u32, k0: u32, lid: u32) -> array<WRaw, NRAW> {
    var r: array<WRaw, NRAW>;
    for (var j = 0u; j < NRAW; j++) {
        let i = lid + (j % (CBN * 4u / CTPB)) * CTPB;
        r[j] = fetch_w(col0 + i / 4u, k0 + (j / (CBN * 4u / CTPB)) * BK, i % 4u);
    }
    return r;
}

// Decodes fetch_step's words into weight tile `buf`.
fn store_step(r: array<WRaw, NRAW>, k0: u32, buf: u32, lid: u32) {
    wbuf = buf * WT;
    for (var j = 0u; j < NRAW; j++) {
        let i = lid + (j % (CBN * 4u / CTPB)) * CTPB;
        let h = j / (CBN * 4u / CTPB);
        wkk = h * BK;
        decode_w(r[j], i / 4u, k0 + h * BK, i % 4u);
    }
}
#endif

@compute @workgroup_size(256)
fn gemm_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let col0 = wid.x * CBN;
    let row0 = wid.y * CBM;
    // Subgroup sg owns tile rows sr..sr+32 and columns sc..sc+64.
    let sr = (sg / 2u) * 32u;
    let sc = (sg % 2u) * 64u;
    var c00: coop_mat16x16<f32, C>;
    var c01: coop_mat16x16<f32, C>;
    var c02: coop_mat16x16<f32, C>;
    var c03: coop_mat16x16<f32, C>;
    var c10: coop_mat16x16<f32, C>;
    var c11: coop_mat16x16<f32, C>;
    var c12: coop_mat16x16<f32, C>;
    var c13: coop_mat16x16<f32, C>;

    stage_step(row0, col0, 0u, 0u, lid);
    workgroupBarrier();
    var buf = 0u;
    for (var k0 = 0u; k0 < p.k; k0 += CBK) {
        // The next step goes into the other pair while this one is multiplied; the barrier
        // at the end of the previous step freed it.
        let more = k0 + CBK < p.k;
#ifdef WPIPE
        // Loads now, decoding and stores after the products: the loads are in flight while
        // the matrix units work.
        var raws: array<WRaw, NRAW>;
        if (more) {
            raws = fetch_step(col0, k0 + CBK, lid);
        }
#else
        if (more) {
            stage_step(row0, col0, k0 + CBK, 1u - buf, lid);
        }
#endif
        let wb = buf * WT + sc * CW2;
#ifdef X_DIRECT
        let xs = p.k / 4u;
        let xa = (row0 + sr) * xs + k0 / 4u;
#else
        let xs = CW2;
        let xa = buf * XT + sr * CW2;
#endif
        for (var kq = 0u; kq < CBK / 4u; kq += 4u) {
#ifdef X_DIRECT
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&x[xa + kq], xs);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&x[xa + 16u * xs + kq], xs);
#else
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&tile_x2[xa + kq], xs);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&tile_x2[xa + 16u * xs + kq], xs);
#endif
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&tile_w2[wb + kq], CW2);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&tile_w2[wb + 16u * CW2 + kq], CW2);
            let b2 = coopLoad<coop_mat16x16<f16, B>>(&tile_w2[wb + 32u * CW2 + kq], CW2);
            let b3 = coopLoad<coop_mat16x16<f16, B>>(&tile_w2[wb + 48u * CW2 + kq], CW2);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
            c12 = coopMultiplyAdd(a1, b2, c12);
            c13 = coopMultiplyAdd(a1, b3, c13);
        }
#ifdef WPIPE
        if (more) {
            store_step(raws, k0 + CBK, 1u - buf, lid);
        }
#endif
        workgroupBarrier();
        buf = 1u - buf;
    }

    let r0 = row0 + sr;
    let c0 = col0 + sc;
    store_fragment(c00, sg, lane, r0 + 0u, c0 + 0u);
    store_fragment(c01, sg, lane, r0 + 0u, c0 + 16u);
    store_fragment(c02, sg, lane, r0 + 0u, c0 + 32u);
    store_fragment(c03, sg, lane, r0 + 0u, c0 + 48u);
    store_fragment(c10, sg, lane, r0 + 16u, c0 + 0u);
    store_fragment(c11, sg, lane, r0 + 16u, c0 + 16u);
    store_fragment(c12, sg, lane, r0 + 16u, c0 + 32u);
    store_fragment(c13, sg, lane, r0 + 16u, c0 + 48u);
}
#else
@compute @workgroup_size(TPB)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col0 = wid.x * BN;
    let row0 = wid.y * BM;
    let tx = lid % WG_N;
    let ty = lid / WG_N;

    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < TM; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Activations: BM rows x 8 vec4, one vec4 per step (consecutive invocations walk k).
        for (var i = lid; i < BM * (BK / 4u); i += TPB) {
            let r = i / (BK / 4u);
            let q = i % (BK / 4u);
            let v = load_x(row0 + r, k0, q);
            let kk = 4u * q;
            tile_x[kk * XS + r] = v.x;
            tile_x[(kk + 1u) * XS + r] = v.y;
            tile_x[(kk + 2u) * XS + r] = v.z;
            tile_x[(kk + 3u) * XS + r] = v.w;
        }
        // Weights: BN rows x 4 parts of 8 values.
        for (var i = lid; i < BN * 4u; i += TPB) {
            let c = i / 4u;
            load_w(col0 + c, c, k0, i % 4u);
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            let xb = kk * XS + ty;
            let wb = kk * WS + tx;
            let wv = vec4<f32>(
                tile_w[wb],
                tile_w[wb + WG_N],
                tile_w[wb + 2u * WG_N],
                tile_w[wb + 3u * WG_N],
            );
            for (var i = 0u; i < TM; i++) {
                acc[i] += tile_x[xb + i * WG_M] * wv;
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            store_out(row0 + ty + i * WG_M, col0 + tx + j * WG_N, acc[i][j]);
        }
    }
}
#endif
