// Causal prefill attention on Apple GPUs with SIMD-group matrices: the native Metal variant of
// wgsl/attention_prefill.wgsl (same bindings, Params and Step; f16 cache; head_dim 64 or 128),
// the MSL twin of wgsl/attention_prefill_coop.wgsl (read the two side by side):
//   [[buffer(i)]] = binding i: 0 Params, 1 Step, 2 q (f32 [n_tokens][n_heads * HD]), 3 cache K,
//   4 cache V (f16 [n_kv_heads][capacity][HD]), 5 out (f32, like q).
// Entries attention_prefill_hd64 and attention_prefill_hd128 (one templated body), the GQA group
// from Params.group.
//
// Host contract (fixed geometry): 128 threads (4 SIMD groups of 32: Apple GPUs only), grid
// [n_kv_heads, ceil(max_tokens / (64 / G)), 1]. Threadgroup (kvh, y) owns CR = 64 query rows of
// KV head kvh, row R = token y * (64 / G) + R / G, head kvh * G + R % G; SIMD group s owns rows
// 16s .. 16s + 15. Per tile of CT = 32 keys, each SIMD group on its own (no threadgroup barrier
// after the q staging):
//   S = Q K^T   2 x 4 simdgroup_float8x8, half operands: q pre-scaled by scale * log2(e) and
//               rounded to half once, staged in threadgroup memory; K^T fragments loaded
//               transposed straight from the cache (device memory);
//   softmax     S goes through the SIMD group's slot of threadgroup memory (a SIMD-group matrix
//               gives no per-row access); two lanes per row take 16 keys each (causal mask per
//               row), pair maxima and sums by shuffle; P = exp2(S - m) goes back to the slot as
//               half, and l sums the rounded P, so numerator and denominator agree;
//   O += P V    2 x HD/8 simdgroup_float8x8 accumulators, V fragments from the cache.
// Keys are taken in groups of 8 (one fragment): a group wholly below the threadgroup's last live
// key loads from the cache; the one group that straddles it was staged once, zero-filled, in
// threadgroup memory; groups past the SIMD group's last row's key end are skipped. Cache rows
// at or past the live length (stale, or NaN in the tests) are never read.
//
// The running max is lazy, as in the cooperative-matrix kernel: a row's reference max m moves
// only when a tile's max passes it by more than 8 (log2 units), so P stays below 2^8 (fine in
// half), and only then are the O accumulators rescaled, by multiplying them with diag(alpha)
// (two 8x8 diagonal fragments built in the slot): rows cannot be reached one by one. Causal rows
// meet their largest scores early, so this is rare after the first tiles.
//
// Threadgroup memory: q rows (64 x (HD + 8) halves), the straddling key group of K and V
// (2 x 8 x (HD + 8) halves) and the four 16 x 32 f32 slots: 19712 bytes at HD 64, 29952 at 128
// (attention::metal_prefill_bytes).
#include <metal_stdlib>
using namespace metal;

struct Params {
    uint n_heads;
    uint n_splits;    // unused in prefill
    uint capacity;
    uint max_tokens;
    float scale_log2e;
    uint flags;       // unused in prefill
    uint group;       // query heads per KV head
    uint pad;
};

struct Step {
    uint pos;
    uint n_tokens;
    uint kv_len;
    uint pad;
};

constexpr constant uint WG = 128;  // threads: 4 SIMD groups
constexpr constant uint CR = 64;   // query rows per threadgroup
constexpr constant uint SR = 16;   // rows per SIMD group
constexpr constant uint CT = 32;   // keys per tile
// Finite stand-ins for -inf (fast math does not keep inf), as in the WGSL.
constant float NEG = -3.0e38f;
constant float NEG_HALF = -1.0e38f;
// How far (log2 units) a row's max may pass its reference before O is rescaled.
constant float LAZY = 8.0f;

