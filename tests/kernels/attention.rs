use crate::support::*;
use half::f16;
use rand::Rng;
use wick::kernels::attention::{AttentionBuffers, AttentionShape, DecodeForm};
use wick::kernels::kv_cache::{KvPair, KvType};
use wick::kernels::{attention, kv_cache, Kernels, StepParams, Variant};
use wick::reference;
use wick::reference::kv_cache::{pack, to_f16, unpack, Q8Cache};

fn step(pos: usize, n_tokens: usize) -> StepParams {
    StepParams {
        pos: pos as u32,
        n_tokens: n_tokens as u32,
        kv_len: (pos + n_tokens) as u32,
        ..Default::default()
    }
}

/// An f16 cache `[n_kv_heads][capacity][head_dim]` with random values at positions `0..len`
/// and the poison pattern (NaN in the high half) elsewhere, so a read past the live length
/// shows up as NaN.
fn random_cache(
    r: &mut impl Rng,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
) -> Vec<f16> {
    let poison = unpack(&[POISON]);
    let mut c = Vec::with_capacity(n_kv_heads * capacity * head_dim);
    for _ in 0..n_kv_heads {
        for p in 0..capacity {
            for d in 0..head_dim {
                c.push(if p < len {
                    to_f16(r.random_range(-1.0..=1.0))
                } else {
                    poison[d % 2]
                });
            }
        }
    }
    c
}

// Tolerance: K/V are f16 in both the kernel and the reference, so the only error is the
// kernel's f32 arithmetic (dot products over head_dim, exp2 of the scaled scores, sums over a
// few hundred keys) against the f64 reference. Its typical size is ~1e-6 relative (observed
// <= 1e-6 on lavapipe up to 390 keys and head_dim 128); 2e-5 of the output and of the V scale
// (|v| <= 1) leaves room for less exact exp2 on other GPUs. Dropping or adding one key out of
// 300, or a skipped rescale, moves outputs by ~1e-3 and fails it.
const RTOL: f32 = 2e-5;
const ATOL: f32 = 2e-5;

/// Head geometry of a check: query heads, KV heads, head size and cache capacity.
#[derive(Clone, Copy)]
struct Geo {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
}

impl Geo {
    fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Geo {
        Geo {
            n_heads,
            n_kv_heads,
            head_dim,
            capacity,
        }
    }

    /// The kernels' shape over a `kv_type` cache, with the usual 1/sqrt(head_dim) scale.
    fn shape(self, kv_type: KvType) -> AttentionShape {
        AttentionShape {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            capacity: self.capacity,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            kv_type,
        }
    }
}

/// Decode attention at each of `kv_lens` with one dispatch (only the step uniform changes),
/// for each split count.
fn check_decode(k: &Kernels, geo: Geo, splits: &[usize], kv_lens: &[usize], q_scale: f32) {
    let Geo {
        n_heads,
        n_kv_heads,
        head_dim,
        ..
    } = geo;
    // Both forms of pass 1; the lanes form wherever the adapter has subgroups (these head
    // shapes split over subgroups of 8 to 32), so it cannot be skipped silently.
    let lanes = attention::lanes_unfit(&k.gpu.caps, &geo.shape(KvType::F16));
    assert_eq!(
        lanes.is_none(),
        k.gpu.caps.subgroup,
        "lanes form at heads {n_heads}/{n_kv_heads} hd {head_dim}: {lanes:?}"
    );
    for form in [DecodeForm::Tiled, DecodeForm::Lanes] {
        if form == DecodeForm::Lanes && lanes.is_some() {
            continue;
        }
        check_decode_variant(k, None, form, geo, splits, kv_lens, q_scale);
    }
}

