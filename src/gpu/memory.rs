//! GPU memory accounting: what wick's models and sessions hold on the device, checked against
//! a budget (the device's memory where the backend reports it) *before* anything is
//! allocated, so a model or context too large for the device is a clear error rather than an
//! allocation failure half-way through an upload (or, on drivers that over-commit, a crash
//! when the memory is first touched).
//!
//! Models and sessions take a [`MemoryReservation`] for the bytes of the buffers they create;
//! dropping it (with the model or session) gives the bytes back. The counters double as a
//! live-resource count for tests and `wick info`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// What a reservation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// A model's weights.
    Model,
    /// A session's KV cache, activations and scratch buffers.
    Session,
}

/// The counters of one device.
#[derive(Debug, Default)]
pub(crate) struct Accounting {
    /// Total bytes wick may reserve (None: unknown, only per-buffer limits apply).
    pub budget: Option<u64>,
    reserved: AtomicU64,
    model_bytes: AtomicU64,
    session_bytes: AtomicU64,
    models: AtomicUsize,
    sessions: AtomicUsize,
    /// Decode steps submitted whose token has not been read back yet (all sessions).
    in_flight_steps: AtomicUsize,
}

/// A snapshot of what wick holds on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MemoryUsage {
    /// Bytes wick may use on this device: the device's memory (Vulkan: its largest
    /// device-local heap), or [`crate::gpu::GpuOptions::memory_budget`]; None when the
    /// backend does not report it (then only the per-buffer limits are checked up front).
    pub budget: Option<u64>,
    /// Bytes reserved by live models and sessions.
    pub reserved: u64,
    pub models: usize,
    pub model_bytes: u64,
    pub sessions: usize,
    pub session_bytes: u64,
    /// Decode steps submitted and not yet read back, over every session (a generation in
    /// progress has one or two; none once every generation has ended or been dropped).
    pub in_flight_steps: usize,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Accounting {
    pub fn new(budget: Option<u64>) -> Self {
        Accounting {
            budget,
            ..Default::default()
        }
    }

    pub fn usage(&self) -> MemoryUsage {
        MemoryUsage {
            budget: self.budget,
            reserved: self.reserved.load(Ordering::SeqCst),
            models: self.models.load(Ordering::SeqCst),
            model_bytes: self.model_bytes.load(Ordering::SeqCst),
            sessions: self.sessions.load(Ordering::SeqCst),
            session_bytes: self.session_bytes.load(Ordering::SeqCst),
            in_flight_steps: self.in_flight_steps.load(Ordering::SeqCst),
        }
    }

    /// Adds `bytes` to the reserved total unless that would exceed the budget.
    fn take(&self, what: &str, bytes: u64) -> Result<()> {
        let mut cur = self.reserved.load(Ordering::SeqCst);
        loop {
            let next = cur.checked_add(bytes);
            if let Some(budget) = self.budget {
                if next.is_none_or(|n| n > budget) {
                    let u = self.usage();
                    return Err(Error::OutOfMemory(format!(
                        "{what} needs {bytes} bytes ({}), which does not fit: wick's budget on this device is {budget} bytes ({}) and {} are already held by {} model(s) and {} session(s); use a smaller context (--ctx), a more quantised model, or drop other sessions/models",
                        mib(bytes),
                        mib(budget),
                        mib(cur),
                        u.models,
                        u.sessions
                    )));
                }
            }
            let next = next.ok_or_else(|| {
                Error::OutOfMemory(format!("{what} needs {bytes} bytes, which overflows"))
            })?;
            match self
                .reserved
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    fn kind_bytes(&self, kind: MemoryKind) -> &AtomicU64 {
        match kind {
            MemoryKind::Model => &self.model_bytes,
            MemoryKind::Session => &self.session_bytes,
        }
    }

    fn kind_count(&self, kind: MemoryKind) -> &AtomicUsize {
        match kind {
            MemoryKind::Model => &self.models,
            MemoryKind::Session => &self.sessions,
        }
    }

    pub fn step_started(&self) {
        self.in_flight_steps.fetch_add(1, Ordering::SeqCst);
    }

    pub fn step_finished(&self) {
        // Saturating: a step counted before a counter reset can never drive it negative.
        let _ = self
            .in_flight_steps
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// Bytes held for one model or session; given back when dropped.
#[derive(Debug)]
pub struct MemoryReservation {
    acct: Arc<Accounting>,
    kind: MemoryKind,
    bytes: u64,
}

impl MemoryReservation {
    pub(crate) fn new(
        acct: &Arc<Accounting>,
        kind: MemoryKind,
        what: &str,
        bytes: u64,
    ) -> Result<Self> {
        acct.take(what, bytes)?;
        acct.kind_bytes(kind).fetch_add(bytes, Ordering::SeqCst);
        acct.kind_count(kind).fetch_add(1, Ordering::SeqCst);
        Ok(MemoryReservation {
            acct: acct.clone(),
            kind,
            bytes,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// Corrects the reservation to what was actually allocated (never fails when shrinking).
    pub fn resize(&mut self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.bytes {
            self.acct.take(what, bytes - self.bytes)?;
            self.acct
                .kind_bytes(self.kind)
                .fetch_add(bytes - self.bytes, Ordering::SeqCst);
        } else {
            let less = self.bytes - bytes;
            self.acct.reserved.fetch_sub(less, Ordering::SeqCst);
            self.acct
                .kind_bytes(self.kind)
                .fetch_sub(less, Ordering::SeqCst);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.acct.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
        self.acct
            .kind_bytes(self.kind)
            .fetch_sub(self.bytes, Ordering::SeqCst);
        self.acct
            .kind_count(self.kind)
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// The host's physical memory (Linux: `MemTotal` of /proc/meminfo).
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The memory an adapter can hold: for a CPU adapter (lavapipe, WARP) the host's memory,
/// whatever heap size the driver advertises (lavapipe's is a fixed 2 GiB it does not
/// enforce); otherwise its largest device-local memory heap where the backend reports one
/// (Vulkan); None elsewhere.
pub fn device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    if adapter.get_info().device_type == wgpu::DeviceType::Cpu {
        if let Some(m) = host_memory() {
            return Some(m);
        }
    }
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android"))]
    if adapter.get_info().backend == wgpu::Backend::Vulkan {
        // SAFETY: a read-only query of the physical device's memory properties through the
        // instance wgpu created it with; nothing is created, destroyed or retained.
        let heaps = unsafe {
            let hal = adapter.as_hal::<wgpu::hal::api::Vulkan>()?;
            let instance = hal.shared_instance().raw_instance();
            let props = instance.get_physical_device_memory_properties(hal.raw_physical_device());
            props
                .memory_heaps_as_slice()
                .iter()
                // VK_MEMORY_HEAP_DEVICE_LOCAL_BIT
                .filter(|h| h.flags.as_raw() & 1 != 0)
                .map(|h| h.size)
                .collect::<Vec<u64>>()
        };
        return heaps.into_iter().max();
    }
    let _ = adapter;
    None
}