template <uint HD>
inline void attention_prefill_impl(
    constant Params& p,
    constant Step& step,
    device const float4* q,
    device const half* cache_k,
    device const half* cache_v,
    device float* out,
    threadgroup half* tq,     // CR x LD: q rows, pre-scaled
    threadgroup half* tkv,    // 2 x 8 x LD: the straddling key group of K, then of V
    threadgroup float* ts,    // 4 x SR x CT: per SIMD group, S, then P (half), diag, O
    uint2 wid,
    uint lid,
    uint lane,
    uint sg) {
    // Rows of q and of the staged keys are padded by 8 halves, so that the fragment loads of
    // neighbouring rows start on different banks.
    constexpr uint LD = HD + 8;
    constexpr uint ND = HD / 8;
    uint G = p.group;
    uint kvh = wid.x;
    uint bq = CR / G;
    uint tf = wid.y * bq;
    uint nt = min(step.n_tokens, p.max_tokens);
    if (tf >= nt) {
        return;
    }
    uint rows_live = bq * G;
    uint t_end = min(tf + bq, nt);
    uint key_end = min(step.pos + t_end, p.capacity);
    uint row_words = p.n_heads * HD;
    uint kv_base = kvh * p.capacity * HD;

    // q rows as half, pre-scaled (clamped to the half range); rows past the live ones zero.
    for (uint i = lid; i < CR * HD / 4; i += WG) {
        uint r = i / (HD / 4);
        uint c = i % (HD / 4);
        uint t = tf + r / G;
        float4 v = float4(0.0f);
        if (r < rows_live && t < nt) {
            v = q[(t * row_words + (kvh * G + r % G) * HD) / 4 + c] * p.scale_log2e;
        }
        *(threadgroup half4*)(tq + r * LD + 4 * c) = half4(clamp(v, float4(-65504.0f), float4(65504.0f)));
    }
    // The key group that straddles key_end, zeros past it (all zeros when key_end % 8 == 0).
    uint ks = key_end & ~7u;
    for (uint i = lid; i < 8 * HD / 4; i += WG) {
        uint j = i / (HD / 4);
        uint c = i % (HD / 4);
        half4 kw = half4(0.0h);
        half4 vw = half4(0.0h);
        if (ks + j < key_end) {
            uint src = (kv_base + (ks + j) * HD) / 4 + c;
            kw = ((device const half4*)cache_k)[src];
            vw = ((device const half4*)cache_v)[src];
        }
        *(threadgroup half4*)(tkv + j * LD + 4 * c) = kw;
        *(threadgroup half4*)(tkv + (8 + j) * LD + 4 * c) = vw;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // Lanes 2rr and 2rr + 1 hold row rr of the SIMD group (keys 16 hf .. + 16 of each tile), whose
    // keys end at e_row (0 for a row past the live ones); both keep its m and l.
    uint rr = lane / 2;
    uint hf = lane % 2;
    uint row = sg * SR + rr;
    uint t_row = tf + row / G;
    bool live = row < rows_live && t_row < nt;
    uint e_row = live ? min(step.pos + t_row + 1, key_end) : 0;
    // The SIMD group's key end: its last live row's.
    uint sg_end = simd_max(e_row);
    float m = NEG;
    float l = 0.0f;

    threadgroup float* slot = ts + sg * (SR * CT);
    // P rows in the slot: half, row stride 2 * CT (the S row's bytes).
    threadgroup half* ph = (threadgroup half*)slot;
    threadgroup const half* qs = tq + sg * SR * LD;
    device const half* kc = cache_k + kv_base;
    device const half* vc = cache_v + kv_base;
    threadgroup const half* kst = tkv;
    threadgroup const half* vst = tkv + 8 * LD;

    simdgroup_float8x8 o[2][ND];
    for (uint d = 0; d < ND; d++) {
        o[0][d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        o[1][d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }

    for (uint t0 = 0; t0 < sg_end; t0 += CT) {
        // Key groups of this tile that the SIMD group reads (the rest are masked for all its
        // rows, so their S columns stay zero and their P columns are never loaded).
        uint ng = min(4u, (sg_end - t0 + 7) / 8);
        simdgroup_float8x8 s[2][4];
        for (uint g = 0; g < 4; g++) {
            s[0][g] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
            s[1][g] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        }
        for (uint d = 0; d < ND; d++) {
            simdgroup_half8x8 qa0;
            simdgroup_half8x8 qa1;
            simdgroup_load(qa0, qs + 8 * d, LD);
            simdgroup_load(qa1, qs + 8 * LD + 8 * d, LD);
            for (uint g = 0; g < ng; g++) {
                uint j0 = t0 + 8 * g;
                simdgroup_half8x8 kb;
                if (j0 + 8 <= key_end) {
                    simdgroup_load(kb, kc + j0 * HD + 8 * d, HD, ulong2(0, 0), true);
                } else {
                    simdgroup_load(kb, kst + 8 * d, LD, ulong2(0, 0), true);
                }
                simdgroup_multiply_accumulate(s[0][g], qa0, kb, s[0][g]);
                simdgroup_multiply_accumulate(s[1][g], qa1, kb, s[1][g]);
            }
        }
        for (uint g = 0; g < 4; g++) {
            simdgroup_store(s[0][g], slot + 8 * g, CT);
            simdgroup_store(s[1][g], slot + 8 * CT + 8 * g, CT);
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);

        // Softmax step of row rr, keys k0 .. k0 + 15.
        uint k0 = t0 + 16 * hf;
        float sc[16];
        float mx = NEG;
        for (uint j = 0; j < 16; j++) {
            sc[j] = slot[rr * CT + 16 * hf + j];
            if (k0 + j < e_row) {
                mx = max(mx, sc[j]);
            }
        }
        mx = max(mx, simd_shuffle_xor(mx, 1));
        float m_new = m;
        float alpha = 1.0f;
        if (mx > m + LAZY) {
            m_new = mx;
            alpha = exp2(m - mx);
        }
        // O holds something to rescale only once a key was seen (m above NEG).
        bool moves = alpha < 1.0f && m > NEG_HALF;
        m = m_new;
        half4 pv[4];
        float sum = 0.0f;
        for (uint c = 0; c < 4; c++) {
            float4 e;
            for (uint i = 0; i < 4; i++) {
                uint j = 4 * c + i;
                e[i] = k0 + j < e_row ? exp2(sc[j] - m_new) : 0.0f;
            }
            pv[c] = half4(e);
            float4 r = float4(pv[c]);
            sum += (r.x + r.y) + (r.z + r.w);
        }
        sum += simd_shuffle_xor(sum, 1);
        l = l * alpha + sum;
        // Every lane has read its scores: the slot is free.
        simdgroup_barrier(mem_flags::mem_threadgroup);
        if (simd_any(moves)) {
            // diag(alpha) of rows 0-7 and of rows 8-15 (row r's alpha is held by lane 2r).
            for (uint e = lane; e < 128; e += 32) {
                uint r = (e / 64) * 8 + (e / 8) % 8;
                float a = simd_shuffle(alpha, ushort(2 * r));
                slot[e] = (e / 8) % 8 == e % 8 ? a : 0.0f;
            }
            simdgroup_barrier(mem_flags::mem_threadgroup);
            simdgroup_float8x8 dg0;
            simdgroup_float8x8 dg1;
            simdgroup_load(dg0, slot, 8);
            simdgroup_load(dg1, slot + 64, 8);
            for (uint d = 0; d < ND; d++) {
                simdgroup_multiply(o[0][d], dg0, o[0][d]);
                simdgroup_multiply(o[1][d], dg1, o[1][d]);
            }
            // The P stores below overwrite the diagonals.
            simdgroup_barrier(mem_flags::mem_threadgroup);
        }
        for (uint c = 0; c < 4; c++) {
            *(threadgroup half4*)(ph + rr * 2 * CT + 16 * hf + 4 * c) = pv[c];
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);

        for (uint g = 0; g < ng; g++) {
            uint j0 = t0 + 8 * g;
            simdgroup_half8x8 p0;
            simdgroup_half8x8 p1;
            simdgroup_load(p0, ph + 8 * g, 2 * CT);
            simdgroup_load(p1, ph + 8 * 2 * CT + 8 * g, 2 * CT);
            if (j0 + 8 <= key_end) {
                for (uint d = 0; d < ND; d++) {
                    simdgroup_half8x8 vb;
                    simdgroup_load(vb, vc + j0 * HD + 8 * d, HD);
                    simdgroup_multiply_accumulate(o[0][d], p0, vb, o[0][d]);
                    simdgroup_multiply_accumulate(o[1][d], p1, vb, o[1][d]);
                }
            } else {
                for (uint d = 0; d < ND; d++) {
                    simdgroup_half8x8 vb;
                    simdgroup_load(vb, vst + 8 * d, LD);
                    simdgroup_multiply_accumulate(o[0][d], p0, vb, o[0][d]);
                    simdgroup_multiply_accumulate(o[1][d], p1, vb, o[1][d]);
                }
            }
        }
        // The next tile's S stores overwrite P.
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }

    // O / l through the slot, 32 dims a round; lanes write their own row's 16 dims.
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    device float4* dst = (device float4*)(out + t_row * row_words + (kvh * G + row % G) * HD);
    for (uint dc = 0; dc < ND; dc += 4) {
        for (uint b = 0; b < 4; b++) {
            simdgroup_store(o[0][dc + b], slot + 8 * b, CT);
            simdgroup_store(o[1][dc + b], slot + 8 * CT + 8 * b, CT);
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);
        if (live) {
            threadgroup const float4* src = (threadgroup const float4*)(slot + rr * CT + 16 * hf);
            for (uint c = 0; c < 4; c++) {
                dst[(8 * dc + 16 * hf) / 4 + c] = src[c] * inv;
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }
}

// The entry points, one per head dim, stamped by ATTENTION_PREFILL_ENTRY (tests/metal expands it
// as the compiler does and checks every entry against its spec). Threadgroup memory is declared
// in each kernel (MSL allows it nowhere else), as vectors for their alignment, and handed down.

#define ATTENTION_PREFILL_ENTRY(HD)                                                             \
[[max_total_threads_per_threadgroup(128)]]                                                      \
kernel void attention_prefill_hd##HD(                                                           \
    constant Params& p [[buffer(0)]],                                                           \
    constant Step& step [[buffer(1)]],                                                          \
    device const float4* q [[buffer(2)]],                                                       \
    device const half* cache_k [[buffer(3)]],                                                   \
    device const half* cache_v [[buffer(4)]],                                                   \
    device float* out [[buffer(5)]],                                                            \
    uint3 wid [[threadgroup_position_in_grid]],                                                 \
    uint lid [[thread_index_in_threadgroup]],                                                   \
    uint lane [[thread_index_in_simdgroup]],                                                    \
    uint sg [[simdgroup_index_in_threadgroup]]) {                                               \
    threadgroup half4 tq[CR * (HD + 8) / 4];                                                    \
    threadgroup half4 tkv[2 * 8 * (HD + 8) / 4];                                                \
    threadgroup float4 ts[4 * SR * CT / 4];                                                     \
    attention_prefill_impl<HD>(p, step, q, cache_k, cache_v, out, (threadgroup half*)tq,        \
                               (threadgroup half*)tkv, (threadgroup float*)ts, wid.xy, lid,     \
                               lane, sg);                                                       \
}

ATTENTION_PREFILL_ENTRY(64)
ATTENTION_PREFILL_ENTRY(128)
