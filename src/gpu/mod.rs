//! wgpu plumbing: adapter choice, device creation with every useful feature, capability
//! records for kernel selection, error capture (wgpu's default handler panics; ours records),
//! buffer helpers and a GPU timestamp profiler.

mod buffers;
mod memory;
mod profiler;

pub use buffers::{POISON, STORAGE};
pub use memory::{device_memory, MemoryKind, MemoryReservation, MemoryUsage};
pub use profiler::{GpuProfiler, ProfileSample};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use memory::Accounting;

use crate::error::{Error, Result};

/// Broad class of adapter, the key of per-adapter kernel tuning tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterClass {
    Apple,
    Nvidia,
    Amd,
    Intel,
    /// A software rasteriser such as lavapipe or WARP.
    Cpu,
    Other,
}

impl AdapterClass {
    fn classify(info: &wgpu::AdapterInfo) -> Self {
        if info.device_type == wgpu::DeviceType::Cpu {
            return AdapterClass::Cpu;
        }
        match info.vendor {
            0x106B => AdapterClass::Apple,
            0x10DE => AdapterClass::Nvidia,
            0x1002 | 0x1022 => AdapterClass::Amd,
            0x8086 => AdapterClass::Intel,
            _ => {
                let name = info.name.to_ascii_lowercase();
                if name.contains("apple") {
                    AdapterClass::Apple
                } else if name.contains("nvidia") {
                    AdapterClass::Nvidia
                } else if name.contains("amd") || name.contains("radeon") {
                    AdapterClass::Amd
                } else if name.contains("intel") {
                    AdapterClass::Intel
                } else if name.contains("llvmpipe") || name.contains("lavapipe") {
                    AdapterClass::Cpu
                } else {
                    AdapterClass::Other
                }
            }
        }
    }
}

/// What the opened device can do; kernels choose variants and parameters from this.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capabilities {
    pub adapter_name: String,
    /// Serialised (and printed) lowercase: `vulkan`, `metal`, `dx12`, `gl`.
    #[serde(serialize_with = "serialize_display")]
    pub backend: wgpu::Backend,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub vendor: u32,
    pub class: AdapterClass,
    /// `subgroupAdd` and friends are available (Features::SUBGROUP).
    pub subgroup: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// `enable f16;` is available (Features::SHADER_F16).
    pub shader_f16: bool,
    pub timestamps: bool,
    pub timestamps_inside_passes: bool,
    pub passthrough_shaders: bool,
    /// Cooperative matrices with f16 16x16x16 operands and f32 accumulators at subgroup
    /// scope (Features::EXPERIMENTAL_COOPERATIVE_MATRIX; on Vulkan VK_KHR_cooperative_matrix,
    /// e.g. NVIDIA tensor cores): the native Vulkan prefill GEMM needs it.
    pub cooperative_matrix_f16: bool,
    pub immediates: bool,
    pub pipeline_cache: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    pub min_uniform_buffer_offset_alignment: u32,
    pub min_storage_buffer_offset_alignment: u32,
    /// The device's memory (Vulkan: its largest device-local heap), when the backend reports
    /// it; models and sessions are checked against it before they allocate.
    pub device_memory: Option<u64>,
}

fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Features wick uses when the adapter offers them.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::SUBGROUP
        | wgpu::Features::SHADER_F16
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::PASSTHROUGH_SHADERS
        | wgpu::Features::IMMEDIATES
        | wgpu::Features::PIPELINE_CACHE
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
}

/// Options for opening a device.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Backend name: vulkan, metal, dx12, gl or any. Defaults to `$WICK_BACKEND`, then any.
    pub backend: Option<String>,
    /// Substring of the adapter name. Defaults to `$WICK_ADAPTER`.
    pub adapter: Option<String>,
    /// Lowers `max_storage_buffer_binding_size` below the adapter's (tests of tensor splitting).
    pub max_binding_override: Option<u64>,
    /// Leave these features off even when offered (tests of fallbacks).
    pub disable_features: Option<wgpu::Features>,
    /// Caps the GPU memory wick's models and sessions may reserve below the device's memory
    /// (or sets it where the backend does not report one): loads and sessions beyond it fail
    /// up front with [`Error::OutOfMemory`].
    pub memory_budget: Option<u64>,
}