/// [`check_decode`], asserting that pass 1 runs `variant` (the merge pass is always WGSL).
fn check_decode_variant(
    k: &Kernels,
    variant: Option<Variant>,
    form: DecodeForm,
    geo: Geo,
    splits: &[usize],
    kv_lens: &[usize],
    q_scale: f32,
) {
    let Geo {
        n_heads,
        n_kv_heads,
        head_dim,
        capacity,
    } = geo;
    let mut r = rng();
    let g = &k.gpu;
    let max_len = *kv_lens.iter().max().unwrap();
    let ck = random_cache(&mut r, n_kv_heads, head_dim, capacity, max_len);
    let cv = random_cache(&mut r, n_kv_heads, head_dim, capacity, max_len);
    let ckb = g.upload("cache_k", &pack(&ck)).unwrap();
    let cvb = g.upload("cache_v", &pack(&cv)).unwrap();
    let qb = g
        .storage_buffer("q", (n_heads * head_dim * 4) as u64)
        .unwrap();
    let out = g
        .storage_buffer("out", (n_heads * head_dim * 4) as u64)
        .unwrap();
    let stepb = g.uniform("step", &step(0, 1)).unwrap();
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Every other split count merges through a partials buffer shared with the others (as a
    // decode step shares one across layers and split counts), sized for the largest and
    // poisoned by the previous runs.
    let max_ns = *splits.iter().max().unwrap();
    let shared = g
        .storage_buffer(
            "shared partials",
            attention::partials_bytes(n_heads, head_dim, max_ns),
        )
        .unwrap();
    for (i, &ns) in splits.iter().enumerate() {
        let partials = (i % 2 == 1).then_some(&shared);
        let io = AttentionBuffers {
            q: &qb,
            cache: KvPair { k: &ckb, v: &cvb },
            step: &stepb,
            out: &out,
        };
        let att = attention::attention_decode(k, &io, &geo.shape(KvType::F16), form, ns, partials)
            .unwrap();
        assert_eq!(att.dispatches.len(), if ns == 1 { 1 } else { 2 });
        if let Some(v) = variant {
            assert_eq!(
                att.dispatches[0].pipeline.variant, v,
                "heads {n_heads}/{n_kv_heads} hd {head_dim} splits {ns}: pass 1 variant"
            );
        }
        for &kv_len in kv_lens {
            let q = rand_vec(&mut r, n_heads * head_dim, q_scale);
            g.write(&qb, 0, &q);
            g.write(&stepb, 0, &[step(kv_len - 1, 1)]);
            g.poison(&out);
            k.run(&att.dispatches.iter().collect::<Vec<_>>()).unwrap();
            let cache = reference::attention::Cache {
                k: &ck,
                v: &cv,
                n_kv_heads,
                head_dim,
                capacity,
            };
            let want = reference::attention::attention_decode(&q, &cache, kv_len, n_heads, scale);
            let what = format!(
                "decode {form:?} heads {n_heads}/{n_kv_heads} hd {head_dim} kv_len {kv_len} splits {ns}"
            );
            let e = assert_close(&what, &g.read_vec(&out).unwrap(), &want, RTOL, ATOL);
            eprintln!("{what}: max error {e:.1e} of max |want|");
        }
    }
}

/// The family's check cases (what `wick kernels check` runs: decode with one split and
/// several, the merge pass, prefill, over either cache type) on every attention pipeline, and
/// on the native decode kernel where this adapter runs it. The tests below add what those
/// cases do not reach: one dispatch reused across lengths, a shared partials buffer, more
/// splits than keys, peaky softmax, head dim 32 and GQA up to 8, prefill through kv_write
/// with rows past the chunk, the q8_0 cache against the f32 values, and argument errors.
#[test]
fn attention_family_checks_pass() {
    let specs = family_pipelines(&attention::FAMILY);
    let r = run_family_checks(&specs, |_| f64::INFINITY);
    assert!(rows_of(&r, Variant::Portable) >= 2 * specs.len());
    // Where the native decode kernel is offered, every decode pipeline's three cases run on it
    // too (the cases' head shapes are native ones).
    let decode = specs.iter().filter(|s| s.op == "attention_decode").count();
    assert!(specs.iter().any(|s| s.has_native()));
    let native = match native_decode_offered(&kernels().gpu.caps) {
        true => 3 * decode,
        false => 0,
    };
    assert_eq!(rows_of(&r, Variant::Native), native, "native rows");
}

/// Where the native decode kernel ships for this backend and the adapter takes passthrough
/// shaders (on Metal: Apple GPUs only, whose simdgroups are 32 wide).
fn native_decode_offered(caps: &wick::gpu::Capabilities) -> bool {
    caps.passthrough_shaders
        && match caps.backend {
            wgpu::Backend::Vulkan => true,
            wgpu::Backend::Metal => caps.class == wick::gpu::AdapterClass::Apple,
            _ => false,
        }
}

#[test]
fn decode_gqa_head_dims_splits() {
    let k = kernels();
    // GQA ratio 1, head_dim 32.
    check_decode(k, Geo::new(4, 4, 32, 320), &[1, 4], &[1, 9, 300], 1.0);
    // Ratio 3, head_dim 64; more splits than keys at kv_len 1 and 9.
    check_decode(k, Geo::new(6, 2, 64, 320), &[1, 16], &[1, 9, 257], 2.0);
    // Ratio 4, head_dim 128, a split count that does not divide the length.
    check_decode(k, Geo::new(8, 2, 128, 400), &[1, 7], &[1, 33, 390], 3.0);
    // Peaky softmax (large q): exercises the running-max rescaling.
    check_decode(k, Geo::new(3, 1, 64, 200), &[3], &[150], 12.0);
}

#[test]
fn decode_split_count_follows_the_cached_length() {
    assert_eq!(attention::split_counts(64), [1, 2, 4, 8, 16, 32, 64]);
    assert_eq!(attention::split_counts(48), [1, 2, 4, 8, 16, 32, 48]);
    assert_eq!(attention::split_counts(1), [1]);
    let c = attention::split_counts(64);
    let rule128 = attention::SplitRule {
        keys: 128,
        min_splits: 1,
    };
    let at = |counts: &[usize], kv_len| {
        attention::decode_splits(counts.iter().copied(), kv_len, rule128)
    };
    // Fewer keys than two splits' worth: one split (no merge pass).
    assert_eq!(at(&c, 1), 1);
    assert_eq!(at(&c, 255), 1);
    assert_eq!(at(&c, 256), 2);
    assert_eq!(at(&c, 4096), 32);
    // Rounded up to a recorded count, capped by the largest.
    assert_eq!(at(&c, 3 * 128), 4);
    assert_eq!(at(&c, 1 << 20), 64);
    let c = attention::split_counts(48);
    assert_eq!(at(&c, 40 * 128), 48);
    // The default two forms, and a step built for one count only.
    assert_eq!(at(&[1, 64], 255), 1);
    assert_eq!(at(&[1, 64], 256), 64);
    assert_eq!(at(&[8], 1), 8);
    // A floor on the split count once past one split (NVIDIA's rule: 256 keys, 16 splits for
    // 8 KV heads): at least 16, then a split per 256 keys.
    let rule = attention::SplitRule {
        keys: 256,
        min_splits: 16,
    };
    let at = |kv_len| attention::decode_splits(c.iter().copied(), kv_len, rule);
    assert_eq!(at(511), 1);
    assert_eq!(at(512), 16);
    assert_eq!(at(4096), 16);
    assert_eq!(at(4097 + 256), 32);
    assert_eq!(at(1 << 20), 48);
}

#[test]
fn decode_with_chosen_splits() {
    let k = kernels();
    let ns = attention::choose_splits(&k.gpu.caps, 2, 256);
    assert!(
        (1..=4).contains(&ns),
        "256 keys give at most 4 splits of 64, got {ns}"
    );
    assert_eq!(attention::choose_splits(&k.gpu.caps, 8, 10), 1);
    check_decode(k, Geo::new(4, 2, 64, 256), &[ns], &[1, 100, 256], 2.0);
}

#[test]
fn decode_without_subgroups() {
    check_decode(
        kernels_no_subgroup(),
        Geo::new(6, 2, 64, 128),
        &[1, 5],
        &[1, 100],
        2.0,
    );
}

/// The native decode kernel (SPIR-V on Vulkan, MSL on Apple Metal) against the reference at
/// every head dim it has, GQA groups 1 to 8 (odd ones leave some invocations of its value step
/// idle), lengths of 1 key, tile remainders (its tiles hold 32 keys) and several tiles, with
/// one split (normalised output) and several (its partials through the WGSL merge).
#[test]
fn decode_native() {
    let k = kernels_native();
    let caps = &k.gpu.caps;
    if caps.backend == wgpu::Backend::Vulkan {
        assert!(
            caps.passthrough_shaders,
            "the Vulkan test device must offer PASSTHROUGH_SHADERS"
        );
    }
    // Where the kernel is offered it must run: no silent skip.
    let offered = native_decode_offered(caps);
    let probe = attention::decode_spec(caps, 8, 2, 128, true, KvType::F16).unwrap();
    let available = k.native_for(&probe).is_some();
    assert_eq!(
        available, offered,
        "native decode attention on {} ({}): the registry offers it: {available}, expected: \
         {offered}",
        caps.backend, caps.adapter_name
    );
    if !offered {
        eprintln!(
            "no native decode attention for backend {} ({}): nothing to check",
            caps.backend, caps.adapter_name
        );
        return;
    }
    let native = Some(Variant::Native);
    // head_dim 64: GQA 1 (8 keys per value-step invocation), several splits.
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(4, 4, 64, 320),
        &[1, 5],
        &[1, 31, 33, 300],
        2.0,
    );
    // head_dim 128: GQA 4, a split count that does not divide the length.
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(8, 2, 128, 400),
        &[1, 7],
        &[1, 33, 390],
        3.0,
    );
    // head_dim 128: GQA 8 (every invocation busy, rows in both halves of the row sets) and 1.
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(8, 1, 128, 160),
        &[1, 3],
        &[1, 65, 160],
        2.0,
    );
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(2, 2, 128, 160),
        &[1, 4],
        &[1, 97],
        2.0,
    );
    // head_dim 64: GQA 8 and an odd group (40 row words: 3 key slices, 8 invocations idle).
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(16, 2, 64, 200),
        &[1, 6],
        &[1, 47, 200],
        2.0,
    );
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(5, 1, 64, 200),
        &[1, 2],
        &[1, 70, 199],
        2.0,
    );
    // head_dim 32 (the synthetic checkpoints): GQA 2 and 3; more splits than keys.
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(4, 2, 32, 128),
        &[1, 16],
        &[1, 9, 128],
        2.0,
    );
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(6, 2, 32, 128),
        &[1, 3],
        &[1, 100],
        2.0,
    );
    // Peaky softmax (large q): exercises the running-max rescaling across tiles.
    check_decode_variant(
        k,
        native,
        DecodeForm::Tiled,
        Geo::new(4, 1, 64, 200),
        &[1, 3],
        &[150],
        12.0,
    );
}

