//! `wick kernels check`: every variant this adapter can run of each op that has a native
//! variant, and the portable kernel of the same pipeline on the same inputs, against the CPU
//! reference ([`crate::reference`]) on fresh random inputs.
//!
//! Which pipelines are checked comes from [`crate::kernels::checked_specs`]; the cases of each come
//! from its family ([`crate::kernels::Family::checks`]) and run through the public host functions, so
//! the host's dispatch for a native kernel (its fixed work split) is checked too. A pipeline
//! of a family without checks is reported as a failure, never skipped.

use std::sync::Arc;

use serde::Serialize;

use super::catalog;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{
    checked_specs, family_of, KernelChoice, KernelPolicy, KernelSpec, Kernels, Variant,
};

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Only ops whose name contains this.
    pub filter: Option<String>,
    /// Seed of the random inputs; None draws one from the clock (reported in the results).
    pub seed: Option<u64>,
    /// Test hook: perturbs every reference output, so a test can see the check fail.
    pub corrupt_reference: bool,
}

/// One variant of one pipeline on one shape.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub op: String,
    pub variant: Variant,
    /// The pipeline's defines (format, kind, prologue), e.g. `NORM Q8_0`.
    pub pipeline: String,
    pub shape: String,
    /// max |got - want| / max |want| (infinite when an output is NaN, i.e. never written).
    pub max_rel_err: f64,
    pub tolerance: f64,
    pub pass: bool,
    /// Why the run itself failed (build, dispatch, or a variant other than the one asked).
    pub error: Option<String>,
}

/// Everything `wick kernels check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub adapter: String,
    pub backend: String,
    pub seed: u64,
    pub rows: Vec<CheckRow>,
}

impl CheckReport {
    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.pass).count()
    }

    /// Passed and total checks per variant, and for the native rows per op kind (the op
    /// without its format: `gemv_swiglu`, `gemm`, ...), e.g. `30 of 30 checks pass: portable
    /// 15/15, native 15/15 (attention_decode 3/3, gemm 8/8, gemv 4/4)`. On Vulkan the native
    /// `gemm` rows are the cooperative-matrix GEMM.
    pub fn summary(&self) -> String {
        let tally = |rows: &mut dyn Iterator<Item = &CheckRow>| {
            rows.fold((0, 0), |(p, t), r| (p + r.pass as usize, t + 1))
        };
        let (pass, total) = tally(&mut self.rows.iter());
        let per_variant = |v: Variant| tally(&mut self.rows.iter().filter(|r| r.variant == v));
        let (pp, pt) = per_variant(Variant::Portable);
        let (np, nt) = per_variant(Variant::Native);
        let mut kinds: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.variant == Variant::Native)
            .map(|r| catalog::op_kind(&r.op))
            .collect();
        kinds.sort();
        kinds.dedup();
        let per_kind: Vec<String> =
            kinds
                .iter()
                .map(|k| {
                    let (p, t) =
                        tally(&mut self.rows.iter().filter(|r| {
                            r.variant == Variant::Native && catalog::op_kind(&r.op) == *k
                        }));
                    format!("{k} {p}/{t}")
                })
                .collect();
        let detail = if per_kind.is_empty() {
            String::new()
        } else {
            format!(" ({})", per_kind.join(", "))
        };
        format!("{pass} of {total} checks pass: portable {pp}/{pt}, native {np}/{nt}{detail}")
    }
}

/// max |got - want| / max |want|; NaN anywhere in `got` (the poison never overwritten) is
/// infinite. With `corrupt`, `want` is first moved by its own scale at one element.
fn rel_err(got: &[f32], want: &[f32], corrupt: bool) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let mut want = want.to_vec();
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    if corrupt {
        if let Some(w) = want.last_mut() {
            *w += scale.max(1.0) as f32;
        }
    }
    let mut max_d = 0.0f64;
    for (g, w) in got.iter().zip(&want) {
        let d = (*g as f64 - *w as f64).abs();
        if !d.is_finite() {
            return f64::INFINITY;
        }
        max_d = max_d.max(d);
    }
    max_d / scale.max(f64::MIN_POSITIVE)
}

/// Checks every pipeline of [`crate::kernels::checked_specs`] whose op matches the filter: the
/// portable kernel and each native variant this adapter can run, on the same inputs.
pub fn check(gpu: &Arc<Gpu>, opts: &CheckOptions) -> Result<CheckReport> {
    check_specs(gpu, &checked_specs(), opts)
}

