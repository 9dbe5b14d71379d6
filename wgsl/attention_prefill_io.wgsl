// The causal prefill pass's interface, shared by the portable kernel (attention_prefill.wgsl)
// and its cooperative-matrix twin: uniforms, the GQA group G and tokens per workgroup BQ
// (override constants), q and out. Each declares the cache bindings 3 and 4 with the element
// type it reads.

#include "attention_params"

override G: u32 = 1u;
override BQ: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<vec2<f32>>;
