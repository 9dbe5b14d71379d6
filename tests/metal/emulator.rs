//! Host emulation (check 4 of the crate docs): a .metal file's kernels built for the CPU
//! against tests/metal_shim/metal_exec.h and run one host thread per Metal thread; the helpers
//! the kernel emulation tests share; and the emulation's own tests.

use std::process::Command;

use rand::SeedableRng;

use crate::common;
use crate::lexer::{tok_text, Tok};
use crate::parser::parse_msl;
use crate::sources::{clang_or_skip, metal_files, shim_dir};

/// The C++ expression (a uint3) of a built-in input, from the driver's `grid`, `wg` (sizes),
/// `g` (threadgroup position), `l` (position in it) and `t` (index in it).
pub(crate) fn builtin_expr(attr: &str) -> Option<&'static str> {
    Some(match attr {
        "thread_position_in_grid" => "g * wg + l",
        "thread_position_in_threadgroup" => "l",
        "threadgroup_position_in_grid" => "g",
        "threadgroups_per_grid" => "grid",
        "threads_per_threadgroup" => "wg",
        "threads_per_grid" => "grid * wg",
        "thread_index_in_threadgroup" => "uint3(t, 0u, 0u)",
        "thread_index_in_simdgroup" => "uint3(t % 32u, 0u, 0u)",
        "simdgroup_index_in_threadgroup" => "uint3(t / 32u, 0u, 0u)",
        "threads_per_simdgroup" | "thread_execution_width" => "uint3(32u, 0u, 0u)",
        "simdgroups_per_threadgroup" => "uint3((wg.x * wg.y * wg.z + 31u) / 32u, 0u, 0u)",
        _ => return None,
    })
}

