use crate::support::*;
use half::f16;
use rand::Rng;
use wick::kernels::kv_cache::{self, CacheShape, KvPair};
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
#[allow(clippy::too_many_arguments)]
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
    let bytes = kv_cache::cache_bytes(n_kv_heads, head_dim, capacity);
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
        .storage_buffer("cache", kv_cache::cache_bytes(2, 64, 8))
        .unwrap();
    let short = g
        .storage_buffer("short", kv_cache::cache_bytes(2, 64, 7))
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
            capacity: 8
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
            capacity: 8
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
            capacity: 8
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
            capacity: 8
        },
        1
    )
    .is_ok());
}
