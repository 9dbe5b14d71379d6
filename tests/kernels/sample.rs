//! The GPU sampling chain against the CPU sampler (`runtime::sampling`, itself checked
//! against the naive reference): the same candidate distribution and the same token for the
//! same uniform number, over vocabularies that need one, two and three sort levels.

use crate::support::*;
use rand::Rng;
use wick::kernels::sample::{self, SampleBuffers, SampleStep, FLAG_TRUNCATED, K_MAX, NON_FINITE};
use wick::kernels::Kernels;
use wick::runtime::sampling::{distribution, draw, SamplingParams};

struct Out {
    id: u32,
    flags: u32,
    /// (id, probability) of the kept candidates, by rank.
    kept: Vec<(u32, f64)>,
    history_out: u32,
}

/// Runs the chain over `logits` with `history` as the tokens so far; the chosen id is
/// appended at `history.len()`.
fn run(k: &Kernels, logits: &[f32], history: &[u32], p: &SamplingParams, u: f32) -> Out {
    let g = &k.gpu;
    let vocab = logits.len();
    let lb = g.upload("logits", logits).unwrap();
    let mut hist = history.to_vec();
    hist.push(0);
    let hb = g.upload("history", &hist).unwrap();
    g.poison(&hb);
    g.write(&hb, 0, history);
    let token = g.storage_buffer("token", 8).unwrap();
    g.poison(&token);
    let probs = g.storage_buffer("probs", K_MAX as u64 * 8).unwrap();
    g.poison(&probs);
    let window = history.len().min(p.repeat_last_n);
    let step = SampleStep {
        temperature: p.temperature,
        top_k: p.top_k as u32,
        top_p: p.top_p,
        min_p: p.min_p,
        penalty: p.repeat_penalty,
        hist_start: (history.len() - window) as u32,
        hist_end: history.len() as u32,
        hist_out: history.len() as u32,
        u,
        full_norm: (p.top_k == 0 || p.top_k >= vocab) as u32,
        vocab: vocab as u32,
        _pad: 0,
    };
    let sb = g.uniform("sample step", &step).unwrap();
    let kk = sample::chain_k(p.temperature, p.top_k);
    let chain = sample::sample_chain(
        k,
        &SampleBuffers {
            logits: &lb,
            step: &sb,
            history: &hb,
            token: &token,
            probs: &probs,
        },
        vocab,
        kk,
    )
    .unwrap();
    k.run(&chain.dispatches.iter().collect::<Vec<_>>()).unwrap();
    let t: Vec<u32> = g.read_vec(&token).unwrap();
    let pr: Vec<u32> = g.read_vec(&probs).unwrap();
    let h: Vec<u32> = g.read_vec(&hb).unwrap();
    let kept = pr
        .chunks(2)
        .filter(|c| c[0] != u32::MAX && f32::from_bits(c[1]) > 0.0)
        .map(|c| (c[0], f32::from_bits(c[1]) as f64))
        .collect();
    Out {
        id: t[0],
        flags: t[1],
        kept,
        history_out: h[history.len()],
    }
}

fn ids(d: &[(u32, f64)]) -> Vec<u32> {
    d.iter().map(|x| x.0).collect()
}

