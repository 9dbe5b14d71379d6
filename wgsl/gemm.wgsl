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
// Formats (one define): FMT_F32, FMT_F16, FMT_BF16, FMT_Q8_0, FMT_Q4_0, FMT_Q4_1.
// BIAS adds an f32[n] bias binding. Accumulation is always f32.

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
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
#ifdef BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#endif

var<workgroup> tile_x: array<f32, BK * XS>;
var<workgroup> tile_w: array<f32, BK * WS>;

fn put_w(kk: u32, col: u32, v: f32) {
    tile_w[kk * WS + col] = v;
}

// Stages 8 weights of weight row `wrow` (tile column `col`) for k0..k0+BK: part `part` of 4.
// Float formats: k0 + 8*part .. +8 (k is a multiple of 4, so each half is whole or absent).
// Q8_0: bytes 8*part .. +8 of the block. Q4: qs word `part`, elements 4*part+b and +16.
fn load_w(wrow: u32, col: u32, k0: u32, part: u32) {
    let inside = wrow < p.n;
#ifdef FMT_F32
    for (var h = 0u; h < 2u; h++) {
        let kk = 8u * part + 4u * h;
        let ok = inside && k0 + kk < p.k;
        let base = wrow * p.k + k0 + kk;
        for (var e = 0u; e < 4u; e++) {
            var v = 0.0;
            if (ok) { v = bitcast<f32>(qs[base + e]); }
            put_w(kk + e, col, v);
        }
    }
#endif
#ifdef FMT_F16
    for (var h = 0u; h < 2u; h++) {
        let kk = 8u * part + 4u * h;
        var lo = vec2<f32>(0.0);
        var hi = vec2<f32>(0.0);
        if (inside && k0 + kk < p.k) {
            let base = (wrow * p.k + k0 + kk) / 2u;
            lo = unpack2x16float(qs[base]);
            hi = unpack2x16float(qs[base + 1u]);
        }
        put_w(kk, col, lo.x);
        put_w(kk + 1u, col, lo.y);
        put_w(kk + 2u, col, hi.x);
        put_w(kk + 3u, col, hi.y);
    }
#endif
#ifdef FMT_BF16
    for (var h = 0u; h < 2u; h++) {
        let kk = 8u * part + 4u * h;
        var w0 = 0u;
        var w1 = 0u;
        if (inside && k0 + kk < p.k) {
            let base = (wrow * p.k + k0 + kk) / 2u;
            w0 = qs[base];
            w1 = qs[base + 1u];
        }
        // bf16 is the high half of an f32.
        put_w(kk, col, bitcast<f32>(w0 << 16u));
        put_w(kk + 1u, col, bitcast<f32>(w0 & 0xFFFF0000u));
        put_w(kk + 2u, col, bitcast<f32>(w1 << 16u));
        put_w(kk + 3u, col, bitcast<f32>(w1 & 0xFFFF0000u));
    }
#endif
#ifdef FMT_Q8_0
    var w0 = 0u;
    var w1 = 0u;
    var d = 0.0;
    if (inside) {
        let b = wrow * (p.k / 32u) + k0 / 32u;
        w0 = qs[b * 8u + 2u * part];
        w1 = qs[b * 8u + 2u * part + 1u];
        d = unpack2x16float(scales[b / 2u])[b % 2u];
    }
    for (var e = 0u; e < 4u; e++) {
        put_w(8u * part + e, col, d * f32(extractBits(bitcast<i32>(w0), 8u * e, 8u)));
        put_w(8u * part + 4u + e, col, d * f32(extractBits(bitcast<i32>(w1), 8u * e, 8u)));
    }
#endif
#ifdef FMT_Q4_0
    var w = 0u;
    var d = 0.0;
    if (inside) {
        let b = wrow * (p.k / 32u) + k0 / 32u;
        w = qs[b * 4u + part];
        d = unpack2x16float(scales[b / 2u])[b % 2u];
    }
    for (var e = 0u; e < 4u; e++) {
        put_w(4u * part + e, col, d * (f32(extractBits(w, 8u * e, 4u)) - 8.0));
        put_w(4u * part + 16u + e, col, d * (f32(extractBits(w, 8u * e + 4u, 4u)) - 8.0));
    }
#endif
#ifdef FMT_Q4_1
    var w = 0u;
    var dm = vec2<f32>(0.0);
    if (inside) {
        let b = wrow * (p.k / 32u) + k0 / 32u;
        w = qs[b * 4u + part];
        dm = unpack2x16float(scales[b]);
    }
    for (var e = 0u; e < 4u; e++) {
        put_w(4u * part + e, col, dm.x * f32(extractBits(w, 8u * e, 4u)) + dm.y);
        put_w(4u * part + 16u + e, col, dm.x * f32(extractBits(w, 8u * e + 4u, 4u)) + dm.y);
    }
#endif
}

@compute @workgroup_size(TPB)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col0 = wid.x * BN;
    let row0 = wid.y * BM;
    let tx = lid % WG_N;
    let ty = lid / WG_N;
    let k4 = p.k / 4u;

    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < TM; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Activations: BM rows x 8 vec4, one vec4 per step (consecutive invocations walk k).
        for (var i = lid; i < BM * (BK / 4u); i += TPB) {
            let r = i / (BK / 4u);
            let q = i % (BK / 4u);
            let row = row0 + r;
            var v = vec4<f32>(0.0);
            if (row < p.m && k0 + 4u * q < p.k) {
                v = x[row * k4 + k0 / 4u + q];
            }
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
        let row = row0 + ty + i * WG_M;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < TN; j++) {
            let c = col0 + tx + j * WG_N;
            if (c >= p.n) { continue; }
            var v = acc[i][j];
#ifdef BIAS
            v += bias[c];
#endif
            let o = row * p.out_stride + p.out_offset + c;
            if (p.accumulate != 0u) { v += out[o]; }
            out[o] = v;
        }
    }
}
