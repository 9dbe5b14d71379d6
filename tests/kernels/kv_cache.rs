use crate::support::*;
use half::f16;
use rand::Rng;
use wick::kernels::kv_cache::{self, CacheShape, KvPair, KvType};
use wick::kernels::{Kernels, StepParams};
use wick::reference;

pub fn step(pos: usize, n_tokens: usize) -> StepParams {
    StepParams {
        pos: pos as u32,
        n_tokens: n_tokens as u32,
        kv_len: (pos + n_tokens) as u32,
        ..Default::default()
    }
}

/// Writes `n_tokens` rows at `pos` into poisoned caches and checks every cache word: the
/// written ones against the reference f16 rounding, all others still poison.
fn check(
    k: &Kernels,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    max_tokens: usize,
    n_tokens: usize,
    pos: usize,
) {
    let mut r = rng();
    let g = &k.gpu;
    let row = n_kv_heads * head_dim;
    let mut kn = rand_vec(&mut r, max_tokens * row, 3.0);
    let vn = rand_vec(&mut r, max_tokens * row, 3.0);
    // A few values past the f16 range: they must clamp to +-65504, not become inf.
    for _ in 0..3 {
        let i = r.random_range(0..n_tokens * row);
        kn[i] = if r.random() { 1e6 } else { -1e6 };
    }
    let kb = g.upload("k_new", &kn).unwrap();
    let vb = g.upload("v_new", &vn).unwrap();
    let bytes = kv_cache::cache_bytes(KvType::F16, n_kv_heads, head_dim, capacity);
    let ck = g.storage_buffer("cache_k", bytes).unwrap();
    let cv = g.storage_buffer("cache_v", bytes).unwrap();
    g.poison(&ck);
    g.poison(&cv);
    let stepb = g.uniform("step", &step(pos, n_tokens)).unwrap();
    let d = kv_cache::kv_write(
        k,
        KvPair { k: &kb, v: &vb },
        KvPair { k: &ck, v: &cv },
        &stepb,
        &CacheShape {
            n_kv_heads,
            head_dim,
            capacity,
            kv_type: KvType::F16,
        },
        max_tokens,
    )
    .unwrap();
    k.run(&[&d]).unwrap();
    for (name, cache, new) in [("k", &ck, &kn), ("v", &cv, &vn)] {
        let got: Vec<u32> = g.read_vec(cache).unwrap();
        let poison = reference::kv_cache::unpack(&[POISON])[..2].to_vec();
        let mut want = vec![f16::ZERO; n_kv_heads * capacity * head_dim];
        for c in want.chunks_mut(2) {
            c.copy_from_slice(&poison);
        }
        reference::kv_cache::kv_write(
            &mut want,
            &new[..n_tokens * row],
            pos,
            n_kv_heads,
            head_dim,
            capacity,
        );
        let want = reference::kv_cache::pack(&want);
        assert_eq!(got.len(), want.len());
        for (i, (&gw, &ww)) in got.iter().zip(&want).enumerate() {
            // Exact: pack2x16float rounds to nearest even on lavapipe (and on Metal and the
            // Vulkan drivers we know). WGSL also allows the other neighbour; a backend doing
            // that would fail here by one f16 ulp, and the attention reference would need it.
            assert_eq!(
                gw,
                ww,
                "cache_{name} word {i} (head {}, position {}, dims {}..): got {gw:#010x} want {ww:#010x}",
                i / (capacity * head_dim / 2),
                i / (head_dim / 2) % capacity,
                i % (head_dim / 2) * 2
            );
        }
    }
}

#[test]
fn kv_write_offsets() {
    let k = kernels();
    check(k, 1, 32, 16, 1, 1, 0);
    check(k, 2, 64, 40, 1, 1, 13);
    check(k, 4, 128, 24, 8, 5, 7);
    // Prefill chunk into a cached prefix, fewer live rows than the grid covers.
    check(k, 3, 64, 64, 16, 11, 30);
    // A chunk that runs past the end of the cache: the overflow is dropped.
    check(k, 2, 32, 20, 8, 8, 16);
}

#[test]
fn kv_write_without_subgroups() {
    check(kernels_no_subgroup(), 2, 64, 32, 4, 3, 9);
}

