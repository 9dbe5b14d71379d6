// The RMSNorm prologue of the GEMVs that read an f32 activation row x (gemv.wgsl, and
// gemv_dot.wgsl with QPRO), included after gemv_rows.wgsl. NORM: x is the residual stream
// and is RMS-normalised on load (x * rsqrt(mean(x^2) + eps) * norm_w), each workgroup
// computing the mean itself from all of x, so the norm needs no dispatch of its own; the
// weights are bound after gemv_rows.wgsl's bindings. WG must be a power of two.

#ifdef NORM
@group(0) @binding(EXTRA_BINDING) var<storage, read> norm_w: array<vec4<f32>>;
// The sum of squares over the workgroup (up to 1024 lanes, more than reduce.wgsl's wg_sum).
var<workgroup> norm_partial: array<f32, 1024>;
#include "wg_reduce" NAME=norm_sum T=f32 SG_OP=subgroupAdd OP=add_f32 SCRATCH=norm_partial
#endif
// x * the RMSNorm scale of x (NORM), else 1.
var<private> x_scale: f32 = 1.0;

// NORM: every invocation of the workgroup computes rsqrt(mean(x^2) + eps) into x_scale.
// Called from uniform control flow at the top of the entry points.
fn norm_prologue(lane: Lane) {
#ifdef NORM
    var s = 0.0;
    for (var i = lane.lid; i < p.k4; i += WG) {
        let v = x[i];
        s += dot(v, v);
    }
    x_scale = inverseSqrt(norm_sum(s, lane) / f32(4u * p.k4) + bitcast<f32>(p.eps_bits));
#endif
}

// Activation vec4 i, normalised under NORM.
fn x_at(i: u32) -> vec4<f32> {
#ifdef NORM
    return x[i] * x_scale * norm_w[i];
#else
    return x[i];
#endif
}
