//! attention_prefill.metal in the host emulation.

use crate::attention_decode::attention_cache;
use crate::emulator::{
    assert_runs_every_kernel, assert_within, emulation_rng, f32_bytes, f32s, poison_bytes,
    u32_bytes, uniform, Emulator,
};
use crate::sources::{clang_or_skip, read, root};

/// Query rows per threadgroup of the kernel (the dispatch's `64 / G` tokens x G heads).
const ROWS: usize = 64;

/// One prefill step: heads, the cached prefix `pos`, live tokens `n_tokens` of a grid built
/// for `max_tokens`, and the q scale.
struct Case {
    n_heads: usize,
    n_kv_heads: usize,
    pos: usize,
    n_tokens: usize,
    max_tokens: usize,
    q_scale: f32,
}

/// metal_overrides/attention_prefill.metal on the host emulation: every entry (one per head dim,
/// read from `attention::native_specs`), against `reference::attention::attention_prefill` on
/// the same f16 cache, whose slots past the live length are NaN (a key read past the end
/// shows), into poisoned outputs (rows past n_tokens must stay poisoned). Shapes: GQA groups 1,
/// 3 (a threadgroup of 21 tokens, row 63 idle), 4 and 8, no prefix and cached prefixes, live
/// tokens that leave a partial last threadgroup (and one threadgroup with none), key ends inside
/// a group of 8 keys (the staged group) and on a tile boundary. Bound 4e-3 x max |want|: q
/// and P are rounded to half once, K and V are half already (a dropped key or a skipped rescale
/// moves outputs by ~1e-2). The last case has queries 16x larger: scores then span tens of
/// log2 units, so the lazy max moves (the rescale path runs) and the half rounding of q costs
/// 2^-11 of scores 16x larger, hence a looser bound (3e-2, as `wick kernels check` allows the
/// native prefill for the same case).
#[test]
pub(crate) fn attention_prefill_metal_matches_the_reference_in_host_emulation() {
    use wick::kernels::attention::{self, AttentionParams};
    use wick::kernels::StepParams;
    use wick::reference;
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let src = read(
        &root()
            .join("metal_overrides")
            .join("attention_prefill.metal"),
    );
    let emu = Emulator::build(&clang, &src);
    let mut rng = emulation_rng();
    let mut entries = std::collections::BTreeSet::new();
    let capacity = 136;
    let cases = [
        Case {
            n_heads: 2,
            n_kv_heads: 2,
            pos: 0,
            n_tokens: 70,
            max_tokens: 80,
            q_scale: 2.0,
        },
        Case {
            n_heads: 6,
            n_kv_heads: 2,
            pos: 37,
            n_tokens: 50,
            max_tokens: 60,
            q_scale: 2.0,
        },
        Case {
            n_heads: 8,
            n_kv_heads: 2,
            pos: 100,
            n_tokens: 19,
            max_tokens: 40,
            q_scale: 2.0,
        },
        Case {
            n_heads: 8,
            n_kv_heads: 1,
            pos: 3,
            n_tokens: 13,
            max_tokens: 13,
            q_scale: 2.0,
        },
        Case {
            n_heads: 4,
            n_kv_heads: 2,
            pos: 20,
            n_tokens: 45,
            max_tokens: 48,
            q_scale: 32.0,
        },
    ];
    let specs: Vec<_> = attention::native_specs()
        .into_iter()
        .filter(|s| s.op == "attention_prefill")
        .collect();
    assert_eq!(specs.len(), attention::PREFILL_COOP_HEAD_DIMS.len());
    for spec in specs {
        let native = spec.native_metal.expect("a Metal entry");
        assert_eq!(native.workgroup_size, [128, 1, 1]);
        // Apple GPUs give a threadgroup 32 KiB.
        assert!(native.needs.workgroup_storage <= 32768, "{}", native.entry);
        let entry = native.entry;
        let head_dim = spec
            .constants
            .iter()
            .find(|(n, _)| *n == "HD")
            .map(|(_, v)| *v as usize)
            .expect("HD");
        for c in &cases {
            let group = c.n_heads / c.n_kv_heads;
            let kv_len = c.pos + c.n_tokens;
            let ck = attention_cache(&mut rng, c.n_kv_heads, head_dim, capacity, kv_len);
            let cv = attention_cache(&mut rng, c.n_kv_heads, head_dim, capacity, kv_len);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let row = c.n_heads * head_dim;
            let q = uniform(&mut rng, c.max_tokens * row, c.q_scale);
            let params = AttentionParams {
                n_heads: c.n_heads as u32,
                n_splits: 1,
                capacity: capacity as u32,
                max_tokens: c.max_tokens as u32,
                scale_log2e: scale * std::f32::consts::LOG2_E,
                flags: 0,
                group: group as u32,
                _pad: 0,
            };
            let step = StepParams {
                pos: c.pos as u32,
                n_tokens: c.n_tokens as u32,
                kv_len: kv_len as u32,
                ..Default::default()
            };
            let mut bufs = vec![
                bytemuck::bytes_of(&params).to_vec(),
                bytemuck::bytes_of(&step).to_vec(),
                f32_bytes(&q),
                u32_bytes(&reference::kv_cache::pack(&ck)),
                u32_bytes(&reference::kv_cache::pack(&cv)),
                poison_bytes(c.max_tokens * row),
            ];
            let grid = [
                c.n_kv_heads as u32,
                c.max_tokens.div_ceil(ROWS / group) as u32,
                1,
            ];
            emu.run(entry, grid, [128, 1, 1], &mut bufs);
            entries.insert(entry.to_string());
            let got = f32s(&bufs[5]);
            let cache = reference::attention::Cache {
                k: &ck,
                v: &cv,
                n_kv_heads: c.n_kv_heads,
                head_dim,
                capacity,
            };
            let mut want = reference::attention::attention_prefill(
                &q,
                &cache,
                (c.pos, c.n_tokens),
                c.n_heads,
                scale,
            );
            let max_w = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            // Rows past n_tokens: the poison, untouched.
            want.resize(got.len(), f32::from_bits(wick::gpu::POISON));
            let rel = if c.q_scale > 2.0 { 3e-2 } else { 4e-3 };
            let what = format!(
                "{entry} heads {}/{} pos {} tokens {}/{} q scale {}",
                c.n_heads, c.n_kv_heads, c.pos, c.n_tokens, c.max_tokens, c.q_scale
            );
            let d = assert_within(&what, &got, &want, rel * max_w);
            eprintln!(
                "{what} (host emulation): max |d| / max |want| = {:.2e}",
                d / max_w
            );
        }
    }
    assert_runs_every_kernel(&src, &entries);
}
