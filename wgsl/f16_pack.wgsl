// f32 pairs into the KV cache's f16 words (element 2i in the low half, as pack2x16float
// packs), clamped to the largest finite f16: pack2x16float of an out-of-range value is
// indeterminate, and an inf in the cache would turn into NaN in attention.

const F16_MAX: f32 = 65504.0;

fn f16_pair(v: vec2<f32>) -> u32 {
    return pack2x16float(clamp(v, vec2(-F16_MAX), vec2(F16_MAX)));
}
