use crate::support::*;
use rand::Rng;
use wick::kernels::{embedding, GpuMatrix, Kernels, WeightFormat};
use wick::quant::{quantize_and_pack, unpack};
use wick::reference;

/// The bit pattern `Gpu::poison` writes (its constant is private to the crate).
fn poison_bits() -> u32 {
    let b = poisoned(1);
    gpu().read_vec::<u32>(&b).unwrap()[0]
}

/// Distance in ulps between two finite f32 of the same sign (or both zero).
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

/// Tolerance: float formats are bit copies (exact); quantised formats compute d * q (+ m) in
/// f32 as quant::unpack does, and a GPU may fuse the Q4_1 multiply-add, so 1 ulp is allowed.
/// Untouched rows (ids another chunk owns, or beyond the vocabulary) must keep the poison.
fn compare(what: &str, f: WeightFormat, got: &[f32], want: &[f32]) {
    let tol = if f.is_quantized() { 1 } else { 0 };
    let poison = poison_bits();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.to_bits() == poison {
            assert_eq!(g.to_bits(), poison, "{what}: element {i} was written: {g}");
        } else {
            assert!(
                ulps(*g, *w) <= tol,
                "{what} {f:?}: element {i}: got {g} want {w}"
            );
        }
    }
}

/// `chunks` row-splits of a `vocab` x `hidden` table; `n_tokens` ids from ids[ids_offset..],
/// some of them beyond the vocabulary.
fn check(
    k: &Kernels,
    f: WeightFormat,
    vocab: usize,
    hidden: usize,
    n_tokens: usize,
    chunks: usize,
) {
    let mut r = rng();
    let g = &k.gpu;
    let ids_offset = 3;
    let mut ids: Vec<u32> = (0..ids_offset + n_tokens)
        .map(|_| r.random_range(0..vocab as u32))
        .collect();
    // Repeats, both ends of the vocabulary, and ids past it.
    ids[ids_offset] = 0;
    if n_tokens > 2 {
        ids[ids_offset + 1] = vocab as u32 - 1;
        ids[ids_offset + 2] = vocab as u32;
        ids[ids_offset + n_tokens - 1] = ids[ids_offset + 1];
    }
    if n_tokens > 4 {
        ids[ids_offset + 3] = u32::MAX;
    }
    let idb = g.upload("ids", &ids).unwrap();
    let out = poisoned(n_tokens * hidden);
    let mut want = vec![f32::from_bits(poison_bits()); n_tokens * hidden];

    // Chunk boundaries at a random split (not block-aligned rows).
    let mut bounds = vec![0, vocab];
    for _ in 1..chunks {
        bounds.push(r.random_range(1..vocab));
    }
    bounds.sort();
    bounds.dedup();
    let mut dispatches = Vec::new();
    let mut tables = Vec::new();
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        let packed = random_matrix(&mut r, f, hi - lo, hidden);
        let deq = unpack(&packed);
        reference::embedding::embedding(&deq, hidden, &ids[ids_offset..], lo, &mut want);
        let t = GpuMatrix::upload(g, "table", &packed).unwrap();
        dispatches.push(embedding::embedding(k, &t, &idb, &out, n_tokens, ids_offset, lo).unwrap());
        tables.push(t);
    }
    k.run(&dispatches.iter().collect::<Vec<_>>()).unwrap();
    let got: Vec<f32> = g.read_vec(&out).unwrap();
    compare("embedding", f, &got, &want);
}

#[test]
fn embedding_all_formats() {
    // hidden 96 = 3 blocks per row: an odd count puts rows' first scales in both word halves.
    // K-quants: 256 and 768 (1 and 3 super-blocks; 3 is odd for Q6_K's paired scales).
    for f in WeightFormat::ALL {
        check(
            kernels(),
            f,
            37,
            96usize.next_multiple_of(f.k_multiple()),
            9,
            1,
        );
        check(
            kernels(),
            f,
            50,
            576usize.next_multiple_of(f.k_multiple()),
            4,
            1,
        );
    }
}

#[test]
fn embedding_split_vocabulary() {
    for f in [WeightFormat::F16, WeightFormat::Q8_0, WeightFormat::Q4_1] {
        check(kernels(), f, 61, 64, 12, 3);
    }
    check(kernels(), WeightFormat::Q5_0, 61, 96, 12, 3);
    check(kernels(), WeightFormat::Q6K, 61, 256, 12, 3);
    check(kernels(), WeightFormat::F32, 20, 8, 30, 2);
}

#[test]
fn embedding_f16_subnormals_exact() {
    // Tiny values become f16 subnormals; a loader that flushes them fails the exact compare.
    let k = kernels();
    let g = &k.gpu;
    let vals: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 1e-6).collect();
    let packed = quantize_and_pack(WeightFormat::F16, &vals, 2, 32).unwrap();
    let t = GpuMatrix::upload(g, "table", &packed).unwrap();
    let ids = g.upload("ids", &[1u32, 0]).unwrap();
    let out = poisoned(64);
    let d = embedding::embedding(k, &t, &ids, &out, 2, 0, 0).unwrap();
    k.run(&[&d]).unwrap();
    let deq = unpack(&packed);
    let mut want = vec![0.0; 64];
    reference::embedding::embedding(&deq, 32, &[1, 0], 0, &mut want);
    compare(
        "subnormals",
        WeightFormat::F16,
        &g.read_vec::<f32>(&out).unwrap(),
        &want,
    );
}

#[test]
fn embedding_rejects_bad_shapes() {
    let k = kernels();
    let g = &k.gpu;
    let packed = quantize_and_pack(WeightFormat::Q4_0, &[0.5; 4 * 64], 4, 64).unwrap();
    let t = GpuMatrix::upload(g, "table", &packed).unwrap();
    let ids = g.upload("ids", &[0u32; 4]).unwrap();
    let out = g.storage_buffer("out", 4 * 64 * 4).unwrap();
    assert!(embedding::embedding(k, &t, &ids, &out, 4, 0, 0).is_ok());
    // Too many tokens for out; ids past the ids buffer; zero tokens.
    assert!(embedding::embedding(k, &t, &ids, &out, 5, 0, 0).is_err());
    assert!(embedding::embedding(k, &t, &ids, &out, 2, 3, 0).is_err());
    assert!(embedding::embedding(k, &t, &ids, &out, 0, 0, 0).is_err());
    // A row range past u32.
    assert!(embedding::embedding(k, &t, &ids, &out, 1, 0, u32::MAX as usize).is_err());
}