#[test]
fn kv_write_rejects_bad_shapes() {
    let k = kernels();
    let g = &k.gpu;
    let new = g.storage_buffer("new", 2 * 64 * 4).unwrap();
    let cache = g
        .storage_buffer("cache", kv_cache::cache_bytes(KvType::F16, 2, 64, 8))
        .unwrap();
    let short = g
        .storage_buffer("short", kv_cache::cache_bytes(KvType::F16, 2, 64, 7))
        .unwrap();
    let stepb = g.uniform("step", &step(0, 1)).unwrap();
    let shape = |r: wick::Result<_>| matches!(r, Err(wick::Error::Shape(_)));
    // Odd head_dim.
    assert!(shape(kv_cache::kv_write(
        k,
        KvPair { k: &new, v: &new },
        KvPair {
            k: &cache,
            v: &cache
        },
        &stepb,
        &CacheShape {
            n_kv_heads: 2,
            head_dim: 63,
            capacity: 8,
            kv_type: KvType::F16,
        },
        1
    )));
    // Cache too small for the capacity.
    assert!(shape(kv_cache::kv_write(
        k,
        KvPair { k: &new, v: &new },
        KvPair {
            k: &cache,
            v: &short
        },
        &stepb,
        &CacheShape {
            n_kv_heads: 2,
            head_dim: 64,
            capacity: 8,
            kv_type: KvType::F16,
        },
        1
    )));
    // Input rows too short for max_tokens.
    assert!(shape(kv_cache::kv_write(
        k,
        KvPair { k: &new, v: &new },
        KvPair {
            k: &cache,
            v: &cache
        },
        &stepb,
        &CacheShape {
            n_kv_heads: 2,
            head_dim: 64,
            capacity: 8,
            kv_type: KvType::F16,
        },
        2
    )));
    assert!(kv_cache::kv_write(
        k,
        KvPair { k: &new, v: &new },
        KvPair {
            k: &cache,
            v: &cache
        },
        &stepb,
        &CacheShape {
            n_kv_heads: 2,
            head_dim: 64,
            capacity: 8,
            kv_type: KvType::F16,
        },
        1
    )
    .is_ok());
}

/// Checks a q8_0 cache read back from the GPU against the reference quantisation of `new`
/// (f32 `[n_tokens][n_kv_heads * head_dim]`) at positions `pos..`, every block of a written
/// row:
/// - its scale within 1e-6 relative of max|x| / 127 of the reference values (WGSL's f32
///   division is within 2.5 ulp, 3e-7),
/// - every code equal to the reference's, or one off where the scaled value lies within 1e-3
///   of a rounding tie (the two divisions may land on either side),
/// - every dequantised value within scale / 2 (+1e-5 relative) of the value written, the
///   rounding bound attention's tolerances are derived from, plus a few ulps of the value
///   (f32 rounding of the dequantisation on a rounding tie),
///
/// and every word of a row not written (both planes) still poison. `atol` widens the code and
/// value comparisons for inputs known only to within it (the fused RoPE's rotated keys).
pub fn check_q8_cache(
    what: &str,
    got: &[u32],
    new: &[f32],
    (pos, n_kv_heads, head_dim, capacity): (usize, usize, usize, usize),
    atol: f32,
) -> f32 {
    use reference::kv_cache::{q8_block, Q8Cache, Q8_BLOCK};
    let cache = Q8Cache::from_words(got, n_kv_heads, head_dim, capacity);
    let n_codes = n_kv_heads * capacity * head_dim / 4;
    let nb = head_dim / Q8_BLOCK;
    let row_len = n_kv_heads * head_dim;
    let n_tokens = new.len() / row_len;
    let mut worst = 0.0f32;
    for h in 0..n_kv_heads {
        for p in 0..capacity {
            let r = h * capacity + p;
            let written = p >= pos && p - pos < n_tokens;
            if !written {
                let words = &got[r * head_dim / 4..(r + 1) * head_dim / 4];
                let scales = &got[n_codes + r * nb..n_codes + (r + 1) * nb];
                assert!(
                    words.iter().chain(scales).all(|&w| w == POISON),
                    "{what}: head {h} position {p} was written"
                );
                continue;
            }
            let t = p - pos;
            let src = &new[t * row_len + h * head_dim..t * row_len + (h + 1) * head_dim];
            for (b, x) in src.chunks(Q8_BLOCK).enumerate() {
                let (d_ref, codes_ref) = q8_block(x);
                let d = cache.scales[r * nb + b];
                let at = format!("{what}: head {h} position {p} block {b}");
                assert!(
                    (d - d_ref).abs() <= 1e-6 * d_ref + atol / 127.0,
                    "{at}: scale {d}, want {d_ref}"
                );
                for (i, &xi) in x.iter().enumerate() {
                    let xi = xi.clamp(-65504.0, 65504.0);
                    let c = cache.codes[r * head_dim + b * Q8_BLOCK + i];
                    let c_ref = codes_ref[i];
                    if c != c_ref {
                        let scaled = xi / d_ref;
                        let tie = (scaled - scaled.floor() - 0.5).abs() < 1e-3 + atol / d_ref;
                        assert!(
                            tie && (c as i32 - c_ref as i32).abs() == 1,
                            "{at} value {i}: code {c}, want {c_ref} (x {xi}, scale {d_ref})"
                        );
                    }
                    let err = (c as f32 * d - xi).abs();
                    // f32 rounding of `c * d` and of the subtraction is relative to |x|, not
                    // to d: a value on a rounding tie (x / d = n + 1/2) lands a few ulps of x
                    // past d / 2.
                    assert!(
                        err <= d / 2.0 * (1.0 + 1e-5) + 4.0 * f32::EPSILON * xi.abs() + atol,
                        "{at} value {i}: {} dequantised, x {xi}: error {err} > scale / 2 = {}",
                        c as f32 * d,
                        d / 2.0
                    );
                    if d > 0.0 {
                        worst = worst.max(err / d);
                    }
                }
            }
        }
    }
    worst
}

