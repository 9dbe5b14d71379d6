//! The runtime sampler against the naive reference: the same distribution for random
//! logits and settings, and the same token for the same seed.

use rand::{Rng, SeedableRng};
use wick::reference::sampling::{probabilities, Filters};
use wick::runtime::sampling::{distribution, draw, sample, Rng as WickRng, SamplingParams};

#[test]
fn sampler_matches_reference_distribution() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    for case in 0..200 {
        let n = r.random_range(1..60);
        // Few distinct values so ties are common.
        let logits: Vec<f32> = (0..n)
            .map(|_| (r.random_range(-8..8) as f32) * 0.5)
            .collect();
        let history: Vec<u32> = (0..r.random_range(0..10))
            .map(|_| r.random_range(0..n as u32))
            .collect();
        let p = SamplingParams {
            temperature: [0.0, 0.5, 1.0, 1.7][case % 4],
            top_k: [0, 1, 5, 100][r.random_range(0..4)],
            top_p: [1.0, 0.9, 0.5, 0.1][r.random_range(0..4)],
            min_p: [0.0, 0.05, 0.3][r.random_range(0..3)],
            repeat_penalty: [1.0, 1.3][r.random_range(0..2)],
            repeat_last_n: 64,
            seed: r.random(),
        };
        let want = probabilities(
            &logits,
            &history,
            &Filters {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                min_p: p.min_p,
                repeat_penalty: p.repeat_penalty,
                repeat_last_n: p.repeat_last_n,
            },
        );
        let got = distribution(&logits, &history, &p);
        let mut dense = vec![0.0f64; n];
        for (t, q) in &got {
            dense[*t as usize] = *q;
        }
        for i in 0..n {
            assert!(
                (dense[i] - want[i]).abs() < 1e-9,
                "case {case} token {i}: {} vs {} ({p:?}, {logits:?})",
                dense[i],
                want[i]
            );
        }
        // The same seed draws the same token, and it is one the reference allows.
        let a = sample(&logits, &history, &p, &mut WickRng::new(p.seed)).unwrap();
        let b = sample(&logits, &history, &p, &mut WickRng::new(p.seed)).unwrap();
        assert_eq!(a, b);
        assert!(want[a as usize] > 0.0);
    }
}

#[test]
fn draw_follows_cumulative_probability() {
    let d = vec![(7u32, 0.5), (3, 0.3), (9, 0.2)];
    assert_eq!(draw(&d, 0.0), Some(7));
    assert_eq!(draw(&d, 0.49), Some(7));
    assert_eq!(draw(&d, 0.5), Some(3));
    assert_eq!(draw(&d, 0.81), Some(9));
    // Empirical frequencies of the seeded generator follow the distribution.
    let mut rng = WickRng::new(1);
    let mut counts = [0usize; 10];
    for _ in 0..20000 {
        counts[draw(&d, rng.next_f64()).unwrap() as usize] += 1;
    }
    assert!(
        (counts[7] as f64 / 20000.0 - 0.5).abs() < 0.02,
        "{counts:?}"
    );
    assert!(
        (counts[9] as f64 / 20000.0 - 0.2).abs() < 0.02,
        "{counts:?}"
    );
}
