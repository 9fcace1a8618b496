//! Hand-written cgroup v1 / v2 support for one task group: detect, create, attach, remove.
//!
//! The layout is read from `/proc/self/mountinfo` and `/proc/self/cgroup`, never assumed:
//!
//! * a **v1** hierarchy carrying `cpu` gets the group (with `cpu.cfs_quota_us`), and so
//!   does one carrying `memory` (with `memory.limit_in_bytes`), each nested under the
//!   caller's own group in *that* hierarchy (or the given parent);
//! * otherwise the **v2** hierarchy whose `cgroup.controllers` offers `cpu` / `memory`
//!   gets it, with `cpu.max` and `memory.max`; the controllers are enabled in
//!   `cgroup.subtree_control` from the root down to the parent. A v2 mount without
//!   controllers (the "unified" mount of a hybrid machine) serves only as the freezer.
//! * the **pids** limit (`pids.max`) goes to v1's `pids` hierarchy when mounted, else
//!   to the v2 hierarchy offering `pids`; without either the task runs without it;
//! * the **freezer** is v1's `freezer` hierarchy when mounted, else the v2 hierarchy
//!   (`cgroup.freeze` is built into v2).
//!
//! Errors are plain strings here: they travel to the spawner as one line.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::cgroups::{Hierarchy, detect};
use crate::spec::{WireCgroup, path};

/// The CFS period the quota is expressed in (100 ms, the kernel default).
const PERIOD_US: u64 = 100_000;

/// A group this module created.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub dir: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value)
        .map_err(|e| format!("cgroup: write {value:?} to {}: {e}", path.display()))
}

/// Creates the group in every hierarchy it needs and sets the limits (`pids_max`: the
/// group's `pids.max`, where a `pids` controller is mounted). On error, groups already
/// created are removed again.
pub(crate) fn create(spec: &WireCgroup, pids_max: Option<u64>) -> Result<Vec<Group>, String> {
    let all = detect()?;
    if spec.name.is_empty() || spec.name.contains('/') || spec.name.starts_with('.') {
        return Err(format!("cgroup: bad group name {:?}", spec.name));
    }
    let v1 = |c: &str| all.iter().find(|h| !h.v2 && h.has(c));
    let v2 = all.iter().find(|h| h.v2);
    let v2_has = |c: &str| v2.filter(|h| h.has(c));
    let cpu_h = v1("cpu").or_else(|| v2_has("cpu"));
    let mem_h = v1("memory").or_else(|| v2_has("memory"));
    // Without a pids controller the limit cannot be had: the task runs without it.
    let pids_h = pids_max.and_then(|_| v1("pids").or_else(|| v2_has("pids")));
    if spec.cpus.is_some() && cpu_h.is_none() {
        return Err(no_controller("cpu", &all));
    }
    if spec.memory.is_some() && mem_h.is_none() {
        return Err(no_controller("memory", &all));
    }
    let mut plan: Vec<(&Hierarchy, Limits)> = Vec::new();
    // The freezer: v1's controller, or any v2 hierarchy (freezing is built into v2).
    let freezer_h = v1("freezer").or(v2);
    if let Some(h) = freezer_h {
        plan.push((h, Limits::default()));
    }
    for (h, which) in [(cpu_h, 0), (mem_h, 1), (pids_h, 2)] {
        let Some(h) = h else { continue };
        let i = match plan.iter().position(|(p, _)| p.mount == h.mount) {
            Some(i) => i,
            None => {
                plan.push((h, Limits::default()));
                plan.len() - 1
            }
        };
        let l = &mut plan[i].1;
        match which {
            0 => l.cpu = true,
            1 => l.memory = true,
            _ => l.pids = true,
        }
    }
    if plan.is_empty() {
        return Err(no_controller("cpu, memory or freezer", &all));
    }
    let mut made: Vec<Group> = Vec::new();
    for (h, limits) in plan {
        let result = create_in(h, spec, limits, pids_max);
        match result {
            Ok(g) => made.push(g),
            Err(e) => {
                remove(&made);
                return Err(e);
            }
        }
    }
    Ok(made)
}

/// Which limits a hierarchy's group carries.
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    cpu: bool,
    memory: bool,
    pids: bool,
}

/// The value of a `pids.max` file.
fn pids_value(max: Option<u64>) -> String {
    max.map_or_else(|| "max".to_owned(), |n| n.to_string())
}

/// The group (of those made) that holds the `pids` limit.
pub(crate) fn pids_group(groups: &[Group]) -> Option<&Group> {
    groups.iter().find(|g| g.dir.join("pids.max").exists())
}

