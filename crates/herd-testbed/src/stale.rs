//! Testbed ids, owner records, and removing what crashed runs left behind.
//!
//! Every resource a testbed makes on the machine carries its id, `htb<pid>x<counter>`:
//! network namespaces (`/run/netns/<id>-<host>`, `/run/netns/<id>_bridge`), cgroups
//! (`.../<id>/<host>`) and the state directory (`$TMPDIR/herd-testbed/<id>`). Interfaces
//! live only inside those namespaces, so they need no unique names. Mount namespaces are
//! pinned at `/run/herd-testbed/<id>/<host>.mnt`. A testbed is *stale*
//! when the process in its id is gone (or the pid now belongs to another process, told
//! apart by its start time recorded in `/run/herd-testbed/<id>.owner`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::cgroup::{self, CgDir};
use crate::{Error, cmd, rootfs};

/// The prefix of every name the testbed creates on the machine.
pub const NAME_PREFIX: &str = "htb";

/// Where owner records live (a tmpfs: cleared at boot, like netns and cgroups).
pub(crate) const OWNER_DIR: &str = "/run/herd-testbed";

/// How long logs of crashed runs are kept before `cleanup_stale` deletes them.
const STALE_LOG_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

static COUNTER: AtomicU64 = AtomicU64::new(0);
static ACTIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The directory holding all testbeds' state directories.
pub fn state_base() -> PathBuf {
    std::env::temp_dir().join("herd-testbed")
}

/// Allocates a fresh id and marks it live in this process.
pub(crate) fn allocate_id() -> String {
    let id = format!(
        "{NAME_PREFIX}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    ACTIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone());
    id
}

/// Marks an id as no longer live in this process.
pub(crate) fn release_id(id: &str) {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
}

/// Splits `htb<pid>x<counter><rest>` into the id and its pid.
pub(crate) fn parse_id(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let pid_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let pid: u32 = rest[..pid_len].parse().ok()?;
    let after = rest[pid_len..].strip_prefix('x')?;
    let counter_len = after.bytes().take_while(u8::is_ascii_digit).count();
    if counter_len == 0 {
        return None;
    }
    let tail = &after[counter_len..];
    if !(tail.is_empty() || tail.starts_with('-') || tail.starts_with('_')) {
        return None;
    }
    let id_len = NAME_PREFIX.len() + pid_len + 1 + counter_len;
    Some((&name[..id_len], pid))
}

fn owner_file(id: &str) -> PathBuf {
    Path::new(OWNER_DIR).join(format!("{id}.owner"))
}

/// The start time (clock ticks since boot) of a process, `None` if it does not exist.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    // Fields after the command name start at field 3 (state); starttime is field 22.
    after_comm.split(' ').nth(19)?.parse().ok()
}

/// Records this process as the owner of `id`.
pub(crate) fn write_owner(id: &str) -> Result<(), Error> {
    fs::create_dir_all(OWNER_DIR).map_err(|e| Error::io("create directory", OWNER_DIR, e))?;
    let start = start_time(std::process::id()).unwrap_or(0);
    let file = owner_file(id);
    fs::write(&file, format!("{} {start}\n", std::process::id()))
        .map_err(|e| Error::io("write", file, e))
}

/// Whether the testbed `id` (made by `pid`) still has a live owner.
fn owner_alive(id: &str, pid: u32) -> bool {
    if pid == std::process::id() {
        return ACTIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id);
    }
    let Some(start) = start_time(pid) else {
        return false;
    };
    let recorded = fs::read_to_string(owner_file(id)).ok().and_then(|text| {
        text.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok())
    });
    match recorded {
        Some(recorded) => recorded == start,
        // No record yet: the owner may be creating it right now.
        None => true,
    }
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StaleCleanup {
    /// The ids of the stale testbeds that were found and removed.
    pub removed: Vec<String>,
    /// Cleanup steps that failed (left for the next run to retry).
    pub problems: Vec<String>,
}