/// Shapes the native decode kernel does not cover run the WGSL kernel under the global native
/// policy instead of failing: a head dim without a native module and a GQA group above 8.
#[test]
fn decode_native_falls_back_to_portable() {
    let k = kernels_native();
    let portable = Some(Variant::Portable);
    check_decode_variant(
        k,
        portable,
        DecodeForm::Tiled,
        Geo::new(4, 2, 96, 64),
        &[1, 2],
        &[1, 50],
        2.0,
    );
    check_decode_variant(
        k,
        portable,
        DecodeForm::Tiled,
        Geo::new(16, 1, 64, 64),
        &[1, 2],
        &[1, 40],
        2.0,
    );
}

/// Prefill of `n_tokens` (of a `max_tokens` grid) after a cached prefix of `pos` positions:
/// the chunk's K/V go through kv_write in the same pass as attention_prefill.
fn check_prefill(k: &Kernels, geo: Geo, max_tokens: usize, n_tokens: usize, pos: usize) {
    let Geo {
        n_heads,
        n_kv_heads,
        head_dim,
        capacity,
    } = geo;
    let mut r = rng();
    let g = &k.gpu;
    let row = n_heads * head_dim;
    let kv_row = n_kv_heads * head_dim;
    let ckb = g
        .upload(
            "cache_k",
            &pack(&random_cache(&mut r, n_kv_heads, head_dim, capacity, pos)),
        )
        .unwrap();
    let cvb = g
        .upload(
            "cache_v",
            &pack(&random_cache(&mut r, n_kv_heads, head_dim, capacity, pos)),
        )
        .unwrap();
    let kn = g
        .upload("k_new", &rand_vec(&mut r, max_tokens * kv_row, 1.0))
        .unwrap();
    let vn = g
        .upload("v_new", &rand_vec(&mut r, max_tokens * kv_row, 1.0))
        .unwrap();
    let q = rand_vec(&mut r, max_tokens * row, 2.0);
    let qb = g.upload("q", &q).unwrap();
    let out = g
        .storage_buffer("out", (max_tokens * row * 4) as u64)
        .unwrap();
    g.poison(&out);
    let stepb = g.uniform("step", &step(pos, n_tokens)).unwrap();
    let scale = 1.0 / (head_dim as f32).sqrt();
    let cache = KvPair { k: &ckb, v: &cvb };
    let shape = geo.shape(KvType::F16);
    let new = KvPair { k: &kn, v: &vn };
    let write = kv_cache::kv_write(k, new, cache, &stepb, &shape.cache(), max_tokens).unwrap();
    let io = AttentionBuffers {
        q: &qb,
        cache,
        step: &stepb,
        out: &out,
    };
    let att = attention::attention_prefill(k, &io, &shape, max_tokens).unwrap();
    k.run(&[&write, &att]).unwrap();
    // The reference reads the cache the kernel read (prefix + what kv_write stored).
    let ck = unpack(&g.read_vec::<u32>(&ckb).unwrap());
    let cv = unpack(&g.read_vec::<u32>(&cvb).unwrap());
    let cache = reference::attention::Cache {
        k: &ck,
        v: &cv,
        n_kv_heads,
        head_dim,
        capacity,
    };
    let want = reference::attention::attention_prefill(
        &q[..n_tokens * row],
        &cache,
        (pos, n_tokens),
        n_heads,
        scale,
    );
    let got: Vec<f32> = g.read_vec(&out).unwrap();
    let what = format!(
        "prefill heads {n_heads}/{n_kv_heads} hd {head_dim} pos {pos} tokens {n_tokens}/{max_tokens}"
    );
    let e = assert_close(&what, &got[..n_tokens * row], &want, RTOL, ATOL);
    eprintln!("{what}: max error {e:.1e} of max |want|");
    assert!(
        bytemuck::cast_slice::<f32, u32>(&got[n_tokens * row..])
            .iter()
            .all(|&w| w == POISON),
        "{what}: rows past n_tokens were written"
    );
}

