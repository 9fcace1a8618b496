//! The workspace's one reader of cgroup hierarchies and of mountinfo: which v1 and v2 hierarchies are
//! mounted where (from `/proc/self/mountinfo`), which controllers each carries, and
//! this process's group in each (from `/proc/self/cgroup`); plus the parsers of the
//! files every user reads the same way (`cpu.max`). The sandbox makes task groups from
//! it, the agent's owner meter and its grant read the host's groups with it, the
//! testbed builds its hosts' groups on it. Pure parsing takes the files' text; the
//! readers here are the only place that opens the two `/proc` files.

use std::fs;
use std::path::{Path, PathBuf};

/// Controllers a v1 mount may carry; anything else in its options is a flag.
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// A mounted cgroup hierarchy and this process's group in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// cgroup v2 (the unified hierarchy) rather than a v1 one.
    pub v2: bool,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The cgroup path of the mount's root (`/` unless mounted from a subgroup).
    pub root: PathBuf,
    /// Its controllers: a v1 mount's from its options, a v2 mount's from its
    /// `cgroup.controllers` (empty for the controller-less "unified" mount of a
    /// hybrid machine, which still freezes).
    pub controllers: Vec<String>,
    /// This process's group, as a cgroup path (`/system.slice/herd.service`).
    pub own: PathBuf,
}

impl Hierarchy {
    /// Whether it carries controller `c`.
    pub fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }

    /// The directory of cgroup path `cg` (as in `/proc/PID/cgroup`) in this hierarchy.
    pub fn dir(&self, cg: &Path) -> PathBuf {
        let rel = cg.strip_prefix(&self.root).unwrap_or(cg);
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        if rel.as_os_str().is_empty() {
            self.mount.clone()
        } else {
            self.mount.join(rel)
        }
    }

    /// This process's group relative to the mount (empty for the mount's root).
    pub fn own_rel(&self) -> PathBuf {
        self.dir(&self.own)
            .strip_prefix(&self.mount)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The directory of this process's group.
    pub fn own_dir(&self) -> PathBuf {
        self.dir(&self.own)
    }

    /// The cgroup path of directory `dir` of this hierarchy.
    pub fn cgroup_of(&self, dir: &Path) -> Option<PathBuf> {
        let rel = dir.strip_prefix(&self.mount).ok()?;
        Some(if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        })
    }

    /// `dir` and its ancestors down to the mount, innermost first.
    pub fn up_from(&self, dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![dir.to_path_buf()];
        let mut d = dir;
        while d != self.mount {
            match d.parent() {
                Some(p) if p.starts_with(&self.mount) => {
                    out.push(p.to_path_buf());
                    d = p;
                }
                _ => break,
            }
        }
        out
    }
}

/// Undoes the octal escapes (`\040` for a space) of a `/proc/PID/mountinfo` field.
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape = (b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)))
        .then(|| {
            let d = |c: u8| u32::from(c - b'0');
            d(b[i + 1]) * 64 + d(b[i + 2]) * 8 + d(b[i + 3])
        });
        // `\400` to `\777` are not bytes (found by the `sandbox_spec` fuzz target: the
        // sum overflowed): taken as written, like any other text.
        if let Some(byte) = escape.and_then(|v| u8::try_from(v).ok()) {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points in the text of a `/proc/PID/mountinfo`, unescaped, in its order.
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape(f)))
        .collect()
}

/// The cgroup path of hierarchy `h` in the text of a `/proc/PID/cgroup`.
pub fn own_path(proc_cgroup: &str, h: &Hierarchy) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (id, ctl, cg) = (p.next()?, p.next()?, p.next()?);
        let matches = if h.v2 {
            id == "0" && ctl.is_empty()
        } else {
            ctl.split(',').any(|c| h.has(c))
        };
        matches.then(|| PathBuf::from(cg))
    })
}

/// The hierarchies in the text of mountinfo and `/proc/PID/cgroup`; `read` reads the
/// `cgroup.controllers` of v2 mounts. Bind mounts of one hierarchy (one device) count
/// once, the first; a v1 mount without controllers (`name=systemd`) not at all.
pub fn parse(
    mountinfo: &str,
    proc_cgroup: &str,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    let mut devs: Vec<String> = Vec::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if sep < 5 || f.len() < sep + 4 {
            continue;
        }
        let v2 = match f[sep + 1] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        if devs.iter().any(|d| d == f[2]) {
            continue;
        }
        let mount = PathBuf::from(unescape(f[4]));
        let controllers: Vec<String> = if v2 {
            read(&mount.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        } else {
            f[sep + 3]
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o))
                .map(str::to_owned)
                .collect()
        };
        if !v2 && controllers.is_empty() {
            continue;
        }
        devs.push(f[2].to_owned());
        let mut h = Hierarchy {
            v2,
            mount,
            root: PathBuf::from(unescape(f[3])),
            controllers,
            own: PathBuf::from("/"),
        };
        if let Some(own) = own_path(proc_cgroup, &h) {
            h.own = own;
        }
        out.push(h);
    }
    out
}

