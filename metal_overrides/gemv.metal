// Native Metal GEMV: the MSL twin of vulkan_overrides/gemv.comp (read the two side by side).
// The portable kernel is wgsl/gemv.wgsl; every kernel here binds exactly the layout of its
// WGSL pipeline (gemv::gemv_spec; [[buffer(i)]] is binding i) and reads the same repacked
// planes (src/quant).
//
// One kernel per (format, kind): gemv_<fmt>, gemv_swiglu_<fmt>, gemv_qkv_<fmt>, each also
// with _norm (the RMSNorm prologue), for fmt q4_0, q4_1, q8_0, q4_k, q5_k, q6_k. The bodies
// are templates over the format and the prologue; the entry points are stamped from one macro
// per kind (at the end of the file). Bindings, the same for every format:
//   gemv:        0 Params, 1 qs, 2 scales, 3 x, 4 bias, 5 out, [6 norm weights]
//   gemv_swiglu: 0 Params, 1 gate qs, 2 gate scales, 3 up qs, 4 up scales, 5 x, 6 out, [7 norm]
//   gemv_qkv:    0 Params, 1..6 q/k/v qs and scales, 7 x, 8..10 q/k/v bias, 11..13 q/k/v out,
//                [14 norm]
// Passthrough shaders get no function constants from wgpu, so the epilogue flags (bit 0 add
// the bias, bit 1 accumulate) and the lanes per row come from Params.
//
// Work split (the host dispatches gemv::native_config): 256 threads = 8 simdgroups of 32,
// cut into row groups of lanes_per_row threads (a power of two, 1..256), one row per group.
// A group's threads stride over the row's units (one qs word each for Q4_0/Q4_1/Q8_0, two
// for the K-quants: see "formats"), four per step. A group of at most 32 threads lies inside
// one simdgroup and is reduced with simd_shuffle_xor; a wider one is whole simdgroups, reduced
// with simd_sum and then across simdgroups in threadgroup memory. Assumes 32-wide simdgroups
// (every Apple GPU).

#include <metal_stdlib>
using namespace metal;

// gemv::GemvParams.
struct Params {
    uint n;             // rows (QKV: of q)
    uint upr;           // units (qs words) per row
    uint out_offset;    // row i goes to out[out_offset + i] (gemv, gemv_swiglu)
    uint eps_bits;      // norm prologue: RMSNorm epsilon, f32 bits
    uint k4;            // k / 4
    uint nk;            // QKV: rows of k
    uint nv;            // QKV: rows of v
    uint flags;         // bit 0: add bias, bit 1: accumulate
    uint lanes_per_row; // power of two, 1..256
    uint pad0;
    uint pad1;
    uint pad2;
};

constexpr constant uint WG = 256;
constexpr constant uint SIMD = 32;
constexpr constant uint NSIMD = WG / SIMD;

// Where a thread is: its workgroup (grid x and y, flattened), index in the threadgroup,
// simdgroup and lane in it.
struct Lane {
    uint wg;
    uint lid;
    uint sg;
    uint sl;
};

// The activations: x, RMS-normalised on load under NORM.
template <bool NORM>
struct Acts {
    device const float4* x;
    device const float4* norm_w;
    float scale;
    float4 at(uint i) const {
        if (NORM) {
            return x[i] * scale * norm_w[i];
        }
        return x[i];
    }
};

