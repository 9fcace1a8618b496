//! Hand-written cgroup v1 / v2 support: detection, per-host groups, limits, killing.
//!
//! The testbed never assumes one layout. It reads `/proc/self/mountinfo` and
//! `/proc/self/cgroup`, finds which hierarchy carries each controller it uses (`cpu`
//! always; `memory`, `pids`, `freezer` when present) and places every host in one group
//! per hierarchy:
//!
//! * **v1** hierarchies get the testbed's group nested under the calling process's own
//!   group, so hosts stay inside whatever limits the caller already has.
//! * **v2** hierarchies get it under the mount's root (the only group that may both hold
//!   processes and hand controllers to its children); the controllers the testbed needs
//!   are enabled in `cgroup.subtree_control` on the way down. A v2 mount without
//!   controllers (the "unified" mount of a hybrid setup) is still joined: its
//!   `cgroup.kill` makes killing a host race-free.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;

/// Which cgroup interface a hierarchy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy per-controller hierarchies (`cpu.cfs_quota_us`, `memory.limit_in_bytes`).
    V1,
    /// The unified hierarchy (`cpu.max`, `memory.max`, `cgroup.kill`).
    V2,
}

/// The v2 controllers the testbed enables for its hosts when a v2 hierarchy carries them.
const V2_WANTED: &[&str] = &["cpu", "memory", "pids"];

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    pub version: CgroupVersion,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// v1: the controllers bound to it; v2: those listed in the root's `cgroup.controllers`.
    pub controllers: Vec<String>,
    /// The directory under which testbed groups are created.
    pub base: PathBuf,
    /// v2 only: the controllers to enable for the testbed's hosts.
    pub enable: Vec<String>,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The hierarchies a testbed uses, and which one carries which controller.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Every hierarchy joined by host processes (deduplicated).
    pub used: Vec<Hierarchy>,
    /// Every cgroup mount on the machine (for finding stale groups).
    pub all_mounts: Vec<PathBuf>,
    cpu: usize,
    memory: Option<usize>,
}