#[test]
fn prefill_causal_with_prefix() {
    let k = kernels();
    check_prefill(k, Geo::new(4, 4, 32, 64), 6, 6, 0);
    check_prefill(k, Geo::new(6, 2, 64, 128), 12, 9, 37);
    check_prefill(k, Geo::new(8, 2, 128, 320), 24, 20, 250);
    check_prefill(k, Geo::new(3, 1, 64, 64), 5, 1, 20);
}

#[test]
fn prefill_without_subgroups() {
    check_prefill(kernels_no_subgroup(), Geo::new(8, 2, 64, 96), 10, 7, 41);
}

fn is_shape<T>(r: &wick::Result<T>) -> bool {
    matches!(r, Err(wick::Error::Shape(_)))
}

#[test]
fn attention_rejects_bad_shapes() {
    let k = kernels();
    let g = &k.gpu;
    let cache = g
        .storage_buffer("cache", kv_cache::cache_bytes(KvType::F16, 2, 64, 16))
        .unwrap();
    let short = g
        .storage_buffer("short", kv_cache::cache_bytes(KvType::F16, 2, 64, 15))
        .unwrap();
    let q = g.storage_buffer("q", 6 * 64 * 4).unwrap();
    let out = g.storage_buffer("out", 6 * 64 * 4).unwrap();
    let stepb = g.uniform("step", &step(0, 1)).unwrap();
    let dec = |q: &wgpu::Buffer, ck: &wgpu::Buffer, nh, nkv, hd, ns| {
        let io = AttentionBuffers {
            q,
            cache: KvPair { k: ck, v: &cache },
            step: &stepb,
            out: &out,
        };
        let shape = AttentionShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            capacity: 16,
            scale: 0.1,
            kv_type: KvType::F16,
        };
        attention::attention_decode(k, &io, &shape, DecodeForm::Tiled, ns, None)
    };
    assert!(
        is_shape(&dec(&q, &cache, 6, 4, 64, 1)),
        "6 heads over 4 KV heads"
    );
    assert!(is_shape(&dec(&q, &cache, 6, 2, 63, 1)), "odd head_dim");
    assert!(is_shape(&dec(&q, &short, 6, 2, 64, 1)), "short cache");
    assert!(is_shape(&dec(&q, &cache, 8, 2, 64, 1)), "short q");
    assert!(is_shape(&dec(&q, &cache, 6, 2, 64, 0)), "zero splits");
    assert!(dec(&q, &cache, 6, 2, 64, 3).is_ok());
    let pre = |max_tokens, nh, nkv| {
        let io = AttentionBuffers {
            q: &q,
            cache: KvPair {
                k: &cache,
                v: &cache,
            },
            step: &stepb,
            out: &out,
        };
        let shape = AttentionShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: 64,
            capacity: 16,
            scale: 0.1,
            kv_type: KvType::F16,
        };
        attention::attention_prefill(k, &io, &shape, max_tokens)
    };
    assert!(is_shape(&pre(2, 6, 2)), "q too short for two tokens");
    assert!(is_shape(&pre(1, 5, 2)), "5 heads over 2 KV heads");
    assert!(pre(1, 6, 2).is_ok());
}