/// The registries a check runs each variant on: `portable` under the portable policy, `native`
/// under a global native one (an op's native variant wherever this adapter has it). A pipeline
/// that several cases or specs build is built once per registry; the kernel tests pass their
/// own, so the checks share the pipelines the tests build.
#[derive(Clone, Copy)]
pub struct CheckRegistries<'a> {
    pub portable: &'a Kernels,
    pub native: &'a Kernels,
}

impl<'a> CheckRegistries<'a> {
    fn get(&self, variant: Variant) -> &'a Kernels {
        match variant {
            Variant::Portable => self.portable,
            Variant::Native => self.native,
        }
    }
}

/// [`check`] over the given pipeline specs (tests pass portable-only specs to exercise every
/// family's check before a native variant exists for it), on fresh registries.
pub fn check_specs(
    gpu: &Arc<Gpu>,
    specs: &[KernelSpec],
    opts: &CheckOptions,
) -> Result<CheckReport> {
    let portable = Kernels::new(gpu.clone());
    let native = Kernels::with_policy(
        gpu.clone(),
        KernelPolicy {
            default: KernelChoice::Native,
            per_op: Default::default(),
        },
    );
    check_specs_on(
        CheckRegistries {
            portable: &portable,
            native: &native,
        },
        specs,
        opts,
    )
}

/// [`check_specs`] on the given registries (both on one device).
pub fn check_specs_on(
    registries: CheckRegistries<'_>,
    specs: &[KernelSpec],
    opts: &CheckOptions,
) -> Result<CheckReport> {
    let gpu = &registries.portable.gpu;
    if !Arc::ptr_eq(gpu, &registries.native.gpu) {
        return Err(Error::InvalidArgument(
            "the portable and native check registries are on different devices".into(),
        ));
    }
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let caps = &gpu.caps;
    let mut rows = Vec::new();
    let specs: Vec<&KernelSpec> = specs
        .iter()
        .filter(|s| opts.filter.as_deref().is_none_or(|f| s.op.contains(f)))
        .collect();
    for (i, spec) in specs.iter().enumerate() {
        let defines = spec.pipeline_defines();
        let pipeline = defines.join(" ");
        let native_here =
            catalog::op_info(&spec.op).is_some_and(|o| o.native_here(caps, Some(&defines)));
        let mut variants = vec![Variant::Portable];
        if native_here {
            variants.push(Variant::Native);
        }
        let row = |variant, shape: String, tol, result: Result<f64>| {
            let (err, error) = match result {
                Ok(e) => (e, None),
                Err(e) => (f64::INFINITY, Some(e.to_string())),
            };
            CheckRow {
                op: spec.op.clone(),
                variant,
                pipeline: pipeline.clone(),
                shape,
                max_rel_err: err,
                tolerance: tol,
                pass: error.is_none() && err <= tol,
                error,
            }
        };
        // Every pipeline gets its own inputs; both variants of one case share them.
        let seed = seed.wrapping_add(i as u64 * 0x1_0000);
        let family = family_of(spec);
        let cases = match family.and_then(|f| f.checks) {
            Some(checks) => checks(spec, seed),
            None => Err(Error::Unsupported(format!(
                "no check for the {} family yet",
                family.map_or(spec.family, |f| f.name)
            ))),
        };
        let cases = match cases {
            Ok(c) => c,
            Err(e) => {
                rows.push(row(Variant::Portable, "-".into(), 0.0, Err(e)));
                continue;
            }
        };
        for variant in variants {
            let kr = registries.get(variant);
            // A registry whose policy would run another variant of this op fails every case
            // (the cases check the variant that ran against the policy's choice).
            let chosen = match kr.policy.choice_for(&spec.op) {
                KernelChoice::Native => Variant::Native,
                _ => Variant::Portable,
            };
            for case in &cases {
                let result = if chosen != variant {
                    Err(Error::InvalidArgument(format!(
                        "the {variant:?} check registry's policy runs {} as {chosen:?}",
                        spec.op
                    )))
                } else {
                    (case.run)(kr).map(|(got, want)| rel_err(&got, &want, opts.corrupt_reference))
                };
                rows.push(row(
                    variant,
                    case.shape.clone(),
                    case.tolerance(variant),
                    result,
                ));
            }
        }
    }
    Ok(CheckReport {
        adapter: caps.adapter_name.clone(),
        backend: caps.backend.to_string(),
        seed,
        rows,
    })
}