/// Works out the layout from the text of mountinfo and /proc/self/cgroup; `read` reads a
/// file (the root's `cgroup.controllers` of v2 mounts).
pub(crate) fn detect_from(
    mountinfo: &str,
    proc_cgroup: &str,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Result<Layout, Error> {
    let mut hierarchies = Vec::new();
    let mut all_mounts = Vec::new();
    for h in herd_sandbox::cgroups::parse(mountinfo, proc_cgroup, read) {
        all_mounts.push(h.mount.clone());
        let version = if h.v2 {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        // v1: under this process's own group, if it can be read there.
        let own = h.own_dir();
        let base = if !h.v2 && read(&own.join("cgroup.procs")).is_some() {
            own
        } else {
            h.mount.clone()
        };
        hierarchies.push(Hierarchy {
            version,
            mount: h.mount,
            controllers: h.controllers,
            base,
            enable: Vec::new(),
        });
    }

    let find = |c: &str| hierarchies.iter().position(|h| h.has(c));
    let Some(cpu_at) = find("cpu") else {
        return Err(Error::Cgroup(format!(
            "no mounted cgroup hierarchy carries the cpu controller (cgroup mounts found: {}); \
             mount cgroup2 at /sys/fs/cgroup with cpu enabled, or the v1 cpu controller",
            if all_mounts.is_empty() {
                "none".to_owned()
            } else {
                all_mounts
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    };
    let mut picked: Vec<usize> = vec![cpu_at];
    let memory_at = find("memory");
    for at in [memory_at, find("pids")].into_iter().flatten() {
        picked.push(at);
    }
    if let Some(at) = hierarchies
        .iter()
        .position(|h| h.version == CgroupVersion::V1 && h.has("freezer"))
    {
        picked.push(at);
    }
    if let Some(at) = hierarchies
        .iter()
        .position(|h| h.version == CgroupVersion::V2)
    {
        picked.push(at);
    }
    let mut used_idx: Vec<usize> = Vec::new();
    for at in picked {
        if !used_idx.contains(&at) {
            used_idx.push(at);
        }
    }
    let mut used: Vec<Hierarchy> = used_idx.iter().map(|&i| hierarchies[i].clone()).collect();
    for h in &mut used {
        if h.version == CgroupVersion::V2 {
            h.enable = V2_WANTED
                .iter()
                .filter(|c| h.has(c))
                .map(|c| (*c).to_owned())
                .collect();
        }
    }
    let pos = |idx: Option<usize>| idx.and_then(|i| used_idx.iter().position(|&u| u == i));
    Ok(Layout {
        cpu: pos(Some(cpu_at)).unwrap_or(0),
        memory: pos(memory_at),
        used,
        all_mounts,
    })
}

/// Detects the layout of this machine.
pub(crate) fn detect() -> Result<Layout, Error> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let proc_cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| Error::io("read", "/proc/self/cgroup", e))?;
    detect_from(&mountinfo, &proc_cgroup, &|p| fs::read_to_string(p).ok())
}

/// A host's (or the testbed's) group in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgDir {
    pub version: CgroupVersion,
    pub path: PathBuf,
}

impl Layout {
    /// The groups named `name` under the testbed group `id`, one per used hierarchy
    /// (`name` empty: the testbed group itself).
    pub fn dirs(&self, id: &str, name: &str) -> Vec<CgDir> {
        self.used
            .iter()
            .map(|h| {
                let mut path = h.base.join(id);
                if !name.is_empty() {
                    path.push(name);
                }
                CgDir {
                    version: h.version,
                    path,
                }
            })
            .collect()
    }

    /// The group carrying the cpu controller among `dirs` (as returned by [`Layout::dirs`]).
    pub fn cpu_index(&self) -> usize {
        self.cpu
    }

    /// Creates the testbed's own groups and enables the v2 controllers hosts need.
    pub fn create_testbed(&self, id: &str) -> Result<(), Error> {
        for h in &self.used {
            if h.version == CgroupVersion::V2 && !h.enable.is_empty() {
                enable_controllers(&h.base, &h.enable)?;
            }
            let dir = h.base.join(id);
            mkdir(&dir)?;
            if h.version == CgroupVersion::V2 && !h.enable.is_empty() {
                enable_controllers(&dir, &h.enable)?;
            }
        }
        Ok(())
    }

    /// Creates a host's groups and writes its limits.
    pub fn create_host(
        &self,
        id: &str,
        name: &str,
        cpu_quota: Option<f64>,
        memory_limit: Option<u64>,
    ) -> Result<Vec<CgDir>, Error> {
        if memory_limit.is_some() && self.memory.is_none() {
            return Err(Error::Cgroup(
                "a memory limit was asked for, but no mounted cgroup hierarchy carries the memory controller"
                    .to_owned(),
            ));
        }
        let dirs = self.dirs(id, name);
        for dir in &dirs {
            mkdir(&dir.path)?;
        }
        if let Some(cpus) = cpu_quota {
            write_cpu_quota(&dirs[self.cpu], cpus)?;
        }
        if let (Some(bytes), Some(at)) = (memory_limit, self.memory) {
            write_memory_limit(&dirs[at], bytes)?;
        }
        Ok(dirs)
    }
}

/// The CFS period the testbed uses for quotas (100 ms, the kernel default).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// Writes a quota of `cpus` CPUs (v1 `cpu.cfs_quota_us`, v2 `cpu.max`).
pub(crate) fn write_cpu_quota(dir: &CgDir, cpus: f64) -> Result<(), Error> {
    let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000);
    match dir.version {
        CgroupVersion::V1 => {
            write(
                &dir.path.join("cpu.cfs_period_us"),
                &CPU_PERIOD_US.to_string(),
            )?;
            write(&dir.path.join("cpu.cfs_quota_us"), &quota.to_string())
        }
        CgroupVersion::V2 => write(
            &dir.path.join("cpu.max"),
            &format!("{quota} {CPU_PERIOD_US}"),
        ),
    }
}

/// Writes a memory limit, and forbids swapping past it where the kernel lets us.
pub(crate) fn write_memory_limit(dir: &CgDir, bytes: u64) -> Result<(), Error> {
    match dir.version {
        CgroupVersion::V1 => {
            write(&dir.path.join("memory.limit_in_bytes"), &bytes.to_string())?;
            let memsw = dir.path.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
            Ok(())
        }
        CgroupVersion::V2 => {
            write(&dir.path.join("memory.max"), &bytes.to_string())?;
            let swap = dir.path.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
            Ok(())
        }
    }
}

fn enable_controllers(dir: &Path, wanted: &[String]) -> Result<(), Error> {
    let file = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&file).unwrap_or_default();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|c| !current.split_whitespace().any(|have| have == c.as_str()))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&file, missing.join(" ")).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EBUSY) {
            " (the group holds processes itself; cgroup v2 only lets a group without processes \
             hand controllers to its children: move those processes into a leaf group)"
        } else {
            ""
        };
        Error::Cgroup(format!(
            "enabling {} in {}: {e}{hint}",
            missing.join(" "),
            file.display()
        ))
    })
}