// rsqrt(mean(x^2) + eps) for every thread of the threadgroup (uniform control flow).
float norm_scale(constant Params& p, device const float4* x, Lane ln, threadgroup float* sums) {
    float s = 0.0f;
    for (uint i = ln.lid; i < p.k4; i += WG) {
        float4 v = x[i];
        s += dot(v, v);
    }
    s = simd_sum(s);
    if (ln.sl == 0) {
        sums[ln.sg] = s;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float t = 0.0f;
    for (uint i = 0; i < NSIMD; i++) {
        t += sums[i];
    }
    return rsqrt(t / float(4 * p.k4) + as_type<float>(p.eps_bits));
}

// ---- formats ----------------------------------------------------------------------------
// A format F gives: F::X, the activations of one unit (loaded once for every matrix sharing
// them); F::units(upr), the units of a row (Params.upr counts the WGSL's units: one qs word
// for Q4_0/Q4_1/Q8_0, one 64-element pair for the K-quants); F::load_x(a, u), the activations
// of row-relative unit u; F::unit(m, g, xs), the dot product of matrix-wide unit g of m.

// One matrix's planes (bound as words; the K-quants read them in wider loads).
struct Mat {
    device const uint* qs;
    device const uint* sc;
};

// A unit of Q4_0/Q4_1/Q8_0 is one qs word. XU holds its activations (xa, and xb for the high
// nibbles) and, for Q4, their sum (affine identity: a Q4_0 block contributes
// d * (sum(q*x) - 8 * sum(x)), a Q4_1 block d * sum(q*x) + m * sum(x)). F::scale_word(g) is
// the scales word of unit g, F::unit_value(w, s, g, xs) its dot product.
struct XU {
    float4 xa;
    float4 xb;
    float sum;
};

template <typename F>
struct WordUnits {
    typedef XU X;
    static uint units(uint upr) {
        return upr;
    }
    static float unit(Mat m, uint g, thread const XU& xs) {
        return F::unit_value(m.qs[g], m.sc[F::scale_word(g)], g, xs);
    }
};

float4 nib_lo(uint w) {
    return float4((uint4(w) >> uint4(0, 8, 16, 24)) & uint4(15));
}
float4 nib_hi(uint w) {
    return float4((uint4(w) >> uint4(4, 12, 20, 28)) & uint4(15));
}
// The f16 pair of a scales word.
float2 halves(uint s) {
    return float2(as_type<half2>(s));
}

// Word g: four int8, consecutive elements; 8 words per block; two f16 d per scales word.
struct Q8_0 : WordUnits<Q8_0> {
    template <bool NORM>
    static XU load_x(thread const Acts<NORM>& a, uint u) {
        XU r;
        r.xa = a.at(u);
        r.xb = float4(0.0f);
        r.sum = 0.0f;
        return r;
    }
    static uint scale_word(uint g) {
        return g >> 4;
    }
    static float unit_value(uint w, uint s, uint g, thread const XU& xs) {
        int4 q = int4(int(w << 24), int(w << 16), int(w << 8), int(w)) >> int4(24);
        return halves(s)[(g >> 3) & 1] * dot(float4(q), xs.xa);
    }
};

// Word w (0..3) of a block's 16 bytes: elements 4w..4w+3 in its low nibbles, 4w+16..4w+19
// in its high nibbles; 4 words per block.
template <bool NORM>
XU load_x_q4(thread const Acts<NORM>& a, uint u) {
    uint b = (u >> 2) * 8 + (u & 3);
    XU r;
    r.xa = a.at(b);
    r.xb = a.at(b + 4);
    r.sum = dot(r.xa + r.xb, float4(1.0f));
    return r;
}

// Two f16 d per scales word.
struct Q4_0 : WordUnits<Q4_0> {
    template <bool NORM>
    static XU load_x(thread const Acts<NORM>& a, uint u) {
        return load_x_q4(a, u);
    }
    static uint scale_word(uint g) {
        return g >> 3;
    }
    static float unit_value(uint w, uint s, uint g, thread const XU& xs) {
        float d = halves(s)[(g >> 2) & 1];
        return d * (dot(nib_lo(w), xs.xa) + dot(nib_hi(w), xs.xb) - 8.0f * xs.sum);
    }
};

// One scales word per block: d in the low half, m in the high half.
struct Q4_1 : WordUnits<Q4_1> {
    template <bool NORM>
    static XU load_x(thread const Acts<NORM>& a, uint u) {
        return load_x_q4(a, u);
    }
    static uint scale_word(uint g) {
        return g >> 2;
    }
    static float unit_value(uint w, uint s, uint g, thread const XU& xs) {
        float2 dm = halves(s);
        return dm.x * (dot(nib_lo(w), xs.xa) + dot(nib_hi(w), xs.xb)) + dm.y * xs.sum;
    }
};

// K-quants (module doc of src/quant): 256-element super-blocks b, four 64-element pairs j
// each, whose nibble byte l (l < 32) holds element 64j + l in its low nibble and 64j + 32 + l
// in its high one. A unit is two words, v = 0..3 of its pair: nibble words 2v and 2v + 1 (one
// uint2 load), so elements 8v..8v+8 of sub-block 2j (low nibbles) and the same of sub-block
// 2j + 1 (high nibbles); 16 units per super-block, so unit g is super-block g >> 4, pair
// (g >> 2) & 3, v = g & 3. The scales are decoded once per unit (16 elements), and threads
// 4i..4i+3 of a group read one pair's two 128-byte runs of x between them. KXU: the unit's
// two runs of eight activations (a, b) and their sums, for the affine identity (a sub-block
// contributes d*sc*sum(q*x) - dmin*m*sum(x), Q6_K d*sc*(sum(q*x) - 32*sum(x))). Math is f32:
// only the quantised values (bytes, as uchar4) and the f16 d/dmin are narrower, and both
// convert exactly; f16 activations would be rounded to 11 significant bits (up to 4.9e-4
// relative each), against the 1e-4 bound of the tests.
struct KXU {
    float4 a0;
    float4 a1;
    float4 b0;
    float4 b1;
    float2 sum;
};

constexpr constant uint NIB = 0x0F0F0F0F;

template <bool NORM>
KXU load_x_k(thread const Acts<NORM>& a, uint u) {
    uint i = ((u >> 2) << 4) + ((u & 3) << 1);
    KXU r;
    r.a0 = a.at(i);
    r.a1 = a.at(i + 1);
    r.b0 = a.at(i + 8);
    r.b1 = a.at(i + 9);
    r.sum = float2(dot(r.a0 + r.a1, float4(1.0f)), dot(r.b0 + r.b1, float4(1.0f)));
    return r;
}

// The four bytes of w as floats, byte i in component i.
float4 bytes_f(uint w) {
    return float4(as_type<uchar4>(w));
}

// sum(q*x) of the low (x) and high (y) runs of a unit whose packed byte values are q: low of
// word 2v, low of 2v + 1, high of 2v, high of 2v + 1.
float2 k_dots(uint4 q, thread const KXU& xs) {
    return float2(dot(bytes_f(q.x), xs.a0) + dot(bytes_f(q.y), xs.a1),
                  dot(bytes_f(q.z), xs.b0) + dot(bytes_f(q.w), xs.b1));
}

// The nibbles of a unit's two words: low ones of word 2v, 2v + 1, then their high ones.
uint4 k_nibbles(uint2 q) {
    return uint4(q & NIB, (q >> 4) & NIB);
}

template <typename F>
struct KUnits {
    typedef KXU X;
    static uint units(uint upr) {
        return 4 * upr;
    }
    template <bool NORM>
    static KXU load_x(thread const Acts<NORM>& a, uint u) {
        return load_x_k(a, u);
    }
};

// Q4_K/Q5_K header (one uint4 per super-block): d | dmin << 16, then GGML's 12 bytes of 6-bit
// (scale, min) pairs. Returns the scales (xy) and mins (zw) of sub-blocks 2j and 2j + 1, as
// GGML's get_scale_min_k4 for both at once: bytes 2(j & 1) and 2(j & 1) + 1 of each header
// word, taken as 16 bits; sub-blocks 0..3 (j < 2) are the low 6 bits of words y (scales) and
// z (mins), 4..7 the nibbles of word w with the top 2 bits of y and z.
float4 k4_scales(uint4 hdr, uint j) {
    uint sh = (j & 1) << 4;
    uint y = hdr.y >> sh;
    uint z = hdr.z >> sh;
    uint w = hdr.w >> sh;
    bool upper = j >= 2;
    uint sc = upper ? ((w & 0x0F0F) | ((y >> 2) & 0x3030)) : (y & 0x3F3F);
    uint mn = upper ? (((w >> 4) & 0x0F0F) | ((z >> 2) & 0x3030)) : (z & 0x3F3F);
    return bytes_f(sc | (mn << 16));
}

// d*sc*sum(q*x) - dmin*m*sum(x) over the unit's two sub-block runs.
float k4_combine(uint4 hdr, uint j, float2 qx, thread const KXU& xs) {
    float4 sm = k4_scales(hdr, j);
    float2 dd = halves(hdr.x);
    return dd.x * dot(float2(sm.x, sm.y), qx) - dd.y * dot(float2(sm.z, sm.w), xs.sum);
}

// qs: 32 words (16 units) per super-block; scales: the header.
struct Q4_K : KUnits<Q4_K> {
    static float unit(Mat m, uint g, thread const KXU& xs) {
        uint2 q = ((device const uint2*)m.qs)[g];
        uint4 hdr = ((device const uint4*)m.sc)[g >> 4];
        return k4_combine(hdr, (g >> 2) & 3, k_dots(k_nibbles(q), xs), xs);
    }
};

// Four fifth bits (bits 0..3 of h) moved to bit 4 of bytes 0..3, to OR onto four nibbles:
// the multiply places copies of h at bits 0, 7, 14 and 21, which do not overlap.
uint fifth4(uint h) {
    return (((h & 15) * 0x00204081u) & 0x01010101u) << 4;
}

// qs as Q4_K; scales: three uint4 per super-block, the Q4_K header, then 8 words of fifth
// bits, word s for sub-block s (bit l: its element l). The unit's are bits 8v..8v+8 of words
// 2j (low run) and 2j + 1 (high run): the xy or zw half of uint4 1 + j / 2.
struct Q5_K : KUnits<Q5_K> {
    static float unit(Mat m, uint g, thread const KXU& xs) {
        device const uint4* sc = (device const uint4*)m.sc;
        uint2 q = ((device const uint2*)m.qs)[g];
        uint b = g >> 4;
        uint j = (g >> 2) & 3;
        uint4 hdr = sc[3 * b];
        uint4 hv = sc[3 * b + 1 + (j >> 1)];
        uint2 h = ((j & 1) != 0 ? uint2(hv.z, hv.w) : uint2(hv.x, hv.y)) >> ((g & 3) << 3);
        uint4 n = k_nibbles(q)
            | uint4(fifth4(h.x), fifth4(h.x >> 4), fifth4(h.y), fifth4(h.y >> 4));
        return k4_combine(hdr, j, k_dots(n, xs), xs);
    }
};

// qs: 48 words per super-block, 12 per pair: nibble words 0..8 (uint2 v = 0..3), then the
// top 2 bits (uint2 4 and 5). Top word 8 + i byte b holds, in bits 0-1 / 4-5, the top bits of
// the low / high nibble of byte b of nibble word i, in bits 2-3 / 6-7 those of word i + 4; so
// unit v's two top words are uint2 4 + (v & 1), shifted right by 2 * (v >> 1). Scales (words):
// per pair of super-blocks nine, the 16 i8 scales of each (scale s in byte s % 4 of word
// s / 4, covering elements 16s..16s+16), then d(2i) | d(2i+1) << 16. The unit's low run has
// scale 4j + v / 2 (byte v / 2 of word j), its high run 4j + 2 + v / 2.
struct Q6_K : KUnits<Q6_K> {
    static float unit(Mat m, uint g, thread const KXU& xs) {
        device const uint2* qs = (device const uint2*)m.qs;
        uint v = g & 3;
        uint b = g >> 4;
        uint pw = 6 * (g >> 2);
        uint2 q = qs[pw + v];
        uint2 t = qs[pw + 4 + (v & 1)] >> (2 * (v >> 1));
        uint4 n = k_nibbles(q) | uint4((t & 0x03030303u) << 4, t & 0x30303030u);
        float2 qx = k_dots(n, xs) - 32.0f * xs.sum;
        uint base = 9 * (b >> 1);
        uint scw = m.sc[base + 4 * (b & 1) + ((g >> 2) & 3)];
        // Bytes v / 2 and 2 + v / 2, sign-extended.
        uint lo = 8 * (v >> 1);
        float2 s = float2(float(int(scw << (24 - lo)) >> 24), float(int(scw << (8 - lo)) >> 24));
        return halves(m.sc[base + 8])[b & 1] * dot(s, qx);
    }
};

// This thread's partial dot product of the row starting at unit `base` of m (`units` units):
// units l, l + lpr, ... of the row, four per step (independent loads in flight).
template <typename F, bool NORM>
float row_dot(Mat m, thread const Acts<NORM>& a, uint units, uint base, uint l, uint lpr) {
    float acc = 0.0f;
    uint u = l;
    for (; u + 3 * lpr < units; u += 4 * lpr) {
        typename F::X x0 = F::load_x(a, u);
        typename F::X x1 = F::load_x(a, u + lpr);
        typename F::X x2 = F::load_x(a, u + 2 * lpr);
        typename F::X x3 = F::load_x(a, u + 3 * lpr);
        uint g = base + u;
        acc += (F::unit(m, g, x0) + F::unit(m, g + lpr, x1))
            + (F::unit(m, g + 2 * lpr, x2) + F::unit(m, g + 3 * lpr, x3));
    }
    for (; u < units; u += lpr) {
        typename F::X xs = F::load_x(a, u);
        acc += F::unit(m, base + u, xs);
    }
    return acc;
}

// gate and up of one row, sharing each unit's activations.
template <typename F, bool NORM>
float2 row_dot2(Mat gm, Mat um, thread const Acts<NORM>& a, uint units, uint base, uint l,
                uint lpr) {
    float2 acc = float2(0.0f);
    uint u = l;
    for (; u + 3 * lpr < units; u += 4 * lpr) {
        typename F::X x0 = F::load_x(a, u);
        typename F::X x1 = F::load_x(a, u + lpr);
        typename F::X x2 = F::load_x(a, u + 2 * lpr);
        typename F::X x3 = F::load_x(a, u + 3 * lpr);
        uint g = base + u;
        acc.x += (F::unit(gm, g, x0) + F::unit(gm, g + lpr, x1))
            + (F::unit(gm, g + 2 * lpr, x2) + F::unit(gm, g + 3 * lpr, x3));
        acc.y += (F::unit(um, g, x0) + F::unit(um, g + lpr, x1))
            + (F::unit(um, g + 2 * lpr, x2) + F::unit(um, g + 3 * lpr, x3));
    }
    for (; u < units; u += lpr) {
        typename F::X xs = F::load_x(a, u);
        acc += float2(F::unit(gm, base + u, xs), F::unit(um, base + u, xs));
    }
    return acc;
}

// ---- reduction --------------------------------------------------------------------------

// Sums v over the lpr threads of this thread's row group; the group's thread l == 0 gets the
// total. Called by every thread (uniform control flow: lpr is uniform).
template <typename T>
T reduce_row(T v, uint lpr, uint l, Lane ln, threadgroup T* sums) {
    if (lpr <= SIMD) {
        for (uint off = lpr >> 1; off > 0; off >>= 1) {
            v += simd_shuffle_xor(v, ushort(off));
        }
        return v;
    }
    v = simd_sum(v);
    if (ln.sl == 0) {
        sums[ln.sg] = v;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (l == 0) {
        v = T(0.0f);
        for (uint i = 0; i < lpr / SIMD; i++) {
            v += sums[ln.sg + i];
        }
    }
    return v;
}

// A thread's row and its lane l in the row group, threads numbered simdgroup by simdgroup
// (so groups of up to 32 lie inside one simdgroup).
struct RowLane {
    uint row;
    uint l;
};

RowLane row_lane(uint lpr, Lane ln) {
    uint t = ln.sg * SIMD + ln.sl;
    RowLane r;
    r.row = ln.wg * (WG / lpr) + t / lpr;
    r.l = t & (lpr - 1);
    return r;
}

// ---- kernels ----------------------------------------------------------------------------

// Where this thread is; rows continue in grid y when x is full (gemv::grid).
Lane lane_of(uint3 tg, uint3 ntg, uint lid, uint sg, uint sl) {
    Lane ln = {tg.x + tg.y * ntg.x, lid, sg, sl};
    return ln;
}

// The activations x, with the RMSNorm scale under NORM (every thread must call it: the
// prologue's sum has a barrier). Without the prologue norm_w is never read.
template <bool NORM>
Acts<NORM> acts_of(constant Params& p, device const float4* x, device const float4* norm_w,
                   Lane ln, threadgroup float* norm_sums) {
    Acts<NORM> a;
    a.x = x;
    a.norm_w = norm_w;
    a.scale = NORM ? norm_scale(p, x, ln, norm_sums) : 1.0f;
    return a;
}

template <typename F, bool NORM>
void gemv_impl(constant Params& p, Mat w, device const float4* x, device const float* bias,
               device float* out, device const float4* norm_w, Lane ln,
               threadgroup float* norm_sums, threadgroup float* group_sums) {
    Acts<NORM> a = acts_of<NORM>(p, x, norm_w, ln, norm_sums);
    uint lpr = p.lanes_per_row;
    RowLane rl = row_lane(lpr, ln);
    uint units = F::units(p.upr);
    float acc = 0.0f;
    if (rl.row < p.n) {
        acc = row_dot<F, NORM>(w, a, units, rl.row * units, rl.l, lpr);
    }
    acc = reduce_row(acc, lpr, rl.l, ln, group_sums);
    if (rl.l == 0 && rl.row < p.n) {
        if ((p.flags & 1) != 0) {
            acc += bias[rl.row];
        }
        uint o = p.out_offset + rl.row;
        if ((p.flags & 2) != 0) {
            acc += out[o];
        }
        out[o] = acc;
    }
}

template <typename F, bool NORM>
void swiglu_impl(constant Params& p, Mat gate, Mat up, device const float4* x, device float* out,
                 device const float4* norm_w, Lane ln, threadgroup float* norm_sums,
                 threadgroup float2* group_sums) {
    Acts<NORM> a = acts_of<NORM>(p, x, norm_w, ln, norm_sums);
    uint lpr = p.lanes_per_row;
    RowLane rl = row_lane(lpr, ln);
    uint units = F::units(p.upr);
    float2 acc = float2(0.0f);
    if (rl.row < p.n) {
        acc = row_dot2<F, NORM>(gate, up, a, units, rl.row * units, rl.l, lpr);
    }
    acc = reduce_row(acc, lpr, rl.l, ln, group_sums);
    if (rl.l == 0 && rl.row < p.n) {
        out[p.out_offset + rl.row] = acc.x / (1.0f + exp(-acc.x)) * acc.y;
    }
}

template <typename F, bool NORM>
void qkv_impl(constant Params& p, Mat q, Mat k, Mat v, device const float4* x,
              device const float* q_bias, device const float* k_bias, device const float* v_bias,
              device float* q_out, device float* k_out, device float* v_out,
              device const float4* norm_w, Lane ln, threadgroup float* norm_sums,
              threadgroup float* group_sums) {
    Acts<NORM> a = acts_of<NORM>(p, x, norm_w, ln, norm_sums);
    uint lpr = p.lanes_per_row;
    RowLane rl = row_lane(lpr, ln);
    // Rows are numbered q, then k, then v; a row group has one row, so it never straddles.
    uint m = 0;
    uint r = rl.row;
    uint rows = p.n;
    if (r >= p.n) {
        r -= p.n;
        m = 1;
        rows = p.nk;
        if (r >= p.nk) {
            r -= p.nk;
            m = 2;
            rows = p.nv;
        }
    }
    uint units = F::units(p.upr);
    float acc = 0.0f;
    if (r < rows) {
        Mat w = m == 0 ? q : (m == 1 ? k : v);
        acc = row_dot<F, NORM>(w, a, units, r * units, rl.l, lpr);
    }
    acc = reduce_row(acc, lpr, rl.l, ln, group_sums);
    if (rl.l == 0 && r < rows) {
        // The bias is read only when bound: the placeholder (x) may be shorter than rows.
        bool has_bias = (p.flags & 1) != 0;
        if (m == 0) {
            if (has_bias) {
                acc += q_bias[r];
            }
            q_out[r] = acc;
        } else if (m == 1) {
            if (has_bias) {
                acc += k_bias[r];
            }
            k_out[r] = acc;
        } else {
            if (has_bias) {
                acc += v_bias[r];
            }
            v_out[r] = acc;
        }
    }
}

// ---- entry points -----------------------------------------------------------------------
// Each kind's signature and body are written once, in its *_ENTRY macro; GEMV_ENTRIES stamps a
// format's six entries from them. tests/metal expands these macros as the compiler does, checks
// every entry's slots and address spaces against its spec and runs each in the host emulation.
//
// NORM is true or false. The norm entries take the RMSNorm weights as their last buffer, after
// the kind's own (NORM_BUFFER_true(slot)); the others never read them, and x stands in.

#define NORM_BUFFER_false(SLOT)
#define NORM_BUFFER_true(SLOT) , device const float4* norm_w [[buffer(SLOT)]]
#define NORM_WEIGHTS_false x
#define NORM_WEIGHTS_true norm_w

// The built-in inputs of every entry.
#define GEMV_BUILTINS                                                                           \
    uint3 tg [[threadgroup_position_in_grid]],                                                  \
    uint3 ntg [[threadgroups_per_grid]],                                                        \
    uint lid [[thread_index_in_threadgroup]],                                                   \
    uint sg [[simdgroup_index_in_threadgroup]],                                                 \
    uint sl [[thread_index_in_simdgroup]]

// gemv_<fmt>[_norm].
#define GEMV_ENTRY(NAME, F, NORM)                                                               \
kernel void NAME(constant Params& p [[buffer(0)]],                                              \
                 device const uint* qs [[buffer(1)]],                                           \
                 device const uint* sc [[buffer(2)]],                                           \
                 device const float4* x [[buffer(3)]],                                          \
                 device const float* bias [[buffer(4)]],                                        \
                 device float* out [[buffer(5)]] NORM_BUFFER_##NORM(6),                         \
                 GEMV_BUILTINS) {                                                               \
    threadgroup float norm_sums[NSIMD];                                                         \
    threadgroup float group_sums[NSIMD];                                                        \
    gemv_impl<F, NORM>(p, Mat{qs, sc}, x, bias, out, NORM_WEIGHTS_##NORM,                       \
                       lane_of(tg, ntg, lid, sg, sl), norm_sums, group_sums);                   \
}

// gemv_swiglu_<fmt>[_norm].
#define SWIGLU_ENTRY(NAME, F, NORM)                                                             \
kernel void NAME(constant Params& p [[buffer(0)]],                                              \
                 device const uint* g_qs [[buffer(1)]],                                         \
                 device const uint* g_sc [[buffer(2)]],                                         \
                 device const uint* u_qs [[buffer(3)]],                                         \
                 device const uint* u_sc [[buffer(4)]],                                         \
                 device const float4* x [[buffer(5)]],                                          \
                 device float* out [[buffer(6)]] NORM_BUFFER_##NORM(7),                         \
                 GEMV_BUILTINS) {                                                               \
    threadgroup float norm_sums[NSIMD];                                                         \
    threadgroup float2 group_sums[NSIMD];                                                       \
    swiglu_impl<F, NORM>(p, Mat{g_qs, g_sc}, Mat{u_qs, u_sc}, x, out, NORM_WEIGHTS_##NORM,      \
                         lane_of(tg, ntg, lid, sg, sl), norm_sums, group_sums);                 \
}

// gemv_qkv_<fmt>[_norm].
#define QKV_ENTRY(NAME, F, NORM)                                                                \
kernel void NAME(constant Params& p [[buffer(0)]],                                              \
                 device const uint* q_qs [[buffer(1)]],                                         \
                 device const uint* q_sc [[buffer(2)]],                                         \
                 device const uint* k_qs [[buffer(3)]],                                         \
                 device const uint* k_sc [[buffer(4)]],                                         \
                 device const uint* v_qs [[buffer(5)]],                                         \
                 device const uint* v_sc [[buffer(6)]],                                         \
                 device const float4* x [[buffer(7)]],                                          \
                 device const float* q_bias [[buffer(8)]],                                      \
                 device const float* k_bias [[buffer(9)]],                                      \
                 device const float* v_bias [[buffer(10)]],                                     \
                 device float* q_out [[buffer(11)]],                                            \
                 device float* k_out [[buffer(12)]],                                            \
                 device float* v_out [[buffer(13)]] NORM_BUFFER_##NORM(14),                     \
                 GEMV_BUILTINS) {                                                               \
    threadgroup float norm_sums[NSIMD];                                                         \
    threadgroup float group_sums[NSIMD];                                                        \
    qkv_impl<F, NORM>(p, Mat{q_qs, q_sc}, Mat{k_qs, k_sc}, Mat{v_qs, v_sc}, x, q_bias, k_bias,  \
                      v_bias, q_out, k_out, v_out, NORM_WEIGHTS_##NORM,                         \
                      lane_of(tg, ntg, lid, sg, sl), norm_sums, group_sums);                    \
}

// A format's six entries: gemv_<fmt>, gemv_swiglu_<fmt>, gemv_qkv_<fmt>, each with _norm.
#define GEMV_ENTRIES(fmt, F)                                                                    \
    GEMV_ENTRY(gemv_##fmt, F, false)                                                            \
    GEMV_ENTRY(gemv_##fmt##_norm, F, true)                                                      \
    SWIGLU_ENTRY(gemv_swiglu_##fmt, F, false)                                                   \
    SWIGLU_ENTRY(gemv_swiglu_##fmt##_norm, F, true)                                             \
    QKV_ENTRY(gemv_qkv_##fmt, F, false)                                                         \
    QKV_ENTRY(gemv_qkv_##fmt##_norm, F, true)

GEMV_ENTRIES(q4_0, Q4_0)
GEMV_ENTRIES(q4_1, Q4_1)
GEMV_ENTRIES(q8_0, Q8_0)
GEMV_ENTRIES(q4_k, Q4_K)
GEMV_ENTRIES(q5_k, Q5_K)
GEMV_ENTRIES(q6_k, Q6_K)
