use crate::support::*;
use wick::kernels::kv_cache::KvType;
use wick::kernels::rope::{self, RopeShape, RopeTables};
use wick::kernels::{Kernels, StepParams};
use wick::model::RopeStyle;
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
        k,
        &xb,
        n_heads,
        RopeTables {
            step: &stepb,
            inv_freq: &freq,
        },
        &RopeShape {
            head_dim,
            rot_dim,
            half_split: style.half_split(),
        },
        max_tokens,
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
        let want = reference::rope::rope(
            &x[..live],
            pos,
            n_heads,
            head_dim,
            &want_freq,
            style == RopeStyle::HalfSplit,
        );
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
    assert!(shape(rope::rope(
        k,
        &x,
        2,
        RopeTables {
            step: &stepb,
            inv_freq: &freq
        },
        &RopeShape {
            head_dim: 64,
            rot_dim: 63,
            half_split: s.half_split()
        },
        1
    )));
    assert!(shape(rope::rope(
        k,
        &x,
        2,
        RopeTables {
            step: &stepb,
            inv_freq: &freq
        },
        &RopeShape {
            head_dim: 64,
            rot_dim: 66,
            half_split: s.half_split()
        },
        1
    )));
    assert!(shape(rope::rope(
        k,
        &x,
        2,
        RopeTables {
            step: &stepb,
            inv_freq: &freq
        },
        &RopeShape {
            head_dim: 64,
            rot_dim: 64,
            half_split: s.half_split()
        },
        2
    )));
    assert!(shape(rope::rope(
        k,
        &x,
        2,
        RopeTables {
            step: &stepb,
            inv_freq: &freq
        },
        &RopeShape {
            head_dim: 128,
            rot_dim: 128,
            half_split: s.half_split()
        },
        1
    )));
    assert!(rope::rope(
        k,
        &x,
        2,
        RopeTables {
            step: &stepb,
            inv_freq: &freq
        },
        &RopeShape {
            head_dim: 64,
            rot_dim: 64,
            half_split: s.half_split()
        },
        1
    )
    .is_ok());
}

/// The fused RoPE + KV-cache write against the reference rope and kv_write: q and k rotated
/// in place (rope tolerance), the k cache within one f16 rounding of the reference-rotated
/// k, the v cache exact, every other cache word still poison. With a q8_0 cache: q rotated in
/// place, k left as it was, and both caches checked block by block against the reference
/// quantisation of the reference-rotated k (within the rope tolerance) and of v
/// ([`crate::kv_cache::check_q8_cache`]).
#[allow(clippy::too_many_arguments)]
fn check_rope_kv(
    k: &Kernels,
    kv_type: KvType,
    style: RopeStyle,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    max_tokens: usize,
    n_tokens: usize,
    pos: usize,
) {
    use half::f16;
    use wick::kernels::attention::AttentionShape;
    use wick::kernels::kv_cache::{self, KvPair};
    use wick::kernels::rope::RopeKvBuffers;
    let mut r = rng();
    let g = &k.gpu;
    let (qrow, kvrow) = (n_heads * head_dim, n_kv_heads * head_dim);
    let q = rand_vec(&mut r, max_tokens * qrow, 1.0);
    let kn = rand_vec(&mut r, max_tokens * kvrow, 1.0);
    let vn = rand_vec(&mut r, max_tokens * kvrow, 3.0);
    let (qb, kb, vb) = (
        g.upload("q", &q).unwrap(),
        g.upload("k", &kn).unwrap(),
        g.upload("v", &vn).unwrap(),
    );
    let bytes = kv_cache::cache_bytes(kv_type, n_kv_heads, head_dim, capacity);
    let (ck, cv) = (
        g.storage_buffer("ck", bytes).unwrap(),
        g.storage_buffer("cv", bytes).unwrap(),
    );
    g.poison(&ck);
    g.poison(&cv);
    let stepb = g.uniform("step", &step(pos, n_tokens)).unwrap();
    let theta = 1e4;
    let freq = g.upload("f", &rope::inv_freq(theta, head_dim)).unwrap();
    let d = rope::rope_kv(
        k,
        &RopeKvBuffers {
            q: &qb,
            new: KvPair { k: &kb, v: &vb },
            cache: KvPair { k: &ck, v: &cv },
        },
        RopeTables {
            step: &stepb,
            inv_freq: &freq,
        },
        &AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            capacity,
            scale: 1.0,
            kv_type,
        },
        &RopeShape {
            head_dim,
            rot_dim: head_dim,
            half_split: style.half_split(),
        },
        max_tokens,
    )
    .unwrap();
    k.run(&[&d]).unwrap();
    let wf = reference::rope::inv_freq_f64(theta as f64, head_dim);
    let what =
        format!("rope_kv {kv_type} {style:?} {n_heads}/{n_kv_heads} hd {head_dim} pos {pos}");
    let atol = std::f32::consts::SQRT_2 * ((pos + n_tokens) as f32 * 2f32.powi(-23) + 4e-6);
    let half_split = style == RopeStyle::HalfSplit;
    let want_q = reference::rope::rope(
        &q[..n_tokens * qrow],
        pos,
        n_heads,
        head_dim,
        &wf,
        half_split,
    );
    let want_k = reference::rope::rope(
        &kn[..n_tokens * kvrow],
        pos,
        n_kv_heads,
        head_dim,
        &wf,
        half_split,
    );
    let got_q: Vec<f32> = g.read_vec(&qb).unwrap();
    let got_k: Vec<f32> = g.read_vec(&kb).unwrap();
    assert_close(
        &format!("{what} q"),
        &got_q[..n_tokens * qrow],
        &want_q,
        0.0,
        atol,
    );
    if kv_type == KvType::Q8_0 {
        assert!(
            got_k == kn,
            "{what}: k changed (the q8_0 kernel leaves it unrotated)"
        );
        let geo = (pos, n_kv_heads, head_dim, capacity);
        for (name, cache, new, tol) in [
            ("k", &ck, &want_k, atol),
            ("v", &cv, &vn[..n_tokens * kvrow].to_vec(), 0.0),
        ] {
            let got: Vec<u32> = g.read_vec(cache).unwrap();
            let e = crate::kv_cache::check_q8_cache(
                &format!("{what} cache_{name}"),
                &got,
                new,
                geo,
                tol,
            );
            eprintln!("{what} cache_{name}: max |dequantised - x| = {e:.3} scale");
        }
        return;
    }
    assert_close(
        &format!("{what} k"),
        &got_k[..n_tokens * kvrow],
        &want_k,
        0.0,
        atol,
    );
    let poison = reference::kv_cache::unpack(&[POISON]);
    for (name, cache, new, tol) in [
        ("k", &ck, &want_k, atol),
        ("v", &cv, &vn[..n_tokens * kvrow].to_vec(), 0.0),
    ] {
        let mut want = vec![f16::ZERO; n_kv_heads * capacity * head_dim];
        for c in want.chunks_mut(2) {
            c.copy_from_slice(&poison);
        }
        reference::kv_cache::kv_write(&mut want, new, pos, n_kv_heads, head_dim, capacity);
        let got = reference::kv_cache::unpack(&g.read_vec::<u32>(cache).unwrap());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            if b.to_bits() == poison[i % 2].to_bits() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{what}: cache_{name} element {i} changed"
                );
                continue;
            }
            let (x, y) = (a.to_f32(), b.to_f32());
            // One f16 rounding of values that may differ by the rope tolerance.
            let ulp = (y.abs() * 2f32.powi(-10)).max(2f32.powi(-24));
            assert!(
                (x - y).abs() <= tol + ulp,
                "{what}: cache_{name} element {i}: got {x} want {y}"
            );
        }
    }
}

