//! `wick info`: every adapter with backend, type, driver, the features wick uses, key limits,
//! subgroup sizes and device memory (wick's budget for models and sessions).

use clap::Args;
use serde_json::json;

use wick::gpu;
use wick::Result;

#[derive(Args)]
pub struct InfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let adapters = gpu::enumerate_adapters(wgpu::Backends::all());
    let mut list = Vec::new();
    for a in &adapters {
        let i = a.get_info();
        let l = a.limits();
        list.push(json!({
            "name": i.name,
            "backend": format!("{:?}", i.backend).to_lowercase(),
            "device_type": format!("{:?}", i.device_type),
            "vendor": format!("0x{:04x}", i.vendor),
            "device": format!("0x{:04x}", i.device),
            "driver": i.driver,
            "driver_info": i.driver_info,
            "features": gpu::feature_names(a.features()),
            "subgroup_min_size": i.subgroup_min_size,
            "subgroup_max_size": i.subgroup_max_size,
            // wick's memory budget on this adapter (None: the backend does not report it).
            "device_memory": gpu::device_memory(a),
            "limits": {
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                "max_buffer_size": l.max_buffer_size,
                "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
                "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
                "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
            },
        }));
    }
    if args.json {
        println!("{}", json!({ "adapters": list }));
        return Ok(());
    }
    if list.is_empty() {
        println!(
            "no GPU adapters found (on Linux without a GPU: apt-get install mesa-vulkan-drivers)"
        );
    }
    for (n, a) in list.iter().enumerate() {
        println!("adapter {n}: {}", a["name"].as_str().unwrap_or("?"));
        for key in [
            "backend",
            "device_type",
            "vendor",
            "device",
            "driver",
            "driver_info",
        ] {
            println!("  {key:<22} {}", a[key].as_str().unwrap_or(""));
        }
        let feats: Vec<&str> = a["features"]
            .as_array()
            .map(|v| v.iter().filter_map(|f| f.as_str()).collect())
            .unwrap_or_default();
        println!("  {:<22} {}", "features", feats.join(" "));
        println!(
            "  {:<22} {}..{}",
            "subgroup size", a["subgroup_min_size"], a["subgroup_max_size"]
        );
        match a["device_memory"].as_u64() {
            Some(m) => println!(
                "  {:<22} {m} bytes ({:.1} GiB): wick's budget for weights and sessions",
                "device memory",
                m as f64 / (1u64 << 30) as f64
            ),
            None => println!(
                "  {:<22} not reported by this backend (only per-buffer limits are checked before allocating)",
                "device memory"
            ),
        }
        if let Some(l) = a["limits"].as_object() {
            for (k, v) in l {
                println!("  {k:<40} {v}");
            }
        }
    }
    Ok(())
}