/// Checks one case against the CPU sampler. Float rounding (f32 on the GPU, f64 on the CPU)
/// may move a top-p or min-p cut by one candidate when the cumulative mass lands within
/// 1e-4 of the threshold, so the CPU distribution is also taken with the thresholds nudged.
fn check(k: &Kernels, logits: &[f32], history: &[u32], p: &SamplingParams, u: f32, what: &str) {
    let out = run(k, logits, history, p, u);
    assert_eq!(
        out.history_out, out.id,
        "{what}: id appended to the history"
    );
    if out.flags == FLAG_TRUNCATED {
        // Top-k off and nothing cutting inside the K_MAX candidates: the flag must be
        // honest (the CPU keeps more), and the candidates are the CPU's best K_MAX.
        let cpu = distribution(logits, history, p);
        assert!(
            p.top_k == 0 || p.top_k >= logits.len(),
            "{what}: flag with top-k on"
        );
        assert!(
            cpu.len() > K_MAX,
            "{what}: flagged, CPU keeps {}",
            cpu.len()
        );
        assert_eq!(ids(&out.kept), ids(&cpu[..K_MAX]), "{what}: candidates");
        return;
    }
    assert_eq!(out.flags, 0, "{what}: flags ({p:?})");
    let nudged = |dp: f32, dm: f32| {
        let q = SamplingParams {
            top_p: if p.top_p < 1.0 { p.top_p + dp } else { 1.0 },
            min_p: if p.min_p > 0.0 {
                p.min_p * (1.0 + dm)
            } else {
                0.0
            },
            ..p.clone()
        };
        distribution(logits, history, &q)
    };
    let cands = [
        nudged(0.0, 0.0),
        nudged(1e-4, 0.0),
        nudged(-1e-4, 0.0),
        nudged(0.0, 1e-4),
        nudged(0.0, -1e-4),
    ];
    let want = cands
        .iter()
        .find(|d| ids(d) == ids(&out.kept))
        .unwrap_or_else(|| {
            panic!(
                "{what}: kept {:?}, CPU keeps {:?} ({p:?})",
                ids(&out.kept),
                ids(&cands[0])
            )
        });
    for ((gi, gp), (_, wp)) in out.kept.iter().zip(want) {
        assert!(
            (gp - wp).abs() <= 2e-5 + 1e-3 * wp,
            "{what}: token {gi}: p {gp} vs CPU {wp} ({p:?})"
        );
    }
    // The drawn token: the CPU's for the same u, unless u sits on a cumulative boundary.
    let cpu = draw(want, u as f64).unwrap();
    if cpu != out.id {
        let mut acc = 0.0;
        let near = want.iter().any(|&(_, q)| {
            acc += q;
            (acc - u as f64).abs() < 1e-4
        });
        assert!(
            near,
            "{what}: drew {} vs CPU {cpu} at u {u} ({p:?})",
            out.id
        );
    }
}

/// Logits with a few planted peaks (so top-p cuts early) and values on a 0.25 grid (ties).
fn peaked_logits(r: &mut impl Rng, vocab: usize) -> Vec<f32> {
    let mut l: Vec<f32> = (0..vocab)
        .map(|_| (r.random_range(-20..20) as f32) * 0.25)
        .collect();
    for _ in 0..r.random_range(1..6) {
        let i = r.random_range(0..vocab);
        l[i] = r.random_range(8.0..14.0);
    }
    l
}

fn random_params(r: &mut impl Rng) -> SamplingParams {
    SamplingParams {
        temperature: [0.0, 0.3, 0.8, 1.0, 1.5][r.random_range(0..5)],
        top_k: [0, 1, 7, 40, 256, 1000][r.random_range(0..6)],
        top_p: [1.0, 0.95, 0.7, 0.3][r.random_range(0..4)],
        min_p: [0.0, 0.05, 0.2][r.random_range(0..3)],
        repeat_penalty: [1.0, 1.1, 1.5][r.random_range(0..3)],
        repeat_last_n: [1, 16, 64][r.random_range(0..3)],
        seed: 0,
    }
}