/// The device context: one adapter, its device and queue, and what they can do.
pub struct Gpu {
    pub instance: wgpu::Instance,
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub caps: Capabilities,
    /// Uncaptured errors with the thread whose call raised them (wgpu reports them
    /// synchronously on the calling thread), so a session never receives another's error.
    errors: Arc<Mutex<Vec<LoggedError>>>,
    lost: Arc<Mutex<Option<String>>>,
    destroyed: AtomicBool,
    pub(crate) memory: Arc<Accounting>,
}

/// Held while a device is opened or destroyed (see [`Gpu::with_options`]).
static DEVICE_LIFECYCLE: Mutex<()> = Mutex::new(());

/// Uncaptured errors kept per device; older ones are dropped (a thread that never checks
/// again must not grow the log forever).
const MAX_LOGGED_ERRORS: usize = 256;

/// An uncaptured error: the thread that raised it, whether it was out-of-memory, the message.
type LoggedError = (ThreadId, bool, String);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("caps", &self.caps).finish()
    }
}

/// Parses a backend name as used by `WICK_BACKEND`.
pub fn parse_backends(name: &str) -> Result<wgpu::Backends> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "metal" | "mtl" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "gl" | "gles" | "opengl" => wgpu::Backends::GL,
        "any" | "" => wgpu::Backends::PRIMARY,
        "all" => wgpu::Backends::all(),
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown backend {other:?} (expected vulkan, metal, dx12, gl or any)"
            )))
        }
    })
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn device_type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    // Native compute backends first; GL has no compute features wick needs.
    match b {
        wgpu::Backend::Metal | wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Dx12 => 1,
        _ => 2,
    }
}

fn no_adapter_hint() -> &'static str {
    if cfg!(target_os = "linux") {
        "install a Vulkan driver for your GPU; without a GPU, Mesa's CPU driver works: \
         `sudo apt-get install mesa-vulkan-drivers` (Debian/Ubuntu) or `dnf install mesa-vulkan-drivers` (Fedora)"
    } else if cfg!(target_os = "macos") {
        "Metal should always be present on macOS 13+; check WICK_BACKEND/WICK_ADAPTER"
    } else if cfg!(target_os = "windows") {
        "install or update your GPU driver (DX12 or Vulkan)"
    } else {
        "install a Vulkan driver"
    }
}

/// Lists every adapter wgpu can see on the given backends (for `wick info`).
pub fn enumerate_adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let instance = new_instance(backends);
    pollster::block_on(instance.enumerate_adapters(backends))
}

fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    desc.flags = wgpu::InstanceFlags::from_env_or_default();
    wgpu::Instance::new(desc)
}

/// Features of an adapter that wick would use, as names (for `wick info`).
pub fn feature_names(features: wgpu::Features) -> Vec<&'static str> {
    let table: [(wgpu::Features, &str); 9] = [
        (wgpu::Features::SUBGROUP, "SUBGROUP"),
        (wgpu::Features::SHADER_F16, "SHADER_F16"),
        (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
        (
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            "TIMESTAMP_QUERY_INSIDE_PASSES",
        ),
        (
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            "TIMESTAMP_QUERY_INSIDE_ENCODERS",
        ),
        (wgpu::Features::PASSTHROUGH_SHADERS, "PASSTHROUGH_SHADERS"),
        (wgpu::Features::IMMEDIATES, "IMMEDIATES"),
        (wgpu::Features::PIPELINE_CACHE, "PIPELINE_CACHE"),
        (
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            "EXPERIMENTAL_COOPERATIVE_MATRIX",
        ),
    ];
    table
        .iter()
        .filter(|(f, _)| features.contains(*f))
        .map(|(_, n)| *n)
        .collect()
}

impl Gpu {
    /// Opens the best adapter per `WICK_BACKEND` / `WICK_ADAPTER`, else discrete > integrated > CPU.
    pub fn new() -> Result<Arc<Gpu>> {
        Self::with_options(GpuOptions::default())
    }