/// [`check`] for the q8_0 cache: `n_tokens` rows at `pos` quantised into poisoned caches,
/// checked block by block ([`check_q8_cache`]).
fn check_q8(
    k: &Kernels,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    max_tokens: usize,
    n_tokens: usize,
    pos: usize,
) {
    let mut r = rng();
    let g = &k.gpu;
    let row = n_kv_heads * head_dim;
    let mut kn = rand_vec(&mut r, max_tokens * row, 3.0);
    let mut vn = rand_vec(&mut r, max_tokens * row, 3.0);
    // Values past the f16 range clamp to +-65504 (as in the f16 cache) rather than making an
    // infinite scale, and an all-zero block gets scale 0 and zero codes.
    for _ in 0..3 {
        let i = r.random_range(0..n_tokens * row);
        kn[i] = if r.random() { 1e6 } else { -1e6 };
    }
    let zero_block = r.random_range(0..n_tokens * row / 32) * 32;
    vn[zero_block..zero_block + 32].fill(0.0);
    let kb = g.upload("k_new", &kn).unwrap();
    let vb = g.upload("v_new", &vn).unwrap();
    let shape = CacheShape {
        n_kv_heads,
        head_dim,
        capacity,
        kv_type: KvType::Q8_0,
    };
    let bytes = shape.bytes();
    assert_eq!(
        bytes,
        (n_kv_heads * capacity * (head_dim + head_dim / 32 * 4)) as u64
    );
    let ck = g.storage_buffer("cache_k", bytes).unwrap();
    let cv = g.storage_buffer("cache_v", bytes).unwrap();
    g.poison(&ck);
    g.poison(&cv);
    let stepb = g.uniform("step", &step(pos, n_tokens)).unwrap();
    let d = kv_cache::kv_write(
        k,
        KvPair { k: &kb, v: &vb },
        KvPair { k: &ck, v: &cv },
        &stepb,
        &shape,
        max_tokens,
    )
    .unwrap();
    assert_eq!(d.pipeline.op, "kv_write_q8");
    k.run(&[&d]).unwrap();
    let geo = (pos, n_kv_heads, head_dim, capacity);
    let what = format!("kv_write q8_0 {n_kv_heads} x {head_dim} pos {pos}");
    for (name, cache, new) in [("k", &ck, &kn), ("v", &cv, &vn)] {
        let got: Vec<u32> = g.read_vec(cache).unwrap();
        let e = check_q8_cache(
            &format!("{what} cache_{name}"),
            &got,
            &new[..n_tokens * row],
            geo,
            0.0,
        );
        eprintln!("{what} cache_{name}: max |dequantised - x| = {e:.3} scale");
    }
}

#[test]
fn kv_write_q8_offsets() {
    let k = kernels();
    check_q8(k, 1, 32, 16, 1, 1, 0);
    check_q8(k, 2, 64, 40, 1, 1, 13);
    check_q8(k, 4, 128, 24, 8, 5, 7);
    // Prefill chunk into a cached prefix, fewer live rows than the grid covers.
    check_q8(k, 3, 64, 64, 16, 11, 30);
    // A chunk that runs past the end of the cache: the overflow is dropped.
    check_q8(k, 2, 32, 20, 8, 8, 16);
    check_q8(kernels_no_subgroup(), 2, 96, 32, 4, 3, 9);
}

#[test]
fn kv_q8_type_names_and_head_dims() {
    assert_eq!("q8_0".parse::<KvType>().unwrap(), KvType::Q8_0);
    assert_eq!("F16".parse::<KvType>().unwrap(), KvType::F16);
    let e = "q4_0".parse::<KvType>().unwrap_err().to_string();
    assert!(e.contains("\"q4_0\"") && e.contains("f16 or q8_0"), "{e}");
    // q8_0: 64 code bytes + 2 scales of 4 bytes per row of 64, 0.5625 of f16's 128.
    assert_eq!(KvType::Q8_0.row_bytes(64), 72);
    assert_eq!(KvType::F16.row_bytes(64), 128);
    // A head_dim that is not whole blocks is refused with the reason.
    let k = kernels();
    let g = &k.gpu;
    let buf = g.storage_buffer("b", 1 << 16).unwrap();
    let stepb = g.uniform("step", &step(0, 1)).unwrap();
    let r = kv_cache::kv_write(
        k,
        KvPair { k: &buf, v: &buf },
        KvPair { k: &buf, v: &buf },
        &stepb,
        &CacheShape {
            n_kv_heads: 2,
            head_dim: 48,
            capacity: 8,
            kv_type: KvType::Q8_0,
        },
        1,
    );
    match r {
        Err(wick::Error::Shape(m)) => assert!(m.contains("multiple of 32"), "{m}"),
        other => panic!("head_dim 48 with q8_0: {other:?}"),
    }
}
