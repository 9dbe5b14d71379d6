// cos and sin of a RoPE angle, shared by rope.wgsl and rope_kv.wgsl. The angle is
// f32(pos) * inv_freq[i] in f32, as HF computes it; it gets an explicit two-constant range
// reduction first because GPU sin/cos are only accurate near [-pi, pi] (Vulkan guarantees
// 2^-11 absolute there and nothing outside), while angles reach ~3e4 rad.

// 2*pi split Cody-Waite style: TWO_PI_HI has an 8-bit mantissa, so k * TWO_PI_HI is exact for
// k < 2^16 (positions up to ~4e5 at inv_freq 1), and TWO_PI_LO carries the rest.
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

fn rope_cos_sin(angle: f32) -> vec2<f32> {
    let k = round(angle * INV_TWO_PI);
    let r = (angle - k * TWO_PI_HI) - k * TWO_PI_LO;
    return vec2<f32>(cos(r), sin(r));
}
