//! What this host offers and how busy it is: granted CPUs and memory, a CPU speed
//! score, load average and free memory.
//!
//! Defaults, documented in the README:
//! * **CPUs granted**: every core the agent may use, that is the smaller of the online
//!   cores and the CPU quota of the cgroup the agent runs in (cgroup v2 `cpu.max` or
//!   v1 `cpu.cfs_quota_us`), as a fraction (`0.5` for half a core).
//! * **Memory granted**: 80% of the memory available when the agent starts
//!   (`MemAvailable`, capped by the agent's cgroup memory limit).
//! * **Speed**: a 100 ms single-thread hashing benchmark at start, measured in thread
//!   CPU time (so a CPU quota does not distort it) and scaled so that a 2020s x86-64
//!   server core scores about 1.0 (release build; a debug build scores about half).

use std::time::{Duration, Instant};

use procfs::Current;

/// Work units per CPU-second that score 1.0.
const REFERENCE_RATE: f64 = 360_000.0;

/// Online cores of the machine.
pub fn online_cpus() -> f32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f32)
        .unwrap_or(1.0)
}

/// `MemAvailable` in bytes.
pub fn mem_available() -> u64 {
    procfs::Meminfo::current()
        .ok()
        .and_then(|m| m.mem_available)
        .unwrap_or(0)
}

/// One-minute load average.
pub fn load_average() -> f32 {
    procfs::LoadAverage::current().map(|l| l.one).unwrap_or(0.0)
}

fn thread_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Measures the CPU speed score (see the module docs). Takes about `budget` of CPU
/// time, or at most 20 times that in wall time on a starved host.
pub fn measure_speed(budget: Duration) -> f32 {
    let buf = vec![0x5au8; 16 * 1024];
    let start_cpu = thread_cpu_time();
    let start = Instant::now();
    let mut units = 0u64;
    let mut acc = [0u8; 32];
    loop {
        for _ in 0..8 {
            let h = blake3::hash(&buf);
            acc[0] ^= h.as_bytes()[0];
            units += 1;
        }
        let cpu = thread_cpu_time() - start_cpu;
        if cpu >= budget || start.elapsed() >= budget * 20 {
            std::hint::black_box(acc);
            let secs = cpu.as_secs_f64().max(1e-6);
            let score = units as f64 / secs / REFERENCE_RATE;
            return ((score * 100.0).round() / 100.0) as f32;
        }
    }
}

/// What this host grants to herd.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Cores.
    pub cpus: f32,
    /// Bytes of memory.
    pub memory: u64,
    /// Bytes a task may write to the helper's disk (its upper layer), see
    /// [`disk_grant`].
    pub disk: u64,
}

impl Grant {
    /// The grant from explicit settings or the documented defaults.
    pub fn resolve(cpus: Option<f32>, memory: Option<u64>) -> Grant {
        // This process's cgroups, read once for both limits.
        let groups = herd_sandbox::cgroups::detect().unwrap_or_default();
        let max_cpus = herd_sandbox::cgroups::own_cpu_quota(&groups)
            .map(|q| q as f32)
            .map(|q| q.min(online_cpus()))
            .unwrap_or_else(online_cpus);
        let cpus = cpus.map(|c| c.min(max_cpus)).unwrap_or(max_cpus);
        let avail = mem_available();
        let avail =
            herd_sandbox::cgroups::own_memory_limit(&groups).map_or(avail, |l| l.min(avail));
        let memory = memory.unwrap_or(avail / 10 * 8);
        Grant {
            cpus,
            memory,
            disk: u64::MAX,
        }
    }
}

/// The disk a task may fill with its writes: `explicit` (`--disk`), or half of what is
/// free at start on the file system holding the tasks' layers (`tasks`).
pub fn disk_grant(explicit: Option<u64>, tasks: &std::path::Path) -> u64 {
    explicit.unwrap_or_else(|| {
        rustix::fs::statvfs(tasks)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize) / 2)
            .unwrap_or(u64::MAX)
    })
}

/// Bytes of disk a directory tree takes (allocated blocks, links not followed, each
/// name counted).
pub fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            total = total.saturating_add(md.blocks().saturating_mul(512));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// A size for people: `512B`, `1.5K`, `3.2G`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// Parses a memory size such as `512M`, `4G`, `1.5GiB` or a plain byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    (num >= 0.0).then_some((num * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("3 parsecs"), None);
        assert_eq!(parse_size("-1G"), None);
    }

    #[test]
    fn speed_is_positive_and_grant_sane() {
        assert!(measure_speed(Duration::from_millis(20)) > 0.0);
        let g = Grant::resolve(None, None);
        assert!(g.cpus > 0.0 && g.cpus <= online_cpus());
        assert!(g.memory > 0);
        assert_eq!(Grant::resolve(Some(0.5), Some(1 << 30)).memory, 1 << 30);
    }
}
