//! The registry: builds and caches the pipeline of a [`KernelSpec`] (the variant the policy
//! picks, or an explicit one), and the bind groups and dispatches over it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::policy::{KernelChoice, KernelPolicy};
use super::spec::{native_unavailable, Binding, KernelSpec, NativeKernel, Variant};
use super::{msl_source, native_wgsl_checks, preprocess, shader_checks, spirv_source, tuning};
use crate::error::{Error, Result};
use crate::gpu::Gpu;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    family: &'static str,
    entry: &'static str,
    defines: Vec<&'static str>,
    constants: Vec<(&'static str, u64)>,
    variant: Variant,
}

impl PipelineKey {
    fn of(spec: &KernelSpec, variant: Variant) -> PipelineKey {
        let mut defines: Vec<&'static str> = spec.defines.clone();
        defines.sort();
        PipelineKey {
            family: spec.family,
            entry: spec.entry,
            defines,
            constants: spec
                .constants
                .iter()
                .map(|(n, v)| (*n, v.to_bits()))
                .collect(),
            variant,
        }
    }
}

/// A built compute pipeline with its bind group layout.
#[derive(Debug)]
pub struct Pipeline {
    pub op: String,
    pub variant: Variant,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// A pipeline, its bind group and its grid: built once, recorded many times.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub pipeline: Arc<Pipeline>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// The buffers bound at 0..n, whole, so [`Kernels::rebind`] can put a range of another
    /// buffer in one's place.
    pub buffers: Vec<wgpu::Buffer>,
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Splits a 1-D workgroup count over x and y to respect the per-dimension limit.
/// Kernels recover the linear index as `wid.x + wid.y * nwg.x` and must ignore the tail.
pub fn grid_1d(workgroups: u32, max_per_dim: u32) -> [u32; 3] {
    if workgroups <= max_per_dim {
        [workgroups.max(1), 1, 1]
    } else {
        let y = workgroups.div_ceil(max_per_dim);
        [workgroups.div_ceil(y), y, 1]
    }
}

/// The pipeline cache and variant policy over one [`Gpu`].
pub struct Kernels {
    pub gpu: Arc<Gpu>,
    pub policy: KernelPolicy,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    modules: Mutex<HashMap<(String, Vec<&'static str>), wgpu::ShaderModule>>,
    /// Measured GEMV splits (`wick tune`) and variant winners (`wick kernels bench --save`)
    /// for this device; None: built-in choices only.
    pub tuning: Option<tuning::TuningTable>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Kernels {
    pub fn new(gpu: Arc<Gpu>) -> Self {
        Self::with_policy(gpu, KernelPolicy::default())
    }

    pub fn with_policy(gpu: Arc<Gpu>, policy: KernelPolicy) -> Self {
        Kernels {
            gpu,
            policy,
            pipelines: Mutex::default(),
            modules: Mutex::default(),
            tuning: None,
        }
    }

    /// Uses `table`'s measured GEMV splits where it has the shape, and its variant winners
    /// for `--kernels auto`.
    pub fn with_tuning(mut self, table: Option<tuning::TuningTable>) -> Self {
        self.tuning = table;
        self
    }

    /// Defines every WGSL module gets from the device's capabilities.
    pub fn device_defines(&self) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.gpu.caps.subgroup {
            d.push("SUBGROUP");
        }
        if self.gpu.caps.shader_f16 {
            d.push("F16");
        }
        d
    }

    /// The native kernel usable for `spec` on this adapter, if any ([`native_unavailable`]).
    pub fn native_for(&self, spec: &KernelSpec) -> Option<NativeKernel> {
        let caps = &self.gpu.caps;
        let n = spec.native(caps.backend)?;
        native_unavailable(caps, caps.backend, n)
            .is_none()
            .then_some(*n)
    }

    /// Which variant the policy selects for `spec` here.
    pub fn variant_for(&self, spec: &KernelSpec) -> Result<Variant> {
        let native = self.native_for(spec).is_some();
        match self.policy.choice_for(&spec.op) {
            KernelChoice::Portable => Ok(Variant::Portable),
            // Native where present, unless `wick kernels bench --save` measured it slower
            // than the portable kernel on this adapter.
            KernelChoice::Auto => Ok(
                match (
                    native,
                    self.tuning
                        .as_ref()
                        .and_then(|t| t.variant_winner(&spec.op)),
                ) {
                    (true, Some(Variant::Portable)) | (false, _) => Variant::Portable,
                    (true, Some(Variant::Native)) => Variant::Native,
                    // Unmeasured: native where wick's natives have been run on such a GPU.
                    // The Metal ones have only had syntax checks and a CPU emulation, so on
                    // Metal auto waits for `wick kernels bench --save` (run after `wick
                    // kernels check`) to record them as faster.
                    (true, None) if self.gpu.caps.backend == wgpu::Backend::Metal => {
                        Variant::Portable
                    }
                    (true, None) => Variant::Native,
                },
            ),
            KernelChoice::Native if native => Ok(Variant::Native),
            // A global "native" falls back per op; an explicit per-op request is an error.
            KernelChoice::Native if !self.policy.per_op.contains_key(&spec.op) => {
                Ok(Variant::Portable)
            }
            KernelChoice::Native => Err(Error::Unsupported(format!(
                "op {} has no native variant for backend {}",
                spec.op, self.gpu.caps.backend
            ))),
        }
    }

    /// The cached pipeline for `spec`, built on first use.
    pub fn pipeline(&self, spec: &KernelSpec) -> Result<Arc<Pipeline>> {
        let variant = self.variant_for(spec)?;
        self.pipeline_variant(spec, variant)
    }

    /// (op, variant) of every pipeline built so far: which variants a model really runs (a
    /// pipeline is built when a dispatch of it is).
    pub fn built_pipelines(&self) -> Vec<(String, Variant)> {
        self.pipelines
            .lock()
            .unwrap()
            .values()
            .map(|p| (p.op.clone(), p.variant))
            .collect()
    }

    /// The pipeline for `spec` with an explicit variant (kernel checks and benchmarks).
    pub fn pipeline_variant(&self, spec: &KernelSpec, variant: Variant) -> Result<Arc<Pipeline>> {
        let key = PipelineKey::of(spec, variant);
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let built = Arc::new(self.build(spec, variant)?);
        self.pipelines
            .lock()
            .unwrap()
            .entry(key)
            .or_insert(built.clone());
        Ok(built)
    }

    fn layout_entries(spec: &KernelSpec) -> Vec<wgpu::BindGroupLayoutEntry> {
        spec.bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match b {
                    Binding::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Binding::Read => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Binding::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect()
    }

    fn wgsl_module(
        &self,
        spec: &KernelSpec,
        checks: wgpu::ShaderRuntimeChecks,
    ) -> Result<wgpu::ShaderModule> {
        let mut defines = self.device_defines();
        defines.extend(spec.defines.iter().copied());
        defines.sort();
        defines.dedup();
        let key = (spec.family.to_string(), defines.clone());
        if let Some(m) = self.modules.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let src = preprocess(spec.family, &defines)?;
        let gpu = &self.gpu;
        let module = gpu
            .scoped(|| {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(spec.family),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                };
                // SAFETY: `shader_checks` keeps bounds checks unless the user turned them off;
                // dropping loop bounding needs every loop to terminate, which wick's kernels
                // guarantee (counted loops over host-validated sizes and constants). Native
                // WGSL kernels see `native_wgsl_checks`.
                unsafe { gpu.device.create_shader_module_trusted(desc, checks) }
            })
            .map_err(|e| Error::Shader {
                family: spec.family.into(),
                message: e.to_string(),
            })?;
        self.modules.lock().unwrap().insert(key, module.clone());
        Ok(module)
    }

    fn native_module(&self, native: &NativeKernel) -> Result<wgpu::ShaderModule> {
        let gpu = &self.gpu;
        let mut desc = wgpu::ShaderModuleDescriptorPassthrough {
            label: Some(native.family),
            ..Default::default()
        };
        let spirv_words;
        match gpu.caps.backend {
            wgpu::Backend::Vulkan => {
                let bytes = spirv_source(native.family).ok_or_else(|| Error::Shader {
                    family: native.family.into(),
                    message: "no SPIR-V shipped".into(),
                })?;
                if bytes.len() % 4 != 0 {
                    return Err(Error::Shader {
                        family: native.family.into(),
                        message: "SPIR-V length is not a multiple of 4".into(),
                    });
                }
                spirv_words = bytemuck::pod_collect_to_vec::<u8, u32>(bytes);
                desc.spirv = Some(std::borrow::Cow::Borrowed(&spirv_words));
            }
            wgpu::Backend::Metal => {
                let src = msl_source(native.family).ok_or_else(|| Error::Shader {
                    family: native.family.into(),
                    message: "no MSL shipped".into(),
                })?;
                desc.msl = Some(std::borrow::Cow::Borrowed(src));
            }
            b => return Err(Error::Unsupported(format!("native kernels on backend {b}"))),
        }
        desc.entry_points = std::borrow::Cow::Owned(vec![wgpu::PassthroughShaderEntryPoint {
            name: std::borrow::Cow::Borrowed(native.entry),
            workgroup_size: (
                native.workgroup_size[0],
                native.workgroup_size[1],
                native.workgroup_size[2],
            ),
        }]);
        // SAFETY: native kernels are wick's own shaders, checked against the CPU reference
        // by `wick kernels check` and the test suite; they bind the portable layout.
        gpu.scoped(|| unsafe { gpu.device.create_shader_module_passthrough(desc) })
            .map_err(|e| Error::Shader {
                family: native.family.into(),
                message: e.to_string(),
            })
    }

    fn build(&self, spec: &KernelSpec, variant: Variant) -> Result<Pipeline> {
        let gpu = &self.gpu;
        let entries = Self::layout_entries(spec);
        let layout = gpu.scoped(|| {
            gpu.device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(spec.entry),
                    entries: &entries,
                })
        })?;
        let pl = gpu.scoped(|| {
            gpu.device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(spec.entry),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                })
        })?;
        let (module, entry, constants) = match variant {
            Variant::Portable => (
                self.wgsl_module(spec, shader_checks())?,
                spec.entry,
                spec.constants.clone(),
            ),
            Variant::Native => {
                let native = self.native_for(spec).ok_or_else(|| {
                    Error::Unsupported(format!("no native variant of {} here", spec.op))
                })?;
                if native.wgsl_defines.is_empty() {
                    (self.native_module(&native)?, native.entry, Vec::new())
                } else {
                    let mut wgsl = spec.clone();
                    wgsl.family = native.family;
                    wgsl.defines.extend(native.wgsl_defines.iter().copied());
                    let m = self.wgsl_module(&wgsl, native_wgsl_checks())?;
                    (m, native.entry, spec.constants.clone())
                }
            }
        };
        let pipeline = gpu
            .scoped(|| {
                gpu.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&spec.op),
                        layout: Some(&pl),
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &constants,
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
            })
            .map_err(|e| Error::Shader {
                family: spec.family.into(),
                message: format!("{} ({:?}): {e}", spec.entry, variant),
            })?;
        Ok(Pipeline {
            op: spec.op.clone(),
            variant,
            pipeline,
            layout,
        })
    }

    /// A bind group binding `buffers` at 0..n in order (whole buffers).
    pub fn bind(&self, pipeline: &Pipeline, buffers: &[&wgpu::Buffer]) -> Result<wgpu::BindGroup> {
        let resources: Vec<wgpu::BindingResource> =
            buffers.iter().map(|b| b.as_entire_binding()).collect();
        self.bind_resources(pipeline, &resources)
    }

    /// A bind group from explicit resources (buffer ranges of split tensors).
    pub fn bind_resources(
        &self,
        pipeline: &Pipeline,
        resources: &[wgpu::BindingResource<'_>],
    ) -> Result<wgpu::BindGroup> {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        let gpu = &self.gpu;
        gpu.scoped(|| {
            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&pipeline.op),
                layout: &pipeline.layout,
                entries: &entries,
            })
        })
    }

    /// A dispatch of `spec` over `workgroups`, binding `buffers` in order.
    pub fn dispatch(
        &self,
        spec: &KernelSpec,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let pipeline = self.pipeline(spec)?;
        let bind_group = self.bind(&pipeline, buffers)?;
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups,
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
        })
    }

    /// `d` with each binding of a `(template, range)` pair's template buffer bound to the
    /// range instead: a dispatch built (and its shapes checked) on a one-row template buffer,
    /// moved onto row `b` of a buffer of many rows (batched decode: one sequence's RoPE and
    /// attention over its row of the batch's activations). A range is exactly as large as
    /// its template, at an offset the device's storage-offset alignment allows.
    pub fn rebind(
        &self,
        d: &Dispatch,
        swaps: &[(&wgpu::Buffer, wgpu::BufferBinding<'_>)],
    ) -> Result<Dispatch> {
        let align = self.gpu.caps.min_storage_buffer_offset_alignment.max(1) as u64;
        for (t, r) in swaps {
            let size = r
                .size
                .map_or(r.buffer.size().saturating_sub(r.offset), |s| s.get());
            if size != t.size() || r.offset % align != 0 || r.offset + size > r.buffer.size() {
                return Err(Error::Shape(format!(
                    "{}: a {size}-byte range at offset {} of a {}-byte buffer cannot stand for \
                     a {}-byte binding (ranges start at multiples of {align} bytes)",
                    d.pipeline.op,
                    r.offset,
                    r.buffer.size(),
                    t.size()
                )));
            }
        }
        let resources: Vec<wgpu::BindingResource> = d
            .buffers
            .iter()
            .map(|b| match swaps.iter().find(|(t, _)| *t == b) {
                Some((_, r)) => wgpu::BindingResource::Buffer(r.clone()),
                None => b.as_entire_binding(),
            })
            .collect();
        Ok(Dispatch {
            pipeline: d.pipeline.clone(),
            bind_group: self.bind_resources(&d.pipeline, &resources)?,
            workgroups: d.workgroups,
            buffers: d.buffers.clone(),
        })
    }

    /// Records `dispatches` into one compute pass, submits, and waits (tests, one-off work).
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let gpu = &self.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        gpu.scoped(|| gpu.queue.submit([enc.finish()]))?;
        gpu.wait_idle()
    }
}