#[test]
fn rope_kv_fused_matches_rope_then_kv_write() {
    let k = kernels();
    let f16 = KvType::F16;
    for style in [RopeStyle::Adjacent, RopeStyle::HalfSplit] {
        check_rope_kv(k, f16, style, 9, 3, 64, 48, 1, 1, 17);
        check_rope_kv(k, f16, style, 4, 4, 32, 20, 8, 5, 3);
        check_rope_kv(k, f16, style, 8, 2, 128, 70, 16, 11, 60);
        // A chunk running past the end of the cache: q, k rotated, overflow not written.
        check_rope_kv(k, f16, style, 2, 1, 64, 10, 8, 8, 6);
    }
    check_rope_kv(
        kernels_no_subgroup(),
        f16,
        RopeStyle::HalfSplit,
        4,
        2,
        64,
        16,
        2,
        2,
        1,
    );
    // Unsupported head shapes are refused (the forward pass falls back to rope + kv_write).
    assert!(!rope::rope_kv_supported(64, 32));
    assert!(!rope::rope_kv_supported(66, 66));
}

/// The fused RoPE + write into a q8_0 cache: both pair styles, head dims of one to four
/// blocks (under the half split a block's RoPE partners lie in other blocks), decode and
/// prefill chunks, a chunk running past the cache.
#[test]
fn rope_kv_q8_matches_rope_then_q8_write() {
    let k = kernels();
    let q8 = KvType::Q8_0;
    for style in [RopeStyle::Adjacent, RopeStyle::HalfSplit] {
        check_rope_kv(k, q8, style, 9, 3, 64, 48, 1, 1, 17);
        check_rope_kv(k, q8, style, 4, 4, 32, 20, 8, 5, 3);
        check_rope_kv(k, q8, style, 8, 2, 128, 70, 16, 11, 60);
        check_rope_kv(k, q8, style, 2, 1, 64, 10, 8, 8, 6);
    }
    check_rope_kv(
        kernels_no_subgroup(),
        q8,
        RopeStyle::HalfSplit,
        4,
        2,
        96,
        16,
        2,
        2,
        1,
    );
}