/// A C++ program that runs the kernels of `src` on the host: `run ENTRY GX GY GZ WX WY WZ
/// FILE...` reads buffer i from FILE i, runs the grid, and writes every buffer back.
pub(crate) fn exec_program(src: &str) -> Result<(String, String), String> {
    let file = parse_msl(src);
    if !file.problems.is_empty() {
        return Err(file.problems.join("\n"));
    }
    // Kernel-scope threadgroup arrays become statics shared by the threadgroup's threads.
    let mut kernel_src = String::new();
    for (i, ch) in src.chars().enumerate() {
        if file.threadgroup_vars.contains(&i) {
            kernel_src.push_str("static /*threadgroup*/ ");
        }
        kernel_src.push(ch);
    }
    let mut driver = String::from(
        "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <pthread.h>\n\
         #include <metal_stdlib>\n#include \"metal_exec.h\"\n#include \"kernel.metal\"\n\
         static pthread_mutex_t barrier_mutex = PTHREAD_MUTEX_INITIALIZER;\n\
         static pthread_cond_t barrier_cond = PTHREAD_COND_INITIALIZER;\n\
         static unsigned barrier_waiting, barrier_threads, barrier_round;\n\
         void wick_exec::barrier() {\n\
             pthread_mutex_lock(&barrier_mutex);\n\
             unsigned round = barrier_round;\n\
             if (++barrier_waiting == barrier_threads) {\n\
                 barrier_waiting = 0;\n\
                 barrier_round++;\n\
                 pthread_cond_broadcast(&barrier_cond);\n\
             } else {\n\
                 while (round == barrier_round) pthread_cond_wait(&barrier_cond, &barrier_mutex);\n\
             }\n\
             pthread_mutex_unlock(&barrier_mutex);\n\
         }\n\
         static unsigned simd_waiting[32], simd_round[32];\n\
         void wick_exec::simd_barrier() {\n\
             pthread_mutex_lock(&barrier_mutex);\n\
             unsigned g = wick_exec::simdgroup, round = simd_round[g];\n\
             if (++simd_waiting[g] == wick_exec::simd_lanes) {\n\
                 simd_waiting[g] = 0;\n\
                 simd_round[g]++;\n\
                 pthread_cond_broadcast(&barrier_cond);\n\
             } else {\n\
                 while (round == simd_round[g]) pthread_cond_wait(&barrier_cond, &barrier_mutex);\n\
             }\n\
             pthread_mutex_unlock(&barrier_mutex);\n\
         }\n\
         typedef void (*entry_fn)(void**, uint3, uint3, uint3, uint);\n",
    );
    let mut table = String::new();
    for k in &file.kernels {
        let mut args = Vec::new();
        for p in &k.params {
            let [a] = p.attrs.as_slice() else {
                return Err(format!("kernel {}: parameter {}", k.name, p.name()));
            };
            let ty = &p.decl[..p.decl.len() - 1];
            if a.name == "buffer" {
                let slot = tok_text(&a.args);
                if ty.last() == Some(&Tok::Punct('&')) {
                    let ptr = tok_text(&ty[..ty.len() - 1]);
                    args.push(format!("*({ptr} *)b[{slot}]"));
                } else {
                    args.push(format!("({})b[{slot}]", tok_text(ty)));
                }
            } else {
                let e = builtin_expr(&a.name).ok_or_else(|| {
                    format!("kernel {}: the emulation lacks [[{}]]", k.name, a.name)
                })?;
                args.push(format!("wick_exec::builtin<{}>({e})", tok_text(ty)));
            }
        }
        driver.push_str(&format!(
            "static void call_{0}(void** b, uint3 grid, uint3 wg, uint3 g, uint t) {{\n\
             (void)grid;\n uint3 l = uint3(t % wg.x, (t / wg.x) % wg.y, t / (wg.x * wg.y));\n\
             (void)l;\n {0}({1});\n}}\n",
            k.name,
            args.join(", ")
        ));
        table.push_str(&format!(
            "    if (!strcmp(argv[1], \"{0}\")) f = call_{0};\n",
            k.name
        ));
    }
    driver.push_str(&format!(
        r#"struct Job {{ entry_fn f; void** b; uint3 grid, wg, g; uint t; }};
static void* run_thread(void* p) {{
    Job* j = (Job*)p;
    uint n = j->wg.x * j->wg.y * j->wg.z;
    wick_exec::lane = j->t % 32u;
    wick_exec::simdgroup = j->t / 32u;
    wick_exec::simd_lanes = n - 32u * (j->t / 32u) < 32u ? n - 32u * (j->t / 32u) : 32u;
    j->f(j->b, j->grid, j->wg, j->g, j->t);
    return 0;
}}
int main(int argc, char** argv) {{
    if (argc < 8) return 2;
    entry_fn f = 0;
{table}    if (!f) {{ fprintf(stderr, "no kernel %s\n", argv[1]); return 2; }}
    uint3 grid = uint3(uint(atoi(argv[2])), uint(atoi(argv[3])), uint(atoi(argv[4])));
    uint3 wg = uint3(uint(atoi(argv[5])), uint(atoi(argv[6])), uint(atoi(argv[7])));
    int nb = argc - 8;
    void* b[64];
    long size[64];
    for (int i = 0; i < nb; i++) {{
        FILE* fp = fopen(argv[8 + i], "rb");
        if (!fp) return 3;
        fseek(fp, 0, SEEK_END);
        size[i] = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        b[i] = aligned_alloc(64, (size_t)(size[i] / 64 + 1) * 64);
        if (fread(b[i], 1, (size_t)size[i], fp) != (size_t)size[i]) return 3;
        fclose(fp);
    }}
    uint n = wg.x * wg.y * wg.z;
    pthread_t* th = (pthread_t*)malloc(n * sizeof(pthread_t));
    Job* jobs = (Job*)malloc(n * sizeof(Job));
    for (uint z = 0; z < grid.z; z++)
        for (uint y = 0; y < grid.y; y++)
            for (uint x = 0; x < grid.x; x++) {{
                barrier_threads = n;
                barrier_waiting = 0;
                for (uint t = 0; t < n; t++) {{
                    jobs[t].f = f; jobs[t].b = b; jobs[t].grid = grid; jobs[t].wg = wg;
                    jobs[t].g = uint3(x, y, z); jobs[t].t = t;
                    if (pthread_create(&th[t], 0, run_thread, &jobs[t])) return 4;
                }}
                for (uint t = 0; t < n; t++) pthread_join(th[t], 0);
            }}
    for (int i = 0; i < nb; i++) {{
        FILE* fp = fopen(argv[8 + i], "wb");
        if (!fp || fwrite(b[i], 1, (size_t)size[i], fp) != (size_t)size[i]) return 3;
        fclose(fp);
    }}
    return 0;
}}
"#
    ));
    Ok((kernel_src, driver))
}

/// The host build of a .metal file's kernels.
pub(crate) struct Emulator {
    pub(crate) dir: tempfile::TempDir,
}

