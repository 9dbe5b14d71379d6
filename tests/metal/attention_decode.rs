//! attention_decode.metal in the host emulation.

use crate::emulator::{
    assert_runs_every_kernel, emulation_rng, f32_bytes, f32s, poison_bytes, u32_bytes, uniform,
    Emulator,
};
use crate::sources::{clang_or_skip, read, root};

/// A cache `[n_kv_heads][capacity][head_dim]` of f16: random at positions below `len`, NaN
/// after (a read past the live length shows as NaN).
pub(crate) fn attention_cache(
    rng: &mut impl rand::Rng,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
) -> Vec<half::f16> {
    let mut c = Vec::with_capacity(n_kv_heads * capacity * head_dim);
    for _ in 0..n_kv_heads {
        for p in 0..capacity {
            for _ in 0..head_dim {
                c.push(if p < len {
                    wick::reference::kv_cache::to_f16(rng.random_range(-1.0..=1.0))
                } else {
                    half::f16::NAN
                });
            }
        }
    }
    c
}

/// The WGSL merge pass on the host (f64): per head, the splits' unnormalised outputs `o` and
/// their (running max m in the exp2 domain, sum l), rescaled to the largest m.
pub(crate) fn merge_partials(
    partials: &[f32],
    n_heads: usize,
    n_splits: usize,
    head_dim: usize,
) -> Vec<f32> {
    let ml = &partials[n_heads * n_splits * head_dim..];
    let mut out = vec![0.0f32; n_heads * head_dim];
    for h in 0..n_heads {
        let ps = |s: usize| h * n_splits + s;
        let m_max = (0..n_splits)
            .map(|s| ml[2 * ps(s)] as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut l = 0.0f64;
        let mut o = vec![0.0f64; head_dim];
        for s in 0..n_splits {
            let a = (ml[2 * ps(s)] as f64 - m_max).exp2();
            l += a * ml[2 * ps(s) + 1] as f64;
            for (d, od) in o.iter_mut().enumerate() {
                *od += a * partials[ps(s) * head_dim + d] as f64;
            }
        }
        for (d, od) in o.iter().enumerate() {
            out[h * head_dim + d] = (od / l) as f32;
        }
    }
    out
}

/// metal_overrides/attention_decode.metal on the host emulation: every entry (one per head
/// dim, read from the decode specs of `attention::native_specs`), GQA groups from 1 to 8 (odd
/// ones leave some threads of the p.V step idle), one key, a tile remainder (tiles hold 32
/// keys) and several tiles, one split (normalised rows, DIRECT) and three (the unnormalised
/// partials and their (m, l), merged here as the WGSL merge pass does, including empty
/// splits), a peaky softmax for the running-max rescale; against the CPU reference on the same
/// f16 cache, whose slots past the live length are NaN. Bound as tests/kernels/attention.rs:
/// 2e-5 absolute plus 2e-5 relative (f32 dot products and exp2 against f64; one key dropped
/// or a rescale skipped moves outputs by ~1e-3).
#[test]
pub(crate) fn attention_decode_metal_matches_the_reference_in_host_emulation() {
    use wick::kernels::attention::{self, AttentionParams, FLAG_DIRECT};
    use wick::kernels::StepParams;
    use wick::reference;
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let src = read(
        &root()
            .join("metal_overrides")
            .join("attention_decode.metal"),
    );
    let emu = Emulator::build(&clang, &src);
    let mut rng = emulation_rng();
    let mut entries = std::collections::BTreeSet::new();
    let mut worst = 0.0f32;
    let capacity = 128;
    let decode = attention::native_specs()
        .into_iter()
        .filter(|s| s.op == "attention_decode");
    for spec in decode {
        let entry = spec.native_metal.expect("a Metal entry").entry;
        let head_dim = spec
            .constants
            .iter()
            .find(|(n, _)| *n == "HD")
            .map(|(_, v)| *v as usize)
            .expect("HD");
        // (query heads, KV heads, q scale): two GQA groups per head dim, groups 1 to 8.
        let configs: &[(usize, usize, f32)] = match head_dim {
            32 => &[(6, 2, 2.0), (4, 4, 2.0)],
            64 => &[(16, 2, 2.0), (5, 1, 12.0)],
            _ => &[(8, 2, 2.0), (2, 2, 3.0)],
        };
        for &(n_heads, n_kv_heads, q_scale) in configs {
            let max_len = 100;
            let ck = attention_cache(&mut rng, n_kv_heads, head_dim, capacity, max_len);
            let cv = attention_cache(&mut rng, n_kv_heads, head_dim, capacity, max_len);
            let scale = 1.0 / (head_dim as f32).sqrt();
            for n_splits in [1usize, 3] {
                for kv_len in [1usize, 33, max_len] {
                    let q = uniform(&mut rng, n_heads * head_dim, q_scale);
                    let direct = n_splits == 1;
                    let params = AttentionParams {
                        n_heads: n_heads as u32,
                        n_splits: n_splits as u32,
                        capacity: capacity as u32,
                        max_tokens: 1,
                        scale_log2e: scale * std::f32::consts::LOG2_E,
                        flags: if direct { FLAG_DIRECT } else { 0 },
                        group: (n_heads / n_kv_heads) as u32,
                        _pad: 0,
                    };
                    let step = StepParams {
                        pos: (kv_len - 1) as u32,
                        n_tokens: 1,
                        kv_len: kv_len as u32,
                        ..Default::default()
                    };
                    let out_len = if direct {
                        n_heads * head_dim
                    } else {
                        n_heads * n_splits * (head_dim + 2)
                    };
                    let mut bufs = vec![
                        bytemuck::bytes_of(&params).to_vec(),
                        bytemuck::bytes_of(&step).to_vec(),
                        f32_bytes(&q),
                        u32_bytes(&reference::kv_cache::pack(&ck)),
                        u32_bytes(&reference::kv_cache::pack(&cv)),
                        poison_bytes(out_len),
                    ];
                    emu.run(
                        entry,
                        [n_kv_heads as u32, n_splits as u32, 1],
                        [128, 1, 1],
                        &mut bufs,
                    );
                    entries.insert(entry.to_string());
                    let what = format!(
                        "{entry} heads {n_heads}/{n_kv_heads} kv_len {kv_len} splits {n_splits}"
                    );
                    let raw = f32s(&bufs[5]);
                    // Every partial (or row) is written, and nothing past the live length leaks.
                    if let Some(i) = raw.iter().position(|v| !v.is_finite()) {
                        panic!("{what}: output word {i} is {} (never written?)", raw[i]);
                    }
                    let got = if direct {
                        raw
                    } else {
                        merge_partials(&raw, n_heads, n_splits, head_dim)
                    };
                    let cache = reference::attention::Cache {
                        k: &ck,
                        v: &cv,
                        n_kv_heads,
                        head_dim,
                        capacity,
                    };
                    let want =
                        reference::attention::attention_decode(&q, &cache, kv_len, n_heads, scale);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let d = (g - w).abs();
                        assert!(
                            d <= 2e-5 + 2e-5 * w.abs(),
                            "{what}: element {i}: got {g} want {w}"
                        );
                        worst = worst.max(d);
                    }
                }
            }
        }
    }
    assert_runs_every_kernel(&src, &entries);
    eprintln!("attention_decode.metal (host emulation): max |d| = {worst:.2e}");
}