    pub fn with_options(opts: GpuOptions) -> Result<Arc<Gpu>> {
        // Opening (instance, adapters, device) and destroying devices are serialised process-
        // wide: they are rare, and a driver need not make them safe to run concurrently.
        let _lifecycle = DEVICE_LIFECYCLE.lock().unwrap_or_else(|p| p.into_inner());
        let backend_name = opts
            .backend
            .clone()
            .or_else(|| env_nonempty("WICK_BACKEND"))
            .unwrap_or_else(|| "any".into());
        let backends = parse_backends(&backend_name)?;
        let wanted_name = opts
            .adapter
            .clone()
            .or_else(|| env_nonempty("WICK_ADAPTER"));
        let instance = new_instance(backends);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                let info = a.get_info();
                match &wanted_name {
                    Some(n) => info.name.to_lowercase().contains(&n.to_lowercase()),
                    None => true,
                }
            })
            .collect();
        candidates.sort_by_key(|a| {
            let i = a.get_info();
            (device_type_rank(i.device_type), backend_rank(i.backend))
        });
        let adapter = match candidates.into_iter().next() {
            Some(a) => a,
            None if seen.is_empty() => {
                return Err(Error::NoAdapter(format!(
                    "wgpu found no adapter for backend {backend_name:?}; {}",
                    no_adapter_hint()
                )))
            }
            None => {
                return Err(Error::NoAdapter(format!(
                "no adapter matches WICK_ADAPTER={:?} on backend {backend_name:?}; available: {}",
                wanted_name.unwrap_or_default(),
                seen.join(", ")
            )))
            }
        };
        Self::open(instance, adapter, &opts)
    }

    fn open(
        instance: wgpu::Instance,
        adapter: wgpu::Adapter,
        opts: &GpuOptions,
    ) -> Result<Arc<Gpu>> {
        let info = adapter.get_info();
        let mut features = adapter.features() & wanted_features();
        if let Some(off) = opts.disable_features {
            features.remove(off);
        }
        let limits = adapter.limits();
        let mut desc = wgpu::DeviceDescriptor {
            label: Some("wick"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        if features.intersects(
            wgpu::Features::PASSTHROUGH_SHADERS | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
        ) {
            // SAFETY: passthrough shaders are only created from wick's own, tested native
            // kernels; the experimental gate exists because their validation is the driver's.
            // Cooperative matrices are only used by the native GEMM, checked the same way.
            desc.experimental_features = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::RequestDevice(format!("{} ({:?}): {e}", info.name, info.backend))
        })?;

        let errors: Arc<Mutex<Vec<LoggedError>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                if v.len() >= MAX_LOGGED_ERRORS {
                    v.remove(0);
                }
                let oom = matches!(e, wgpu::Error::OutOfMemory { .. });
                v.push((std::thread::current().id(), oom, e.to_string()));
            }
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(if msg.is_empty() {
                    format!("{reason:?}")
                } else {
                    format!("{reason:?}: {msg}")
                });
            }
        });

        let dl = device.limits();
        let mut max_binding = dl.max_storage_buffer_binding_size;
        if let Some(cap) = opts.max_binding_override {
            max_binding = max_binding.min(cap);
        }
        let caps = Capabilities {
            adapter_name: info.name.clone(),
            backend: info.backend,
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            vendor: info.vendor,
            class: AdapterClass::classify(&info),
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamps_inside_passes: features
                .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            passthrough_shaders: features.contains(wgpu::Features::PASSTHROUGH_SHADERS),
            cooperative_matrix_f16: features
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
                && adapter.cooperative_matrix_properties().iter().any(|p| {
                    use wgpu::CooperativeScalarType as T;
                    (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                        && p.ab_type == T::F16
                        && p.cr_type == T::F32
                }),
            immediates: features.contains(wgpu::Features::IMMEDIATES),
            pipeline_cache: features.contains(wgpu::Features::PIPELINE_CACHE),
            max_storage_buffer_binding_size: max_binding,
            max_buffer_size: dl.max_buffer_size,
            max_compute_workgroup_storage_size: dl.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: dl.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: dl.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: dl.max_storage_buffers_per_shader_stage,
            min_uniform_buffer_offset_alignment: dl.min_uniform_buffer_offset_alignment,
            min_storage_buffer_offset_alignment: dl.min_storage_buffer_offset_alignment,
            device_memory: device_memory(&adapter),
        };
        let budget = match (opts.memory_budget, caps.device_memory) {
            (Some(cap), Some(m)) => Some(cap.min(m)),
            (cap, m) => cap.or(m),
        };
        Ok(Arc::new(Gpu {
            instance,
            adapter,
            device,
            queue,
            caps,
            errors,
            lost,
            destroyed: AtomicBool::new(false),
            memory: Arc::new(Accounting::new(budget)),
        }))
    }

    /// Returns (and clears) the GPU errors this thread's calls raised outside an error scope
    /// since its last check, or device loss (which concerns every thread). Errors raised by
    /// other threads stay for their own checks: sessions on other threads never see them.
    pub fn check(&self) -> Result<()> {
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        let mut errs = self
            .errors
            .lock()
            .map_err(|_| Error::Gpu("error log poisoned".into()))?;
        let me = std::thread::current().id();
        if !errs.iter().any(|(t, _, _)| *t == me) {
            return Ok(());
        }
        let (mut mine, mut oom) = (Vec::new(), false);
        errs.retain(|(t, o, m)| {
            if *t == me {
                mine.push(m.clone());
                oom |= *o;
                false
            } else {
                true
            }
        });
        let all = mine.join("; ");
        Err(if oom {
            Error::OutOfMemory(all)
        } else {
            Error::Gpu(all)
        })
    }

    /// The loss of the device as an error, if it is lost (or destroyed).
    pub fn lost(&self) -> Option<Error> {
        if let Some(msg) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Some(Error::DeviceLost(msg));
        }
        self.destroyed
            .load(Ordering::Relaxed)
            .then(|| Error::DeviceLost("the device was destroyed".into()))
    }

    /// `e`, or the device's loss when it is lost: a failed map or a destroyed-buffer error
    /// after a device loss is reported as the loss, which is what the caller can act on.
    pub fn lost_or(&self, e: Error) -> Error {
        self.lost().unwrap_or(e)
    }

    /// Runs `f` inside validation and out-of-memory error scopes, so an error it causes is
    /// returned from here rather than recorded for a later [`Gpu::check`].
    pub fn scoped<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        if let Some(e) = o {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        if let Some(e) = v {
            return Err(Error::Gpu(e.to_string()));
        }
        self.check()?;
        Ok(out)
    }

    /// Blocks until all submitted work is done; surfaces errors and device loss.
    pub fn wait_idle(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.lost_or(Error::Gpu(format!("waiting for the GPU: {e}"))))?;
        self.check()
    }

    /// Destroys the device (tests of device-loss handling). Later calls return DeviceLost.
    pub fn destroy(&self) {
        let _lifecycle = DEVICE_LIFECYCLE.lock().unwrap_or_else(|p| p.into_inner());
        self.destroyed.store(true, Ordering::Relaxed);
        self.device.destroy();
    }

    /// What wick's models and sessions hold on this device now.
    pub fn memory_usage(&self) -> MemoryUsage {
        self.memory.usage()
    }

    /// Reserves `bytes` of the device's memory for `what` (a model's weights, a session's
    /// buffers) before allocating them: [`Error::OutOfMemory`] naming `what` when they do not
    /// fit in what the budget has left. The bytes return when the reservation is dropped.
    pub fn reserve(&self, kind: MemoryKind, what: &str, bytes: u64) -> Result<MemoryReservation> {
        MemoryReservation::new(&self.memory, kind, what, bytes)
    }

    /// Whether a buffer of `bytes` fits in one storage binding on this device.
    pub fn fits_binding(&self, bytes: u64) -> bool {
        bytes <= self.caps.max_storage_buffer_binding_size
    }
}