/// Opens the `pids.max` (for writing) and `pids.events` files of the group holding the
/// `pids` limit, if there is one.
pub(crate) fn open_pids(groups: &[Group]) -> Option<(fs::File, fs::File)> {
    let g = pids_group(groups)?;
    let max = fs::OpenOptions::new()
        .write(true)
        .open(g.dir.join("pids.max"))
        .ok()?;
    let events = fs::File::open(g.dir.join("pids.events")).ok()?;
    Some((max, events))
}

/// Writes `pids.max` through a descriptor [`open_pids`] opened.
pub(crate) fn set_pids_max(file: &fs::File, max: Option<u64>) -> Result<(), String> {
    use std::io::Write;
    (&*file)
        .write_all(pids_value(max).as_bytes())
        .map_err(|e| format!("cgroup: set pids.max to {}: {e}", pids_value(max)))
}

/// How many forks the `pids` limit refused so far: the `max` count of `pids.events`
/// (read through a descriptor [`open_pids`] opened).
pub(crate) fn pids_refused(events: &fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 256];
    let n = events.read_at(&mut buf, 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .find_map(|l| l.strip_prefix("max ")?.trim().parse().ok())
        .unwrap_or(0)
}

fn no_controller(what: &str, all: &[Hierarchy]) -> String {
    let found: Vec<String> = all
        .iter()
        .map(|h| format!("{} ({})", h.mount.display(), h.controllers.join(",")))
        .collect();
    format!(
        "cgroup: no mounted hierarchy offers the {what} controller (found: {}); enable it or run without limits",
        if found.is_empty() {
            "none".to_owned()
        } else {
            found.join(", ")
        }
    )
}

fn create_in(
    h: &Hierarchy,
    spec: &WireCgroup,
    limits: Limits,
    pids_max: Option<u64>,
) -> Result<Group, String> {
    let (cpu, mem) = (limits.cpu, limits.memory);
    let parent_rel = match &spec.parent {
        Some(p) => path(p)
            .strip_prefix("/")
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path(p)),
        None => h.own_rel(),
    };
    let parent = h.mount.join(&parent_rel);
    if !parent.is_dir() {
        return Err(format!(
            "cgroup: parent group {} does not exist",
            parent.display()
        ));
    }
    if h.v2 {
        let wanted: Vec<&str> = [
            ("cpu", cpu && spec.cpus.is_some()),
            ("memory", mem && spec.memory.is_some()),
            ("pids", limits.pids),
        ]
        .into_iter()
        .filter(|(_, w)| *w)
        .map(|(c, _)| c)
        .collect();
        // Enable the controllers from the root down to the parent.
        let mut dir = h.mount.clone();
        let mut steps = vec![dir.clone()];
        for comp in parent_rel.components() {
            dir.push(comp);
            steps.push(dir.clone());
        }
        for step in &steps {
            let control = step.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&control).unwrap_or_default();
            let missing: Vec<String> = wanted
                .iter()
                .filter(|c| !enabled.split_whitespace().any(|x| x == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let value = missing.join(" ");
            fs::write(&control, &value).map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                    " (the group holds processes itself: run the agent in a leaf group and pass its parent)"
                } else {
                    ""
                };
                format!("cgroup: write {value:?} to {}: {e}{hint}", control.display())
            })?;
        }
    }
    let dir = parent.join(&spec.name);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A stale group of a task with the same id: reuse it only if it is empty.
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if !procs.trim().is_empty() {
                return Err(format!(
                    "cgroup: {} exists and holds processes",
                    dir.display()
                ));
            }
        }
        Err(e) => return Err(format!("cgroup: create {}: {e}", dir.display())),
    }
    let group = Group { dir: dir.clone() };
    let limits = (|| {
        if let (true, Some(cpus)) = (cpu, spec.cpus) {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(format!("cgroup: bad cpu quota {cpus}"));
            }
            let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
            if h.v2 {
                write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        if let (true, Some(bytes)) = (mem, spec.memory) {
            let file = if h.v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            write(&dir.join(file), &bytes.to_string())?;
        }
        if limits.pids {
            write(&dir.join("pids.max"), &pids_value(pids_max))?;
        }
        Ok(())
    })();
    match limits {
        Ok(()) => Ok(group),
        Err(e) => {
            remove(std::slice::from_ref(&group));
            Err(e)
        }
    }
}

/// See [`crate::prepare_agent_cgroup`].
pub(crate) fn prepare_agent(leaf: &str) -> Result<Option<PathBuf>, String> {
    prepare_agent_in(&detect()?, leaf)
}