#[test]
fn sample_matches_cpu_sampler() {
    let k = kernels();
    let mut r = rng();
    // One level (<= 2048), two levels, three levels (151936 with k = 256).
    for vocab in [1, 5, 300, 2048, 2049, 9000, 49152, 151936] {
        let cases = if vocab > 10000 { 4 } else { 12 };
        for case in 0..cases {
            let logits = peaked_logits(&mut r, vocab);
            let history: Vec<u32> = (0..r.random_range(0..80))
                .map(|_| r.random_range(0..vocab as u32))
                .collect();
            let mut p = random_params(&mut r);
            if p.top_k > K_MAX && p.top_k < vocab {
                // Not a GPU case (the runtime samples it on the CPU): top-k off instead.
                p.top_k = 0;
            }
            if vocab > 10000 && case == 0 {
                // Always cover the deepest tree once.
                p.top_k = 0;
                p.temperature = 1.0;
            }
            let u = r.random_range(0.0..1.0f32);
            check(
                k,
                &logits,
                &history,
                &p,
                u,
                &format!("vocab {vocab} case {case}"),
            );
        }
    }
}

#[test]
fn sample_penalty_counts_each_history_id_once() {
    let k = kernels();
    // Token 3 appears three times in the window: penalised once (1 / 2 -> 0.5, not 0.125),
    // so with greedy sampling it still beats token 1 (0.4).
    let mut logits = vec![0.0f32; 64];
    logits[3] = 1.0;
    logits[1] = 0.4;
    let p = SamplingParams {
        temperature: 0.0,
        repeat_penalty: 2.0,
        repeat_last_n: 8,
        ..Default::default()
    };
    let out = run(k, &logits, &[3, 3, 7, 3], &p, 0.5);
    assert_eq!(out.id, 3);
    // A window that excludes the repeats leaves the logits alone.
    let out = run(
        k,
        &logits,
        &[3, 3, 7, 3, 9],
        &SamplingParams {
            repeat_last_n: 1,
            ..p
        },
        0.5,
    );
    assert_eq!(out.id, 3);
}

#[test]
fn sample_reports_the_first_non_finite_logit() {
    let k = kernels();
    let mut r = rng();
    for vocab in [100, 5000] {
        let mut logits = peaked_logits(&mut r, vocab);
        let a = r.random_range(0..vocab / 2);
        let b = r.random_range(vocab / 2..vocab);
        logits[b] = f32::NAN;
        logits[a] = f32::INFINITY;
        let p = SamplingParams {
            temperature: 0.7,
            ..Default::default()
        };
        let out = run(k, &logits, &[], &p, 0.3);
        assert_eq!(out.id, NON_FINITE | a as u32, "vocab {vocab}");
        // Cleaned, the same vector samples as the CPU does.
        logits[a] = 0.0;
        logits[b] = 0.0;
        check(k, &logits, &[], &p, 0.3, "after NaN");
    }
}

#[test]
fn sample_flags_a_kept_set_wider_than_the_candidates() {
    let k = kernels();
    // Flat logits, top-k off, nothing else cutting: the true set is the whole vocabulary.
    let logits = vec![0.5f32; 3000];
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..Default::default()
    };
    let out = run(k, &logits, &[], &p, 0.999);
    assert_eq!(out.flags, FLAG_TRUNCATED);
    assert_eq!(out.kept.len(), K_MAX);
    assert!(
        out.id < K_MAX as u32,
        "ties go to the lowest ids: {}",
        out.id
    );
    // With min-p cutting inside the candidates there is no flag.
    let mut peaked = logits.clone();
    peaked[2500] = 9.0;
    let out = run(k, &peaked, &[], &SamplingParams { min_p: 0.05, ..p }, 0.5);
    assert_eq!((out.flags, out.id), (0, 2500));
}

#[test]
fn sample_without_subgroups() {
    let k = kernels_no_subgroup();
    let mut r = rng();
    for case in 0..4 {
        let logits = peaked_logits(&mut r, 9000);
        let p = SamplingParams {
            temperature: 0.9,
            top_k: [0, 40][case % 2],
            repeat_penalty: 1.2,
            ..Default::default()
        };
        let history: Vec<u32> = (0..20).map(|_| r.random_range(0..9000)).collect();
        let u = r.random_range(0.0..1.0f32);
        check(
            k,
            &logits,
            &history,
            &p,
            u,
            &format!("no subgroups, case {case}"),
        );
    }
}
