// The q8_0 KV cache (Rust `KvType::Q8_0`, layout in src/kernels/kv_cache.rs): quantisation of
// one 32-value block, shared by its writers (kv_cache_q8, rope_kv_q8).
//
// A layer's K (or V) cache is one u32 buffer of two planes: int8 codes [n_kv_heads][capacity]
// [head_dim], four to a word (element 4i in the low byte), then from word
// n_kv_heads * capacity * head_dim / 4 one f32 scale per block of 32 consecutive values of a
// row, [n_kv_heads][capacity][head_dim / 32]. A value is code * scale, with
// scale = max|x| / 127 over the block and code = round(x / scale) (ties to even), so
// |x - code * scale| <= scale / 2. Values are first clamped to the finite f16 range, as the
// f16 cache clamps them, so an inf cannot turn a whole block into NaN.
//
// A writer fills kv_q8_block with the block's values, takes kv_q8_scale(), and stores
// kv_q8_word(i, kv_q8_inv(scale)) for i in 0..8 and the scale's bits.

const KV_Q8_F16_MAX: f32 = 65504.0;

var<private> kv_q8_block: array<f32, 32>;

fn kv_q8_set(i: u32, v: f32) {
    kv_q8_block[i] = clamp(v, -KV_Q8_F16_MAX, KV_Q8_F16_MAX);
}

// max|x| / 127 of the block (0 for an all-zero block).
fn kv_q8_scale() -> f32 {
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) {
        amax = max(amax, abs(kv_q8_block[i]));
    }
    return amax / 127.0;
}

// 1 / scale, 0 for an all-zero block (its codes are then 0).
fn kv_q8_inv(scale: f32) -> f32 {
    return select(0.0, 1.0 / scale, scale > 0.0);
}

// Codes of values 4i .. 4i + 3, packed (value 4i in the low byte). The clamp keeps a rounding
// overshoot of |x| / scale past 127 in range.
fn kv_q8_word(i: u32, inv: f32) -> u32 {
    let v = vec4(kv_q8_block[4u * i], kv_q8_block[4u * i + 1u], kv_q8_block[4u * i + 2u], kv_q8_block[4u * i + 3u]);
    return pack4xI8(clamp(vec4<i32>(round(v * inv)), vec4(-127), vec4(127)));
}
