//! The variant policy: portable, native or auto, globally and per op (`--kernels`,
//! `WICK_KERNELS`).

use std::collections::HashMap;

use crate::error::{Error, Result};

/// How the registry picks variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    #[default]
    Portable,
    Native,
    /// Native where one exists for this backend and the tuning cache does not say it is
    /// slower; on Metal, only where the tuning cache says it is faster (see `variant_for`).
    Auto,
}

impl std::str::FromStr for KernelChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "wgsl" => Ok(KernelChoice::Portable),
            "native" => Ok(KernelChoice::Native),
            "auto" => Ok(KernelChoice::Auto),
            o => Err(Error::InvalidArgument(format!(
                "kernel choice {o:?} (expected portable, native or auto)"
            ))),
        }
    }
}

/// The variant policy: a default and per-op overrides (`WICK_KERNELS=gemv_q4_0=native,...`).
#[derive(Debug, Clone, Default)]
pub struct KernelPolicy {
    pub default: KernelChoice,
    pub per_op: HashMap<String, KernelChoice>,
}

impl KernelPolicy {
    /// Parses `op=choice,op=choice`.
    pub fn parse_overrides(&mut self, s: &str) -> Result<()> {
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (op, choice) = part.split_once('=').ok_or_else(|| {
                Error::InvalidArgument(format!("WICK_KERNELS entry {part:?} is not op=choice"))
            })?;
            self.per_op.insert(op.trim().to_string(), choice.parse()?);
        }
        Ok(())
    }

    /// The default policy plus `$WICK_KERNELS`.
    pub fn from_env(default: KernelChoice) -> Result<Self> {
        let mut p = KernelPolicy {
            default,
            per_op: HashMap::new(),
        };
        if let Ok(s) = std::env::var("WICK_KERNELS") {
            p.parse_overrides(&s)?;
        }
        Ok(p)
    }

    pub fn choice_for(&self, op: &str) -> KernelChoice {
        self.per_op.get(op).copied().unwrap_or(self.default)
    }
}