/// A q8_0 test cache: K and V values drawn as f32 rows `[len][n_kv_heads * head_dim]`
/// (uniform in [-1, 1]), written by the q8_0 `kv_write` into poisoned caches (so a read past
/// the live length meets a NaN scale), and read back.
struct Q8Inputs {
    /// The values written, `[n_kv_heads][capacity][head_dim]` (NaN past the written length).
    k: Vec<f32>,
    v: Vec<f32>,
    /// The f32 rows as written, `[len][n_kv_heads * head_dim]`.
    k_rows: Vec<f32>,
    v_rows: Vec<f32>,
    ckb: wgpu::Buffer,
    cvb: wgpu::Buffer,
    shape: AttentionShape,
}

impl Q8Inputs {
    fn new(k: &Kernels, r: &mut impl Rng, shape: AttentionShape, len: usize) -> Q8Inputs {
        let g = &k.gpu;
        let (n_kv, hd, cap) = (shape.n_kv_heads, shape.head_dim, shape.capacity);
        let row = n_kv * hd;
        let k_rows = rand_vec(r, len * row, 1.0);
        let v_rows = rand_vec(r, len * row, 1.0);
        let bytes = shape.cache().bytes();
        let ckb = g.storage_buffer("cache_k", bytes).unwrap();
        let cvb = g.storage_buffer("cache_v", bytes).unwrap();
        g.poison(&ckb);
        g.poison(&cvb);
        let mut i = Q8Inputs {
            k: Vec::new(),
            v: Vec::new(),
            k_rows: Vec::new(),
            v_rows: Vec::new(),
            ckb,
            cvb,
            shape,
        };
        i.write(k, &k_rows, &v_rows, 0);
        let by_head = |rows: &[f32]| {
            let mut c = vec![f32::NAN; n_kv * cap * hd];
            reference_rows(&mut c, rows, 0, n_kv, hd, cap);
            c
        };
        i.k = by_head(&k_rows);
        i.v = by_head(&v_rows);
        i.k_rows = k_rows;
        i.v_rows = v_rows;
        i
    }

    /// Writes rows `[n][n_kv_heads * head_dim]` at position `pos` with the q8_0 kv_write.
    fn write(&self, k: &Kernels, k_rows: &[f32], v_rows: &[f32], pos: usize) {
        let n = k_rows.len() / (self.shape.n_kv_heads * self.shape.head_dim);
        if n == 0 {
            return;
        }
        let g = &k.gpu;
        let (kn, vn) = (
            g.upload("k", k_rows).unwrap(),
            g.upload("v", v_rows).unwrap(),
        );
        let stepb = g.uniform("step", &step(pos, n)).unwrap();
        let new = KvPair { k: &kn, v: &vn };
        let cache = KvPair {
            k: &self.ckb,
            v: &self.cvb,
        };
        let d = kv_cache::kv_write(k, new, cache, &stepb, &self.shape.cache(), n).unwrap();
        k.run(&[&d]).unwrap();
    }

