use crate::common::*;
use wick::kernels::rope::{self, RopeStyle};
use wick::kernels::{Kernels, StepParams};
use wick::reference;

fn step(pos: usize, n_tokens: usize) -> StepParams {
    StepParams {
        pos: pos as u32,
        n_tokens: n_tokens as u32,
        kv_len: (pos + n_tokens) as u32,
        ..Default::default()
    }
}

/// Builds one dispatch and runs it at each of `positions` (rewriting only the step uniform),
/// with `n_tokens` live rows out of `max_tokens`.
#[allow(clippy::too_many_arguments)]
fn check(
    k: &Kernels,
    style: RopeStyle,
    theta: f32,
    n_heads: usize,
    head_dim: usize,
    rot_dim: usize,
    max_tokens: usize,
    n_tokens: usize,
    positions: &[usize],
) {
    let mut r = rng();
    let g = &k.gpu;
    let row = n_heads * head_dim;
    let xb = g
        .storage_buffer("x", (max_tokens * row * 4) as u64)
        .unwrap();
    let stepb = g.uniform("step", &step(0, n_tokens)).unwrap();
    let freq = g
        .upload("inv_freq", &rope::inv_freq(theta, rot_dim))
        .unwrap();
    let d = rope::rope(
        k, &xb, &stepb, &freq, max_tokens, n_heads, head_dim, rot_dim, style,
    )
    .unwrap();
    let want_freq = reference::rope::inv_freq_f64(theta as f64, rot_dim);
    for &pos in positions {
        let x = rand_vec(&mut r, max_tokens * row, 1.0);
        g.write(&xb, 0, &x);
        g.write(&stepb, 0, &[step(pos, n_tokens)]);
        k.run(&[&d]).unwrap();
        let got: Vec<f32> = g.read_vec(&xb).unwrap();
        let live = n_tokens * row;
        let want = reference::rope::rope(&x[..live], pos, n_heads, head_dim, &want_freq, style);
        // The kernel's angle is f32(pos) * f32(inv_freq) rounded to f32, as in HF: two
        // roundings of at most 2^-24 relative each, so |angle error| <= pos_max * 2^-23
        // (0.004 rad at 32768). A rotation off by d moves each component by at most
        // |pair| * d, |pair| <= sqrt(2) here; 4e-6 covers the range reduction, sin/cos and
        // the products in f32.
        let pos_max = (pos + n_tokens - 1) as f32;
        let atol = std::f32::consts::SQRT_2 * (pos_max * 2f32.powi(-23) + 4e-6);
        let what = format!(
            "rope {style:?} theta {theta} heads {n_heads} hd {head_dim} rot {rot_dim} pos {pos}"
        );
        let e = assert_close(&what, &got[..live], &want, 0.0, atol);
        eprintln!("{what}: max error {e:.1e} of max |want| (atol {atol:.1e})");
        // Rows past n_tokens are not this step's: untouched, bit for bit.
        assert_eq!(
            bytemuck::cast_slice::<f32, u32>(&got[live..]),
            bytemuck::cast_slice::<f32, u32>(&x[live..]),
            "{what}: rows past n_tokens changed"
        );
    }
}

#[test]
fn rope_styles_thetas_head_dims() {
    let k = kernels();
    for style in [RopeStyle::Adjacent, RopeStyle::HalfSplit] {
        for theta in [1e4, 1e5, 1e6] {
            for hd in [32, 64, 128] {
                check(k, style, theta, 3, hd, hd, 4, 3, &[0, 17, 4093, 32765]);
            }
        }
    }
}

#[test]
fn rope_partial_rotary_and_prefill_rows() {
    let k = kernels();
    for style in [RopeStyle::Adjacent, RopeStyle::HalfSplit] {
        // Rotary on the first quarter of each head (as phi-style models), prefill-sized chunk.
        check(k, style, 1e4, 2, 64, 16, 40, 33, &[0, 1000]);
        check(k, style, 5e5, 5, 128, 64, 7, 7, &[32000]);
    }
}

#[test]
fn rope_without_subgroups() {
    let k = kernels_no_subgroup();
    check(k, RopeStyle::Adjacent, 1e4, 2, 64, 64, 3, 2, &[5, 30000]);
    check(k, RopeStyle::HalfSplit, 1e6, 2, 128, 128, 3, 3, &[12345]);
}

#[test]
fn rope_rejects_bad_shapes() {
    let k = kernels();
    let g = &k.gpu;
    let x = g.storage_buffer("x", 4 * 64 * 2).unwrap();
    g.poison(&x);
    let stepb = g.uniform("step", &step(0, 1)).unwrap();
    let freq = g.upload("f", &rope::inv_freq(1e4, 64)).unwrap();
    let s = RopeStyle::HalfSplit;
    let shape = |r: wick::Result<_>| matches!(r, Err(wick::Error::Shape(_)));
    assert!(shape(rope::rope(k, &x, &stepb, &freq, 1, 2, 64, 63, s)));
    assert!(shape(rope::rope(k, &x, &stepb, &freq, 1, 2, 64, 66, s)));
    assert!(shape(rope::rope(k, &x, &stepb, &freq, 2, 2, 64, 64, s)));
    assert!(shape(rope::rope(k, &x, &stepb, &freq, 1, 2, 128, 128, s)));
    assert!(rope::rope(k, &x, &stepb, &freq, 1, 2, 64, 64, s).is_ok());
}