/// This machine's hierarchies, as this process sees them.
pub fn detect() -> Result<Vec<Hierarchy>, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cgroup: read /proc/self/mountinfo: {e}"))?;
    let proc_cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cgroup: read /proc/self/cgroup: {e}"))?;
    Ok(parse(&mountinfo, &proc_cgroup, &|p| {
        fs::read_to_string(p).ok()
    }))
}

/// A v2 `cpu.max` as cores: `"50000 100000"` is 0.5; `"max ..."` (no quota) is `None`;
/// a missing period is the kernel's default, 100 ms.
pub fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut it = s.split_whitespace();
    let q: f64 = it.next()?.parse().ok()?;
    let p: f64 = it.next().unwrap_or("100000").parse().ok()?;
    (q > 0.0 && p > 0.0).then_some(q / p)
}

/// v1 reports "no memory limit" as a huge number.
pub const V1_NO_LIMIT: u64 = 1 << 60;

fn read_num(p: &Path) -> Option<f64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The CPU quota of the group `dir` of `h`, in cores, if it has one (not its
/// ancestors').
pub fn cpu_quota_of(h: &Hierarchy, dir: &Path) -> Option<f64> {
    if h.v2 {
        parse_cpu_max(&fs::read_to_string(dir.join("cpu.max")).ok()?)
    } else {
        let q = read_num(&dir.join("cpu.cfs_quota_us"))?;
        let p = read_num(&dir.join("cpu.cfs_period_us"))?;
        (q > 0.0 && p > 0.0).then_some(q / p)
    }
}

/// The memory limit of the group `dir` of `h`, in bytes, if it has one.
pub fn memory_limit_of(h: &Hierarchy, dir: &Path) -> Option<u64> {
    let file = if h.v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let v = read_num(&dir.join(file))?;
    (v > 0.0 && v < V1_NO_LIMIT as f64).then_some(v as u64)
}

/// The CPU quota this process runs under, in cores: the tightest of its group's and
/// its ancestors' in every hierarchy with the `cpu` controller.
pub fn own_cpu_quota(all: &[Hierarchy]) -> Option<f64> {
    all.iter()
        .filter(|h| h.has("cpu"))
        .flat_map(|h| h.up_from(&h.own_dir()).into_iter().map(move |d| (h, d)))
        .filter_map(|(h, d)| cpu_quota_of(h, &d))
        .min_by(f64::total_cmp)
}

/// The memory limit this process runs under: the tightest of its group's and its
/// ancestors' in every hierarchy with the `memory` controller.
pub fn own_memory_limit(all: &[Hierarchy]) -> Option<u64> {
    all.iter()
        .filter(|h| h.has("memory"))
        .flat_map(|h| h.up_from(&h.own_dir()).into_iter().map(move |d| (h, d)))
        .filter_map(|(h, d)| memory_limit_of(h, &d))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 20 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 25 0:30 /agent /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 25 0:29 / /mnt/again rw - cgroup cgroup rw,cpu,cpuacct
";
    const HYBRID_CG: &str = "\
5:memory:/agent/x
3:cpu,cpuacct:/
1:name=systemd:/user.slice
0::/user.slice
";

    #[test]
    fn hybrid_hierarchies_their_controllers_and_our_groups() {
        let h = parse(HYBRID, HYBRID_CG, &|_| Some(String::new()));
        assert_eq!(h.len(), 3, "{h:#?}");
        assert!(h[0].v2 && h[0].controllers.is_empty());
        assert_eq!(h[0].own, PathBuf::from("/user.slice"));
        assert_eq!(h[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(h[1].own_rel(), PathBuf::from(""));
        assert_eq!(h[2].root, PathBuf::from("/agent"));
        assert_eq!(h[2].own_rel(), PathBuf::from("x"));
        assert_eq!(h[2].own_dir(), PathBuf::from("/sys/fs/cgroup/memory/x"));
        assert_eq!(
            h[2].cgroup_of(Path::new("/sys/fs/cgroup/memory/x/y")),
            Some(PathBuf::from("/agent/x/y"))
        );
        assert_eq!(
            h[2].up_from(&h[2].own_dir()),
            [
                PathBuf::from("/sys/fs/cgroup/memory/x"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
    }

    #[test]
    fn cpu_max_parses_one_way() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("25000"), Some(0.25));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("0 100000"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn escapes_are_undone_and_non_bytes_kept() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"\447"), r"\447");
    }
}