    /// The caches as the GPU holds them.
    fn read(&self, k: &Kernels) -> (Q8Cache, Q8Cache) {
        let s = &self.shape;
        let read = |b: &wgpu::Buffer| {
            let words: Vec<u32> = k.gpu.read_vec(b).unwrap();
            Q8Cache::from_words(&words, s.n_kv_heads, s.head_dim, s.capacity)
        };
        (read(&self.ckb), read(&self.cvb))
    }
}

/// `rows` (`[n][n_kv_heads * head_dim]`) into `c` (`[n_kv_heads][capacity][head_dim]`) at
/// position `pos`.
fn reference_rows(c: &mut [f32], rows: &[f32], pos: usize, n_kv: usize, hd: usize, cap: usize) {
    for (t, row) in rows.chunks(n_kv * hd).enumerate() {
        for (h, src) in row.chunks(hd).enumerate() {
            let at = (h * cap + pos + t) * hd;
            c[at..at + hd].copy_from_slice(src);
        }
    }
}

// Over a q8_0 cache the kernels are checked twice:
// - against the reference over the dequantised cache (codes x scales read back from the GPU):
//   the same values in both, so the same f32-arithmetic bounds as the f16 cache (RTOL, ATOL);
// - against the f32 reference over the values before quantisation, within a bound derived
//   per query row from the cache's own scales ([`q8_bound`]).

/// The bound on |attention over the q8_0 cache - attention over the f32 values it holds| for
/// one query row `q` (unscaled) of KV head `kvh` over keys `0..n_keys`. Every cached value is
/// within half its block's scale of the value written, so a score moves by at most
/// eps = scale x max_j sum_b (k_scale(j, b) / 2) x sum_{i in b} |q_i|; the softmax weights then
/// move by a factor within [e^-2eps, e^2eps], which moves the output by at most
/// (e^2eps - 1) x max |v|; the values' own rounding adds at most max v_scale / 2. Plus 2e-5 for
/// the kernel's f32 arithmetic (ATOL).
fn q8_bound(
    q: &[f32],
    scale: f32,
    (kvh, n_keys): (usize, usize),
    kc: &Q8Cache,
    vc: &Q8Cache,
    v: &[f32],
) -> f32 {
    let (hd, cap) = (kc.head_dim, kc.capacity);
    let nb = hd / 32;
    let q_abs: Vec<f64> = q
        .chunks(32)
        .map(|b| b.iter().map(|x| x.abs() as f64).sum())
        .collect();
    let (mut eps, mut v_max, mut dv) = (0.0f64, 0.0f64, 0.0f64);
    for j in 0..n_keys {
        let r = kvh * cap + j;
        let e: f64 = (0..nb)
            .map(|b| kc.scales[r * nb + b] as f64 / 2.0 * q_abs[b])
            .sum();
        eps = eps.max(e * scale as f64);
        for b in 0..nb {
            dv = dv.max(vc.scales[r * nb + b] as f64 / 2.0);
        }
        for x in &v[r * hd..(r + 1) * hd] {
            v_max = v_max.max(x.abs() as f64);
        }
    }
    (((2.0 * eps).exp() - 1.0) * v_max + dv * (1.0 + 1e-5)) as f32 + ATOL
}

/// Checks `got` (rows of `n_heads * head_dim` for tokens `pos..pos + n_tokens`) against both
/// references over the q8_0 cache and returns (max error against the dequantised-cache
/// reference, max error against the f32 reference, the largest per-row bound, the largest
/// error / bound).
fn check_q8_output(
    what: &str,
    got: &[f32],
    q: &[f32],
    (pos, n_tokens): (usize, usize),
    i: &Q8Inputs,
    (kc, vc): (&Q8Cache, &Q8Cache),
) -> (f32, f32, f32, f32) {
    let s = &i.shape;
    let (n_heads, hd) = (s.n_heads, s.head_dim);
    let (kd, vd) = (kc.dequantize(), vc.dequantize());
    let cache = |k, v| reference::attention::Cache {
        k,
        v,
        n_kv_heads: s.n_kv_heads,
        head_dim: hd,
        capacity: s.capacity,
    };
    let q = &q[..n_tokens * n_heads * hd];
    let want_deq = reference::attention::attention_prefill(
        q,
        &cache(&kd, &vd),
        (pos, n_tokens),
        n_heads,
        s.scale,
    );
    let e_deq = assert_close(
        &format!("{what} vs the dequantised cache"),
        got,
        &want_deq,
        RTOL,
        ATOL,
    );
    let want_f32 = reference::attention::attention_prefill(
        q,
        &cache(&i.k, &i.v),
        (pos, n_tokens),
        n_heads,
        s.scale,
    );
    let (mut e_f32, mut max_bound, mut ratio) = (0.0f32, 0.0f32, 0.0f32);
    for t in 0..n_tokens {
        for h in 0..n_heads {
            let at = (t * n_heads + h) * hd;
            let kvh = h / s.group();
            let bound = q8_bound(&q[at..at + hd], s.scale, (kvh, pos + t + 1), kc, vc, &i.v);
            let e = (0..hd)
                .map(|d| (got[at + d] - want_f32[at + d]).abs())
                .fold(0.0f32, f32::max);
            assert!(
                e <= bound,
                "{what}: token {t} head {h}: max |got - f32 reference| = {e} > bound {bound}"
            );
            e_f32 = e_f32.max(e);
            max_bound = max_bound.max(bound);
            ratio = ratio.max(e / bound);
        }
    }
    (e_deq, e_f32, max_bound, ratio)
}

