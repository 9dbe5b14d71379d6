//! Test support shared by every test crate: where the shared material (goldens) and the test
//! model are, and the seed of a run's random inputs. A test file declares it as `pub mod
//! common;`, a test folder as `#[path = "../common/mod.rs"] pub mod common;` (public, since
//! each crate uses only part of it).

use std::path::PathBuf;

/// The shared material (`goldens/`, `peers/`): `$WICK_SHARED`, else `shared/` beside the
/// checkout (CI: `<dir>/main` + `<dir>/shared`), else two levels up (helper worktrees at
/// `<dir>/wt/<name>`), whichever holds `goldens/`. None when neither does.
pub fn shared_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WICK_SHARED") {
        return Some(PathBuf::from(p));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [manifest.join("../shared"), manifest.join("../../shared")]
        .into_iter()
        .find(|p| p.join("goldens").is_dir())
}

/// [`shared_dir`], or a panic that says where it was looked for.
pub fn shared() -> PathBuf {
    shared_dir().unwrap_or_else(|| {
        panic!("shared/goldens not found beside the checkout or two levels up (set WICK_SHARED)")
    })
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF the model tests read: `$WICK_MODEL_PATH`, else where
/// wick downloads its default model (it may not exist).
pub fn model_path() -> PathBuf {
    std::env::var_os("WICK_MODEL_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(wick::model::source::default_model_path)
}

/// Whether missing test inputs fail a test rather than skip it (`WICK_REQUIRE_MODEL=1`, as CI
/// sets).
pub fn require_model() -> bool {
    std::env::var("WICK_REQUIRE_MODEL").as_deref() == Ok("1")
}

/// [`model_path`] when the file is there. Otherwise a panic under `WICK_REQUIRE_MODEL=1`, else
/// None after saying why (the caller skips).
pub fn model_or_skip() -> Option<PathBuf> {
    let path = model_path();
    if path.is_file() {
        return Some(path);
    }
    assert!(
        !require_model(),
        "WICK_REQUIRE_MODEL=1 but the model is missing at {}",
        path.display()
    );
    eprintln!(
        "skipping: no model at {} (run scripts/fetch-model.sh or set WICK_MODEL_PATH)",
        path.display()
    );
    None
}

/// The seed of a test's random inputs: `$WICK_TEST_SEED` to replay a run, else one from the
/// clock, so that every run draws new inputs. Printed either way, so that a failure can be
/// replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("WICK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("WICK_TEST_SEED={seed}");
    seed
}