/// Removes what earlier, crashed testbeds left behind: processes in their cgroups, the
/// cgroups, network namespaces (and with them every veth and bridge), mount namespaces,
/// mounts and root directories. Only testbeds whose owning process is gone are touched. Their logs are
/// kept (for a week) so a crashed run can still be debugged.
///
/// [`Testbed::new`](crate::Testbed::new) calls this; call it yourself to clean up after
/// a test process that was killed.
pub fn cleanup_stale() -> Result<StaleCleanup, Error> {
    crate::require_root()?;
    let layout = cgroup::detect().ok();
    let mut ids: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut note = |name: &str| {
        if let Some((id, pid)) = parse_id(name) {
            ids.insert((id.to_owned(), pid));
        }
    };
    for name in netns_names() {
        note(&name);
    }
    for file in read_dir_names(Path::new(OWNER_DIR)) {
        note(file.strip_suffix(".owner").unwrap_or(&file));
    }
    for dir in read_dir_names(&state_base()) {
        note(&dir);
    }
    let mut groups: Vec<PathBuf> = Vec::new();
    if let Some(layout) = &layout {
        for mount in &layout.all_mounts {
            groups.extend(cgroup::find_groups(mount, &|n| {
                parse_id(n).is_some_and(|(id, _)| id == n)
            }));
        }
    }
    for group in &groups {
        if let Some(name) = group.file_name() {
            note(&name.to_string_lossy());
        }
    }

    let mut report = StaleCleanup::default();
    for (id, pid) in ids {
        if owner_alive(&id, pid) {
            continue;
        }
        let mine: Vec<CgDir> = groups
            .iter()
            .filter(|g| g.file_name().is_some_and(|n| n == id.as_str()))
            .map(|g| CgDir {
                version: cgroup::version_of(g),
                path: g.clone(),
            })
            .collect();
        report.problems.extend(remove_testbed(&id, &mine, true));
        report.removed.push(id);
    }
    prune_old_logs(&mut report);
    Ok(report)
}

/// Removes everything of testbed `id`: kills its processes, removes its cgroups
/// (`groups`: the testbed-level groups), network namespaces, mounts and state (keeping
/// `logs/` when `keep_logs`). Returns the problems met; never stops half-way.
pub(crate) fn remove_testbed(id: &str, groups: &[CgDir], keep_logs: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let timeout = Duration::from_secs(10);
    // 1. Processes first: nothing may keep using the namespaces or roots.
    if let Err(e) = cgroup::kill_all(groups, timeout) {
        problems.push(e.to_string());
    }
    // 2. Network namespaces (their veths and the bridge go with them).
    for name in netns_names() {
        if parse_id(&name).is_some_and(|(owner, _)| owner == id)
            && let Err(e) = cmd::run("ip", &["netns", "delete", &name])
        {
            problems.push(e.to_string());
        }
    }
    // 3. Cgroups.
    for group in groups {
        if let Err(e) = cgroup::destroy(group, timeout) {
            problems.push(e.to_string());
        }
    }
    // 4. Mounts and state.
    let state = state_base().join(id);
    if state.exists() {
        let targets: Vec<PathBuf> = if keep_logs {
            read_dir_names(&state)
                .into_iter()
                .filter(|n| n != "logs")
                .map(|n| state.join(n))
                .collect()
        } else {
            vec![state.clone()]
        };
        for target in targets {
            if let Err(e) = rootfs::remove_tree(&target) {
                problems.push(e.to_string());
            }
        }
        // Drop the state dir itself when nothing (no logs) is left in it.
        let _ = fs::remove_dir(&state);
    }
    if let Err(e) = rootfs::unmount_under(&state) {
        problems.push(e.to_string());
    }
    // 5. Mount namespace files (after the processes: a namespace dies with its last user).
    if let Err(e) = rootfs::remove_tree(&crate::mntns::ns_dir(id)) {
        problems.push(e.to_string());
    }
    let _ = fs::remove_file(owner_file(id));
    problems
}

/// The names under /run/netns.
pub(crate) fn netns_names() -> Vec<String> {
    read_dir_names(Path::new("/run/netns"))
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn prune_old_logs(report: &mut StaleCleanup) {
    let base = state_base();
    for name in read_dir_names(&base) {
        let Some((id, pid)) = parse_id(&name) else {
            continue;
        };
        if id != name || owner_alive(id, pid) {
            continue;
        }
        let dir = base.join(&name);
        let old = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_LOG_AGE);
        if old && let Err(e) = rootfs::remove_tree(&dir) {
            report.problems.push(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_from_resource_names() {
        assert_eq!(parse_id("htb123x4"), Some(("htb123x4", 123)));
        assert_eq!(parse_id("htb123x4-ws"), Some(("htb123x4", 123)));
        assert_eq!(parse_id("htb123x4_bridge"), Some(("htb123x4", 123)));
        assert_eq!(parse_id("htb123x4.owner"), None);
        assert_eq!(parse_id("htb123x"), None);
        assert_eq!(parse_id("htbx4"), None);
        assert_eq!(parse_id("other"), None);
    }

    #[test]
    fn own_ids_are_live_until_released() {
        let id = allocate_id();
        let (parsed, pid) = parse_id(&id).unwrap();
        assert_eq!(parsed, id);
        assert!(owner_alive(&id, pid));
        release_id(&id);
        assert!(!owner_alive(&id, pid));
    }

    #[test]
    fn start_time_of_self_is_known_and_of_a_dead_pid_is_not() {
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX).is_none());
    }
}