/// Decode attention over a q8_0 cache written by the q8_0 kv_write, at each of `kv_lens`, for
/// each split count, on registry `k` (pass 1 must run the WGSL kernel: there is no native one
/// over a q8_0 cache).
fn check_decode_q8(k: &Kernels, geo: Geo, splits: &[usize], kv_lens: &[usize], q_scale: f32) {
    let Geo {
        n_heads,
        n_kv_heads,
        head_dim,
        ..
    } = geo;
    let mut r = rng();
    let g = &k.gpu;
    let shape = geo.shape(KvType::Q8_0);
    let max_len = *kv_lens.iter().max().unwrap();
    let i = Q8Inputs::new(k, &mut r, shape, max_len);
    let caches = i.read(k);
    let qb = g
        .storage_buffer("q", (n_heads * head_dim * 4) as u64)
        .unwrap();
    let out = g
        .storage_buffer("out", (n_heads * head_dim * 4) as u64)
        .unwrap();
    let stepb = g.uniform("step", &step(0, 1)).unwrap();
    // Both forms of pass 1; the lanes form wherever the adapter has subgroups.
    let lanes = attention::lanes_unfit(&k.gpu.caps, &shape);
    assert_eq!(lanes.is_none(), g.caps.subgroup, "lanes form: {lanes:?}");
    let forms = [
        (DecodeForm::Tiled, "attention_decode_kv_q8"),
        (DecodeForm::Lanes, "attention_decode_lanes_kv_q8"),
    ];
    for ((form, op), &ns) in forms
        .into_iter()
        .filter(|(f, _)| *f == DecodeForm::Tiled || lanes.is_none())
        .flat_map(|f| splits.iter().map(move |ns| (f, ns)))
    {
        let io = AttentionBuffers {
            q: &qb,
            cache: KvPair {
                k: &i.ckb,
                v: &i.cvb,
            },
            step: &stepb,
            out: &out,
        };
        let att = attention::attention_decode(k, &io, &shape, form, ns, None).unwrap();
        let p1 = &att.dispatches[0].pipeline;
        assert_eq!((p1.op.as_str(), p1.variant), (op, Variant::Portable));
        for &kv_len in kv_lens {
            let q = rand_vec(&mut r, n_heads * head_dim, q_scale);
            g.write(&qb, 0, &q);
            g.write(&stepb, 0, &[step(kv_len - 1, 1)]);
            g.poison(&out);
            k.run(&att.dispatches.iter().collect::<Vec<_>>()).unwrap();
            let what = format!(
                "decode {form:?} q8_0 heads {n_heads}/{n_kv_heads} hd {head_dim} kv_len {kv_len} splits {ns}"
            );
            let got: Vec<f32> = g.read_vec(&out).unwrap();
            let (e_deq, e_f32, bound, ratio) =
                check_q8_output(&what, &got, &q, (kv_len - 1, 1), &i, (&caches.0, &caches.1));
            eprintln!(
                "{what}: vs dequantised cache {e_deq:.1e} of max |want|; vs f32 K/V max |d| \
                 {e_f32:.2e}, bound up to {bound:.2e} (at most {ratio:.2} of it)"
            );
        }
    }
}

#[test]
fn decode_q8_gqa_head_dims_splits() {
    let k = kernels();
    check_decode_q8(k, Geo::new(4, 4, 32, 320), &[1, 4], &[1, 9, 300], 1.0);
    check_decode_q8(k, Geo::new(6, 2, 64, 320), &[1, 16], &[1, 9, 257], 2.0);
    check_decode_q8(k, Geo::new(8, 2, 128, 400), &[1, 7], &[1, 33, 390], 3.0);
    // Peaky softmax (large q): the running-max rescaling, and the largest score errors.
    check_decode_q8(k, Geo::new(3, 1, 64, 200), &[3], &[150], 12.0);
}

