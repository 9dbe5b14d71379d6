// The u32 whose unsigned order is the float order, for argmax and top-k (shared through
// `#include "order_key"`): NaN maps to 0, below -inf, so it never beats a number; -0.0 and
// +0.0 share a key, so they tie.
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    let mag = b & 0x7fffffffu;
    // Bit tests, not v != v: WGSL lets implementations assume floats are never NaN.
    if (mag > 0x7f800000u) { return 0u; }
    if (mag == 0u) { return 0x80000000u; }
    // Negative: flip all bits (larger magnitude sorts lower); positive: set the sign bit.
    return select(b | 0x80000000u, ~b, b != mag);
}
