//! Measured choices for one adapter: GEMV work splits (`wick tune`), consulted before the
//! built-in per-adapter-class choice ([`super::gemv::choose_config`]), and per-op variant
//! winners (`wick kernels bench --save`), which `--kernels auto` follows.
//!
//! The table lives in `$WICK_TUNE_FILE`, else `$WICK_CACHE_DIR/tune/` (default
//! `~/.cache/wick/tune/`) as `<adapter>-<backend>.json`. It is only used when its adapter,
//! backend and driver match the device's; a missing, stale or malformed file is ignored (with
//! a warning for the last two), so deleting it is always safe.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::Capabilities;
use crate::kernels::gemv::GemvConfig;
use crate::kernels::Variant;
use crate::quant::WeightFormat;

/// One measured shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    /// `gemv`, `gemv_swiglu`, `gemv_dot` or `gemv_dot_swiglu`.
    pub op: String,
    pub format: WeightFormat,
    pub n: usize,
    pub k: usize,
    pub lanes_per_row: u32,
    pub rows_per_group: u32,
    pub workgroup_size: u32,
    /// Measured time of this split and of the built-in choice, microseconds.
    pub us: f64,
    pub default_us: f64,
}

/// The tuning results of one adapter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TuningTable {
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    pub entries: Vec<TuneEntry>,
    /// Portable-vs-native results per op; absent in files written before they existed.
    #[serde(default)]
    pub variants: Vec<VariantEntry>,
}

/// The measured winner of one op between its portable and native variants (summed over the
/// benchmarked shapes, so the shapes that cost most decide).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantEntry {
    /// Op name as in [`super::KernelSpec::op`], e.g. `gemv_q8_0`.
    pub op: String,
    /// The variant `--kernels auto` uses for this op.
    pub winner: Variant,
    /// Summed time of each variant over the benchmarked shapes, microseconds.
    pub portable_us: f64,
    pub native_us: f64,
    pub shapes: usize,
}

impl VariantEntry {
    /// An entry from two measured totals: native wins unless it was slower.
    pub fn from_times(op: &str, portable_us: f64, native_us: f64, shapes: usize) -> VariantEntry {
        let winner = if native_us <= portable_us {
            Variant::Native
        } else {
            Variant::Portable
        };
        VariantEntry {
            op: op.to_string(),
            winner,
            portable_us,
            native_us,
            shapes,
        }
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

impl TuningTable {
    /// An empty table for this device.
    pub fn for_device(caps: &Capabilities) -> TuningTable {
        TuningTable {
            adapter: caps.adapter_name.clone(),
            backend: caps.backend.to_string(),
            driver: caps.driver_info.clone(),
            entries: Vec::new(),
            variants: Vec::new(),
        }
    }

    /// Where the table of this device is read and written.
    pub fn path_for(caps: &Capabilities) -> PathBuf {
        if let Some(p) = std::env::var_os("WICK_TUNE_FILE") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("WICK_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("wick")))
            .unwrap_or_else(|| PathBuf::from(".wick-cache"));
        base.join("tune").join(format!(
            "{}-{}.json",
            slug(&caps.adapter_name),
            slug(caps.backend.to_str())
        ))
    }

    /// The table at `path` if it exists, parses and belongs to this device.
    pub fn load(path: &Path, caps: &Capabilities) -> Option<TuningTable> {
        let text = std::fs::read_to_string(path).ok()?;
        let t: TuningTable = match serde_json::from_str(&text) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("{}: ignoring a malformed tuning file: {e}", path.display());
                return None;
            }
        };
        if t.adapter != caps.adapter_name
            || t.backend != caps.backend.to_str()
            || t.driver != caps.driver_info
        {
            log::warn!(
                "{}: tuning file is for {} ({}, {}), not this device; ignored",
                path.display(),
                t.adapter,
                t.backend,
                t.driver
            );
            return None;
        }
        Some(t)
    }

    /// Writes the table (atomically: a temporary file renamed over `path`).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::InvalidArgument(format!("tuning table: {e}")))?;
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// The measured split for `op` on an n x k `format` matrix, if any, as a config this
    /// device accepts.
    pub fn lookup(
        &self,
        caps: &Capabilities,
        op: &str,
        format: WeightFormat,
        n: usize,
        k: usize,
    ) -> Option<GemvConfig> {
        let e = self
            .entries
            .iter()
            .find(|e| e.op == op && e.format == format && e.n == n && e.k == k)?;
        let cfg = GemvConfig {
            lanes_per_row: e.lanes_per_row,
            rows_per_group: e.rows_per_group,
            workgroup_size: e.workgroup_size,
            subgroup_reduce: caps.subgroup && e.lanes_per_row <= caps.subgroup_min_size,
        };
        cfg.validate(caps, op.ends_with("swiglu"))
            .ok()
            .map(|()| cfg)
    }

    /// The measured winner for `op`, if the table has one.
    pub fn variant_winner(&self, op: &str) -> Option<Variant> {
        self.variants.iter().find(|v| v.op == op).map(|v| v.winner)
    }

    /// Records `entry`, replacing an older one for the same op.
    pub fn set_variant(&mut self, entry: VariantEntry) {
        self.variants.retain(|v| v.op != entry.op);
        self.variants.push(entry);
        self.variants.sort_by(|a, b| a.op.cmp(&b.op));
    }
}