fn mkdir(dir: &Path) -> Result<(), Error> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::Cgroup(format!(
            "creating group {}: {e}",
            dir.display()
        ))),
    }
}

pub(crate) fn write(file: &Path, value: &str) -> Result<(), Error> {
    fs::write(file, value)
        .map_err(|e| Error::Cgroup(format!("writing {value:?} to {}: {e}", file.display())))
}

/// The pids listed in a group's `cgroup.procs` (empty if the group is gone).
pub(crate) fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs every process in `dirs` (and their sub-groups) and waits until none is left.
pub(crate) fn kill_all(dirs: &[CgDir], timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let me = std::process::id() as i32;
    loop {
        let mut groups = Vec::new();
        for dir in dirs {
            collect_groups(&dir.path, dir.version, &mut groups, 0);
        }
        let mut remaining = 0usize;
        for group in &groups {
            if group.version == CgroupVersion::V2 {
                let kill = group.path.join("cgroup.kill");
                if kill.exists() {
                    let _ = fs::write(&kill, "1");
                }
            }
        }
        // v1: freeze first so nothing forks between reading the list and the kill.
        let freezers: Vec<&CgDir> = groups
            .iter()
            .filter(|g| g.version == CgroupVersion::V1 && g.path.join("freezer.state").exists())
            .collect();
        for g in &freezers {
            let _ = fs::write(g.path.join("freezer.state"), "FROZEN");
        }
        for group in &groups {
            for pid in procs(&group.path) {
                if pid <= 1 || pid == me {
                    continue;
                }
                remaining += 1;
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        for g in &freezers {
            let _ = fs::write(g.path.join("freezer.state"), "THAWED");
        }
        if remaining == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let left: Vec<String> = groups
                .iter()
                .flat_map(|g| procs(&g.path))
                .map(|p| p.to_string())
                .collect();
            return Err(Error::Timeout {
                what: format!(
                    "processes {} still alive in {} after SIGKILL",
                    left.join(" "),
                    dirs.first()
                        .map(|d| d.path.display().to_string())
                        .unwrap_or_default()
                ),
                seconds: timeout.as_secs_f64(),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn collect_groups(dir: &Path, version: CgroupVersion, out: &mut Vec<CgDir>, depth: usize) {
    if depth > 16 || !dir.is_dir() {
        return;
    }
    out.push(CgDir {
        version,
        path: dir.to_owned(),
    });
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_groups(&entry.path(), version, out, depth + 1);
            }
        }
    }
}

/// Kills everything in `dir` (recursively) and removes it with its sub-groups.
pub(crate) fn destroy(dir: &CgDir, timeout: Duration) -> Result<(), Error> {
    if !dir.path.exists() {
        return Ok(());
    }
    kill_all(std::slice::from_ref(dir), timeout)?;
    let mut groups = Vec::new();
    collect_groups(&dir.path, dir.version, &mut groups, 0);
    // Deepest first.
    groups.sort_by_key(|g| std::cmp::Reverse(g.path.components().count()));
    let deadline = Instant::now() + timeout;
    for group in groups {
        loop {
            match fs::remove_dir(&group.path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    // Exiting tasks can hold the group for a moment after the kill.
                    let _ = kill_all(std::slice::from_ref(&group), Duration::from_secs(1));
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(Error::Cgroup(format!(
                        "removing group {}: {e}",
                        group.path.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Directories under `mount` (searched a few levels deep) whose name satisfies `is_ours`;
/// the search does not descend into matches.
pub(crate) fn find_groups(mount: &Path, is_ours: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    find_rec(mount, is_ours, &mut out, 0);
    out
}

fn find_rec(dir: &Path, is_ours: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let name = entry.file_name();
        if is_ours(&name.to_string_lossy()) {
            out.push(entry.path());
        } else {
            find_rec(&entry.path(), is_ours, out, depth + 1);
        }
    }
}

/// The version of the hierarchy mounted at `mount`, from the layout's mounts.
pub(crate) fn version_of(path: &Path) -> CgroupVersion {
    if path.join("cgroup.controllers").exists() {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    fn fake_read(p: &Path) -> Option<String> {
        let s = p.to_string_lossy();
        if s.ends_with("unified/cgroup.controllers") {
            Some(String::new())
        } else if s.ends_with("v2root/cgroup.controllers")
            || s == "/sys/fs/cgroup/cgroup.controllers"
        {
            Some("cpuset cpu io memory pids".to_owned())
        } else if s.ends_with("cgroup.procs") {
            Some(String::new())
        } else {
            None
        }
    }

    #[test]
    fn hybrid_layout_uses_v1_controllers_and_the_unified_mount() {
        let layout = detect_from(HYBRID_MOUNTINFO, HYBRID_SELF, &fake_read).unwrap();
        let mounts: Vec<_> = layout.used.iter().map(|h| h.mount.clone()).collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids",
                "/sys/fs/cgroup/freezer",
                "/sys/fs/cgroup/unified"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            layout.used[1].base,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(layout.used[4].version, CgroupVersion::V2);
        assert!(layout.used[4].enable.is_empty());
        let dirs = layout.dirs("htb1x0", "ws");
        assert_eq!(
            dirs[layout.cpu_index()].path,
            PathBuf::from("/sys/fs/cgroup/cpu/htb1x0/ws")
        );
        // Every cgroup hierarchy but the named one (name=systemd).
        assert_eq!(layout.all_mounts.len(), 6);
    }

    #[test]
    fn comounted_cpu_cpuacct_is_one_hierarchy() {
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";
        let layout = detect_from(mountinfo, "2:cpu,cpuacct:/user.slice\n", &|p| {
            p.ends_with("cgroup.procs").then(String::new)
        })
        .unwrap();
        assert_eq!(layout.used.len(), 1);
        assert_eq!(
            layout.used[0].base,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/user.slice")
        );
    }

    #[test]
    fn pure_v2_layout_enables_controllers_at_the_root() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout =
            detect_from(mountinfo, "0::/user.slice/session-1.scope\n", &fake_read).unwrap();
        assert_eq!(layout.used.len(), 1);
        let h = &layout.used[0];
        assert_eq!(h.version, CgroupVersion::V2);
        assert_eq!(h.base, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(h.enable, ["cpu", "memory", "pids"]);
    }

    #[test]
    fn no_cpu_controller_is_a_clear_error() {
        let mountinfo = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let err = detect_from(mountinfo, "0::/\n", &fake_read).unwrap_err();
        assert!(err.to_string().contains("cpu controller"), "{err}");
    }

    #[test]
    fn mount_points_are_unescaped() {}

    #[test]
    fn v2_limits_and_controllers_are_written_as_the_kernel_expects() {
        let tmp = std::env::temp_dir().join(format!("herd-testbed-unit-{}", std::process::id()));
        let base = tmp.join("v2root");
        fs::create_dir_all(&base).unwrap();
        let layout = Layout {
            used: vec![Hierarchy {
                version: CgroupVersion::V2,
                mount: base.clone(),
                controllers: vec!["cpu".into(), "memory".into()],
                base: base.clone(),
                enable: vec!["cpu".into(), "memory".into()],
            }],
            all_mounts: vec![base.clone()],
            cpu: 0,
            memory: Some(0),
        };
        layout.create_testbed("htb1x0").unwrap();
        let dirs = layout
            .create_host("htb1x0", "h1", Some(0.5), Some(64 << 20))
            .unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(base.join("cgroup.subtree_control")), "+cpu +memory");
        assert_eq!(
            read(base.join("htb1x0/cgroup.subtree_control")),
            "+cpu +memory"
        );
        assert_eq!(read(dirs[0].path.join("cpu.max")), "50000 100000");
        assert_eq!(
            read(dirs[0].path.join("memory.max")),
            (64u64 << 20).to_string()
        );
        fs::remove_dir_all(&tmp).unwrap();
    }
}