impl Emulator {
    pub(crate) fn build(clang: &str, src: &str) -> Emulator {
        let (kernel_src, driver) = exec_program(src).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kernel.metal"), kernel_src).unwrap();
        std::fs::write(dir.path().join("driver.cpp"), driver).unwrap();
        let out = Command::new(clang)
            // MSL's char is signed; so must the host's be (it is not on aarch64 Linux).
            .args(["-std=c++17", "-O2", "-fsigned-char", "-DWICK_METAL_EXEC"])
            .arg("-Wno-unknown-attributes")
            .arg("-I")
            .arg(shim_dir())
            .arg("-I")
            .arg(dir.path())
            .arg(dir.path().join("driver.cpp"))
            .arg("-o")
            .arg(dir.path().join("run"))
            .args(["-lpthread", "-lm"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "host build of the kernels failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Emulator { dir }
    }

    /// Runs `entry` over `grid` threadgroups of `wg` threads on `buffers` (slot order), in
    /// place.
    pub(crate) fn run(&self, entry: &str, grid: [u32; 3], wg: [u32; 3], buffers: &mut [Vec<u8>]) {
        let mut cmd = Command::new(self.dir.path().join("run"));
        cmd.arg(entry);
        cmd.args(grid.iter().chain(&wg).map(|v| v.to_string()));
        for (i, b) in buffers.iter().enumerate() {
            let p = self.dir.path().join(format!("buf{i}.bin"));
            std::fs::write(&p, b).unwrap();
            cmd.arg(p);
        }
        // A barrier that not every thread of a threadgroup reaches (divergent control flow
        // around threadgroup_barrier, undefined on the GPU) hangs the emulation: time it out.
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > std::time::Duration::from_secs(300) {
                child.kill().ok();
                panic!("{entry}: the emulation hangs (a barrier not reached by every thread?)");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).ok();
        assert!(status.success(), "{entry}: {status:?}\n{err}");
        for (i, b) in buffers.iter_mut().enumerate() {
            *b = std::fs::read(self.dir.path().join(format!("buf{i}.bin"))).unwrap();
        }
    }
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The emulation tests' random source: seeded from the clock, or from `WICK_TEST_SEED` to
/// replay a run ([`common::seed`]).
pub(crate) fn emulation_rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(common::seed())
}

/// `len` values uniform in [-scale, scale].
pub(crate) fn uniform(rng: &mut impl rand::Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..=scale)).collect()
}

pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `len` f32 of `Gpu::poison`'s pattern (a NaN): an output never written reads back as it.
pub(crate) fn poison_bytes(len: usize) -> Vec<u8> {
    u32_bytes(&vec![wick::gpu::POISON; len])
}

/// Asserts `|got - want| <= bound` elementwise; a non-finite value on either side (the poison
/// never overwritten) fails unless both sides hold the same bits. Returns max |got - want|.
pub(crate) fn assert_within(what: &str, got: &[f32], want: &[f32], bound: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut max_d = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() || !w.is_finite() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{what}: element {i}: got {g} want {w} (never written?)"
            );
            continue;
        }
        let d = (g - w).abs();
        assert!(
            d <= bound,
            "{what}: element {i}: got {g} want {w} (|d| {d} > {bound})"
        );
        max_d = max_d.max(d);
    }
    max_d
}

/// Every kernel of `src` is among the entries a test ran, so none goes unchecked.
pub(crate) fn assert_runs_every_kernel(src: &str, ran: &std::collections::BTreeSet<String>) {
    let kernels: std::collections::BTreeSet<String> =
        parse_msl(src).kernels.into_iter().map(|k| k.name).collect();
    assert_eq!(&kernels, ran, "the kernels of the file vs the entries run");
}

/// Every MSL file runs in the host emulation: a new one needs its emulation test here.
#[test]
pub(crate) fn every_metal_file_has_a_host_emulation_test() {
    let emulated = [
        "attention_decode.metal",
        "attention_prefill.metal",
        "gemm.metal",
        "gemv.metal",
    ];
    for f in metal_files() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            emulated.contains(&name.as_str()),
            "metal_overrides/{name} has no host emulation test in tests/metal/"
        );
    }
}