/// Over a q8_0 cache decode attention runs the WGSL kernel even where the policy asks for
/// native kernels (the natives read an f16 cache only), and without subgroups.
#[test]
fn decode_q8_runs_portable_under_the_native_policy() {
    check_decode_q8(
        kernels_native(),
        Geo::new(8, 2, 64, 128),
        &[1, 3],
        &[1, 100],
        2.0,
    );
    check_decode_q8(
        kernels_no_subgroup(),
        Geo::new(6, 2, 96, 128),
        &[1, 5],
        &[1, 100],
        2.0,
    );
    let caps = &kernels().gpu.caps;
    let q8 = attention::decode_spec(caps, 8, 2, 128, true, KvType::Q8_0).unwrap();
    assert!(!q8.has_native() && q8.defines.contains(&"KV_Q8"));
    let f16 = attention::decode_spec(caps, 8, 2, 128, true, KvType::F16).unwrap();
    assert!(f16.has_native() && !f16.defines.contains(&"KV_Q8"));
}

/// Prefill over a q8_0 cache: a prefix of `pos` positions written by one q8_0 kv_write, then
/// the chunk's K/V written by kv_write in the same pass as attention_prefill.
fn check_prefill_q8(k: &Kernels, geo: Geo, max_tokens: usize, n_tokens: usize, pos: usize) {
    let Geo {
        n_heads,
        n_kv_heads,
        head_dim,
        capacity,
    } = geo;
    let mut r = rng();
    let g = &k.gpu;
    let shape = geo.shape(KvType::Q8_0);
    let (row, kv_row) = (n_heads * head_dim, n_kv_heads * head_dim);
    let mut i = Q8Inputs::new(k, &mut r, shape, pos);
    if pos == 0 {
        i.k = vec![f32::NAN; n_kv_heads * capacity * head_dim];
        i.v = i.k.clone();
    }
    let (kr, vr) = (
        rand_vec(&mut r, max_tokens * kv_row, 1.0),
        rand_vec(&mut r, max_tokens * kv_row, 1.0),
    );
    let live = n_tokens.min(capacity - pos);
    reference_rows(
        &mut i.k,
        &kr[..live * kv_row],
        pos,
        n_kv_heads,
        head_dim,
        capacity,
    );
    reference_rows(
        &mut i.v,
        &vr[..live * kv_row],
        pos,
        n_kv_heads,
        head_dim,
        capacity,
    );
    let (kn, vn) = (
        g.upload("k_new", &kr).unwrap(),
        g.upload("v_new", &vr).unwrap(),
    );
    let q = rand_vec(&mut r, max_tokens * row, 2.0);
    let qb = g.upload("q", &q).unwrap();
    let out = g
        .storage_buffer("out", (max_tokens * row * 4) as u64)
        .unwrap();
    g.poison(&out);
    let stepb = g.uniform("step", &step(pos, n_tokens)).unwrap();
    let cache = KvPair {
        k: &i.ckb,
        v: &i.cvb,
    };
    let new = KvPair { k: &kn, v: &vn };
    let write = kv_cache::kv_write(k, new, cache, &stepb, &shape.cache(), max_tokens).unwrap();
    let io = AttentionBuffers {
        q: &qb,
        cache,
        step: &stepb,
        out: &out,
    };
    let att = attention::attention_prefill(k, &io, &shape, max_tokens).unwrap();
    assert_eq!(att.pipeline.op, "attention_prefill_kv_q8");
    k.run(&[&write, &att]).unwrap();
    let caches = i.read(k);
    let got: Vec<f32> = g.read_vec(&out).unwrap();
    let what = format!(
        "prefill q8_0 heads {n_heads}/{n_kv_heads} hd {head_dim} pos {pos} tokens {n_tokens}/{max_tokens}"
    );
    let (e_deq, e_f32, bound, ratio) = check_q8_output(
        &what,
        &got[..n_tokens * row],
        &q,
        (pos, n_tokens),
        &i,
        (&caches.0, &caches.1),
    );
    eprintln!(
        "{what}: vs dequantised cache {e_deq:.1e} of max |want|; vs f32 K/V max |d| \
         {e_f32:.2e}, bound up to {bound:.2e} (at most {ratio:.2} of it)"
    );
    assert!(
        bytemuck::cast_slice::<f32, u32>(&got[n_tokens * row..])
            .iter()
            .all(|&w| w == POISON),
        "{what}: rows past n_tokens were written"
    );
}

#[test]
fn prefill_q8_causal_with_prefix() {
    let k = kernels();
    check_prefill_q8(k, Geo::new(4, 4, 32, 64), 6, 6, 0);
    check_prefill_q8(k, Geo::new(6, 2, 64, 128), 12, 9, 37);
    check_prefill_q8(k, Geo::new(8, 2, 128, 320), 24, 20, 250);
    check_prefill_q8(k, Geo::new(3, 1, 64, 64), 5, 1, 20);
    check_prefill_q8(kernels_no_subgroup(), Geo::new(8, 2, 96, 96), 10, 7, 41);
}