fn prepare_agent_in(all: &[Hierarchy], leaf: &str) -> Result<Option<PathBuf>, String> {
    let has = |h: &Hierarchy| h.has("cpu") || h.has("memory");
    if all.iter().any(|h| !h.v2 && has(h)) {
        // v1 groups may hold processes and children alike.
        return Ok(None);
    }
    let Some(h) = all.iter().find(|h| h.v2 && has(h)) else {
        return Ok(None);
    };
    let rel = h.own_rel();
    let own = h.mount.join(&rel);
    let parent = Path::new("/").join(&rel);
    if rel.as_os_str().is_empty() {
        // The root group may hold processes and hand out controllers.
        return Ok(Some(parent));
    }
    let target = own.join(leaf);
    match fs::create_dir(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cgroup: create {}: {e}", target.display())),
    }
    let procs = fs::read_to_string(own.join("cgroup.procs"))
        .map_err(|e| format!("cgroup: read {}: {e}", own.join("cgroup.procs").display()))?;
    for pid in procs.split_whitespace() {
        match fs::write(target.join("cgroup.procs"), pid) {
            Ok(()) => {}
            // Exited meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                return Err(format!(
                    "cgroup: move pid {pid} to {}: {e}",
                    target.display()
                ));
            }
        }
    }
    Ok(Some(parent))
}

/// Freezes (`true`) or thaws the processes of the groups through whichever freezer one
/// of them offers: v2's `cgroup.freeze` or v1's `freezer.state`. Returns whether one
/// was found.
pub(crate) fn freeze(dirs: &[PathBuf], frozen: bool) -> Result<bool, String> {
    for dir in dirs {
        let v2 = dir.join("cgroup.freeze");
        if v2.exists() {
            write(&v2, if frozen { "1" } else { "0" })?;
            return Ok(true);
        }
        let v1 = dir.join("freezer.state");
        if v1.exists() {
            write(&v1, if frozen { "FROZEN" } else { "THAWED" })?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Moves process `pid` (a host pid) into every group.
pub(crate) fn attach(groups: &[Group], pid: i32) -> Result<(), String> {
    for g in groups {
        write(&g.dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Removes the groups, killing any process still in them and retrying while the kernel
/// finishes tearing exited processes down. Returns the first error left after retrying.
pub(crate) fn remove(groups: &[Group]) -> Option<String> {
    let mut first = None;
    for g in groups {
        let mut last = None;
        for attempt in 0..200u32 {
            match fs::remove_dir(&g.dir) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(format!("cgroup: remove {}: {e}", g.dir.display()));
                    let procs = fs::read_to_string(g.dir.join("cgroup.procs")).unwrap_or_default();
                    for pid in procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    // The kernel usually releases an emptied group within a
                    // millisecond or two: back off from 1 ms to 10 ms.
                    thread::sleep(Duration::from_millis(u64::from(
                        (1u32 << attempt.min(4)).min(10),
                    )));
                }
            }
        }
        if first.is_none() {
            first = last;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_group_enables_controllers_down_the_tree_and_sets_limits() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("herd.slice/agent")).unwrap();
        let h = Hierarchy {
            v2: true,
            mount: root.path().to_path_buf(),
            root: PathBuf::from("/"),
            controllers: vec!["cpu".into(), "memory".into()],
            own: PathBuf::from("/herd.slice/agent"),
        };
        let spec = WireCgroup {
            parent: Some(b"/herd.slice".to_vec()),
            name: "herd-task-7".into(),
            cpus: Some(1.5),
            memory: Some(1 << 30),
        };
        let limits = Limits {
            cpu: true,
            memory: true,
            pids: true,
        };
        let g = create_in(&h, &spec, limits, Some(64)).unwrap();
        assert_eq!(g.dir, root.path().join("herd.slice/herd-task-7"));
        let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(
            read("herd.slice/cgroup.subtree_control"),
            "+cpu +memory +pids"
        );
        assert_eq!(read("herd.slice/herd-task-7/pids.max"), "64");
        assert_eq!(read("herd.slice/herd-task-7/cpu.max"), "150000 100000");
        assert_eq!(read("herd.slice/herd-task-7/memory.max"), "1073741824");
    }

    #[test]
    fn preparing_the_agent_on_v2_moves_its_processes_to_a_leaf() {
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("system.slice/herd.service");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.procs"), "41\n42\n").unwrap();
        let v2 = Hierarchy {
            v2: true,
            mount: root.path().to_path_buf(),
            root: PathBuf::from("/"),
            controllers: vec!["cpu".into(), "memory".into()],
            own: PathBuf::from("/system.slice/herd.service"),
        };
        let parent = prepare_agent_in(std::slice::from_ref(&v2), "agent").unwrap();
        assert_eq!(parent, Some(PathBuf::from("/system.slice/herd.service")));
        // A plain file stands in for cgroup.procs: it holds the last pid written.
        assert_eq!(
            fs::read_to_string(own.join("agent/cgroup.procs")).unwrap(),
            "42"
        );

        let v1 = Hierarchy {
            v2: false,
            controllers: vec!["cpu".into()],
            ..v2.clone()
        };
        assert_eq!(prepare_agent_in(&[v1, v2], "agent").unwrap(), None);
    }
}