/// The emulation's SIMD-group functions and threadgroup memory, on a kernel whose results are
/// exact (small integers), against the values the MSL specification gives them.
#[test]
pub(crate) fn host_emulation_runs_simd_group_functions() {
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let src = r#"
#include <metal_stdlib>
using namespace metal;
kernel void collectives(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                        uint3 tg [[threadgroup_position_in_grid]],
                        uint tid [[thread_index_in_threadgroup]],
                        ushort lane [[thread_index_in_simdgroup]],
                        ushort sg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float partial[2];
    uint g = tg.x * 64 + tid;
    float v = x[g];
    device float* o = out + g * 8;
    float s = simd_sum(v);
    o[0] = s;
    o[1] = simd_max(v);
    o[2] = simd_shuffle_xor(v, 5);
    o[3] = simd_broadcast(v, 7);
    o[4] = simd_prefix_exclusive_sum(v);
    o[5] = simd_shuffle_down(v, 3);
    o[6] = float(simd_sum(uint2(lane, 1)).y);
    if (lane == 0) {
        partial[sg] = s;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    o[7] = partial[0] + partial[1];
}
"#;
    let emu = Emulator::build(&clang, src);
    let x: Vec<f32> = (0..128).map(|i| ((i * 37) % 19) as f32 - 9.0).collect();
    let mut bufs = vec![f32_bytes(&x), f32_bytes(&[f32::NAN; 128 * 8])];
    emu.run("collectives", [2, 1, 1], [64, 1, 1], &mut bufs);
    let got: Vec<f32> = bufs[1]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for g in 0..128 {
        let (base, lane) = (g / 32 * 32, g % 32);
        let sg = &x[base..base + 32];
        let group = &x[g / 64 * 64..g / 64 * 64 + 64];
        let want = [
            sg.iter().sum::<f32>(),
            sg.iter().cloned().fold(f32::MIN, f32::max),
            sg[lane ^ 5],
            sg[7],
            sg[..lane].iter().sum(),
            if lane + 3 < 32 {
                sg[lane + 3]
            } else {
                sg[lane]
            },
            32.0,
            group.iter().sum(),
        ];
        assert_eq!(got[g * 8..g * 8 + 8], want, "thread {g}");
    }
}

/// The emulation's swizzles read and write the components they name (`.zw` of a uint4 is its
/// z and w, not an alias of x and y), also through `as_type` and conversions.
#[test]
pub(crate) fn host_emulation_reads_swizzles() {
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let src = r#"
#include <metal_stdlib>
using namespace metal;
kernel void swizzles(device const uint4* x [[buffer(0)]], device float* out [[buffer(1)]],
                     uint3 gid [[thread_position_in_grid]]) {
    uint4 v = x[gid.x];
    device float* o = out + gid.x * 12;
    uint2 zw = v.zw;
    o[0] = float(zw.x);
    o[1] = float(zw.y);
    uint3 wzy = v.wzy;
    o[2] = float(wzy.x);
    o[3] = float(wzy.z);
    float2 yx = float2(v.yx);
    o[4] = yx.x;
    o[5] = yx.y;
    half2 h = as_type<half2>(v.w);
    o[6] = float(h.y);
    uint2 g = gid.yz;
    o[7] = float(g.x + g.y);
    uint4 t = uint4(0u);
    t.zw = v.xy;
    o[8] = float(t.x);
    o[9] = float(t.z);
    o[10] = float(t.w);
    float4 f = float4(as_type<half4>(v.zw));
    o[11] = f.z;
}
"#;
    let emu = Emulator::build(&clang, src);
    // Small integers (exact in f32) and, in w, two halves: 1.5 low, -2.0 high.
    let w = 0x3E00u32 | 0xC000u32 << 16;
    let words: Vec<u32> = (0..4u32)
        .flat_map(|i| [10 + i, 20 + i, 30 + i, if i == 0 { w } else { 40 + i }])
        .collect();
    let mut bufs = vec![u32_bytes(&words), f32_bytes(&[f32::NAN; 4 * 12])];
    emu.run("swizzles", [1, 1, 1], [4, 1, 1], &mut bufs);
    let got = f32s(&bufs[1]);
    for i in 0..4usize {
        let v = &words[4 * i..4 * i + 4];
        let f = |u: u32| u as f32;
        let mut want = [
            f(v[2]),
            f(v[3]),
            f(v[3]),
            f(v[1]),
            f(v[1]),
            f(v[0]),
            half::f16::from_bits((v[3] >> 16) as u16).to_f32(),
            0.0,
            0.0,
            f(v[0]),
            f(v[1]),
            half::f16::from_bits(v[3] as u16).to_f32(),
        ];
        if i == 0 {
            assert_eq!((want[6], want[11]), (-2.0, 1.5));
        }
        want[7] = 0.0;
        assert_eq!(got[12 * i..12 * i + 12], want, "thread {i}");
    }
}
