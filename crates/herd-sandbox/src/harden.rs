//! What a task may not do, whoever submitted it: capabilities, system calls, the
//! kernel's knobs in `/proc`, resource limits.
//!
//! # Capabilities
//!
//! The task holds none, root included: the bounding set is emptied (so no exec can
//! bring one back), the ambient set cleared, then the effective, permitted and
//! inheritable sets zeroed after the task took on its identity. The securebits
//! `NOROOT`, `NO_CAP_AMBIENT_RAISE` and `KEEP_CAPS` off are set and locked, and
//! `no_new_privs` is set. A task of a root submitter is still uid 0 (tools that check
//! for root behave), but cannot mount or unmount (the covers of hidden paths stay),
//! write the kernel's knobs, load modules, renice below its nice, leave `SCHED_IDLE`,
//! override file permissions, chown, and so on. In rootless mode the task's own
//! nested user namespace gives it a full set again: it is dropped there in the same way.
//!
//! # System calls refused
//!
//! A seccomp filter, loaded last before `execve`, refuses these with `EPERM` (most of
//! them also need a capability the task does not have: the filter is a second wall,
//! and it also covers what needs none):
//!
//! | call | why |
//! |---|---|
//! | `mount`, `umount2`, `pivot_root`, `chroot` | change the task's view of the files (uncover hidden paths) |
//! | `open_tree`, `open_tree_attr`, `move_mount`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, `mount_setattr` | the same through the new mount API |
//! | `init_module`, `finit_module`, `delete_module` | load or remove kernel code |
//! | `kexec_load`, `kexec_file_load`, `reboot` | replace or stop the helper's kernel |
//! | `bpf` | kernel programs, maps and their attack surface |
//! | `perf_event_open` | profiles the helper's kernel and other processes; large attack surface |
//! | `userfaultfd` | a classic helper of kernel exploits (stalls the kernel on a page fault) |
//! | `keyctl`, `add_key`, `request_key` | kernel keyrings are not namespaced: the helper user's keys |
//! | `process_vm_readv`, `process_vm_writev` | other processes' memory |
//! | `swapon`, `swapoff` | the helper's swap |
//! | `acct` | process accounting to a file |
//! | `settimeofday`, `clock_settime`, `clock_adjtime`, `adjtimex` | the helper's clock is not namespaced |
//! | `setns` | enter other namespaces |
//! | `unshare`, `clone` with `CLONE_NEWUSER` | a new user namespace would give the task every capability in it, and the kernel's unprivileged-namespace attack surface |
//! | `clone3` (refused with `ENOSYS`) | its flags are in memory, out of a filter's reach; libc then falls back to `clone` |
//! | `open_by_handle_at`, `name_to_handle_at` | open files by handle, around the mount tree (the "shocker" escape) |
//! | `quotactl`, `quotactl_fd` | the helper's disk quotas |
//! | `lookup_dcookie`, `vhangup`, `syslog` | kernel internals, the helper's terminals, the kernel log |
//! | `personality` other than `PER_LINUX`, `PER_LINUX32`, `UNAME26` (and the query `0xffffffff`) | turning off address randomisation or making data executable |
//! | x86_64: `iopl`, `ioperm` | raw I/O ports |
//! | x86_64: `sysfs`, `_sysctl`, `uselib` | obsolete interfaces nothing needs |
//!
//! The filter checks the architecture first: a call of another ABI than the binary's
//! own (i386 through `int 0x80`, or x32 on x86_64, whose calls carry bit 30) kills the
//! task. `ptrace` is allowed: tracers (gdb, strace, sanitizers' leak checkers) are
//! ordinary build and test tools, the task's pid namespace holds only its own
//! processes, and pid 1 is out of reach (it is not dumpable and holds capabilities the
//! task lacks, so the kernel refuses to let the task trace it or open its `/proc`
//! files). `io_uring` is allowed (its operations are checked like the calls they stand
//! for). The filter is built by pid 1 before the task is handed over (with a root
//! built ahead, before the gate), so the task only loads it: one `seccomp` call.
//! `SECCOMP_FILTER_FLAG_SPEC_ALLOW` keeps the kernel from turning on speculative
//! store bypass mitigations for the task, which would slow it down.
//!
//! # /proc
//!
//! As container runtimes (runc, podman) do: [`READ_ONLY_PROC`] are bind-mounted
//! read-only over themselves (a task of uid 0 could otherwise write host-wide sysctls
//! such as `kernel.core_pattern`, which check only the uid), and [`MASKED_PROC`] are
//! covered: files by the helper's `/dev/null`, directories by an empty read-only tmpfs.
//!
//! # Resource limits
//!
//! Of the limits a request carries only [`ALLOWED_RLIMITS`] are applied, each at most
//! the helper's own hard limit (soft no higher than hard); the others stay as the
//! helper has them. `RLIMIT_RTPRIO` is always 0 (no real-time priority), and with
//! [`crate::SandboxSpec::idle`] `RLIMIT_NICE` is 0, so the task can neither lower its
//! nice value nor leave `SCHED_IDLE` (which an unprivileged process may do as far as
//! its `RLIMIT_NICE` allows).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// `/proc` entries made read-only in the task's `/proc`.
pub const READ_ONLY_PROC: &[&str] = &["sys", "sysrq-trigger", "bus", "fs", "irq"];

/// `/proc` entries covered in the task's `/proc`: kernel memory, symbols, logs, timers,
/// keys, hardware.
pub const MASKED_PROC: &[&str] = &[
    "kcore",
    "kmsg",
    "kallsyms",
    "keys",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
    "interrupts",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "acpi",
    "asound",
    "scsi",
];

/// The resource limits a task's request may set (each at most the helper's own).
pub const ALLOWED_RLIMITS: &[libc::__rlimit_resource_t] = &[
    libc::RLIMIT_CPU,
    libc::RLIMIT_FSIZE,
    libc::RLIMIT_DATA,
    libc::RLIMIT_STACK,
    libc::RLIMIT_CORE,
    libc::RLIMIT_NOFILE,
    libc::RLIMIT_AS,
];

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

// Securebits (linux/securebits.h).
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// The first half of dropping capabilities, while `CAP_SETPCAP` is still held (before
/// a root-mode task changes its uid; in rootless mode after the task's own user
/// namespace is made): securebits, the bounding set, the ambient set.
pub(crate) fn limit_capabilities() -> Result<(), String> {
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } < 0 {
        return Err(last_error("set securebits"));
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(last_error(&format!(
                "drop capability {cap} from the bounding set"
            )));
        }
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if r < 0 {
        return Err(last_error("clear the ambient capabilities"));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The second half, once the task has its identity: no effective, permitted or
/// inheritable capability.
pub(crate) fn clear_capabilities() -> Result<(), String> {
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a valid header and two data structs (version 3).
    let r = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if r < 0 {
        return Err(last_error("drop capabilities"));
    }
    Ok(())
}

fn own_limit(res: libc::__rlimit_resource_t) -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit writes into a valid rlimit.
    unsafe { libc::getrlimit(res, &mut lim) };
    lim
}

/// The helper's own limits of [`ALLOWED_RLIMITS`] and `RLIMIT_NICE`, read by pid 1
/// ahead of the task (the task's own are the same until it sets them).
pub(crate) fn own_limits() -> Vec<(libc::__rlimit_resource_t, libc::rlimit)> {
    ALLOWED_RLIMITS
        .iter()
        .chain(&[libc::RLIMIT_NICE])
        .map(|&r| (r, own_limit(r)))
        .collect()
}

/// The limits to set for a task that asked for `requested`, given the helper's own
/// ([`own_limits`]): see the module docs.
pub(crate) fn clamp_rlimits(
    requested: &[(i32, u64, u64)],
    idle: bool,
    own: &[(libc::__rlimit_resource_t, libc::rlimit)],
) -> Vec<(libc::__rlimit_resource_t, libc::rlimit)> {
    let mut out = Vec::with_capacity(requested.len() + 2);
    let mut nice = None;
    for &(res, soft, hard) in requested {
        let Ok(r) = libc::__rlimit_resource_t::try_from(res) else {
            continue;
        };
        let Some((_, own)) = own.iter().find(|(x, _)| *x == r) else {
            continue; // not on the allow-list
        };
        let hard = hard.min(own.rlim_max);
        let lim = libc::rlimit {
            rlim_cur: soft.min(hard),
            rlim_max: hard,
        };
        if r == libc::RLIMIT_NICE {
            nice = Some(lim);
        } else if let Some(slot) = out.iter_mut().find(|(x, _)| *x == r) {
            slot.1 = lim;
        } else {
            out.push((r, lim));
        }
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if idle {
        nice = Some(zero);
    }
    out.extend(nice.map(|l| (libc::RLIMIT_NICE, l)));
    out.push((libc::RLIMIT_RTPRIO, zero));
    out
}

/// Calls refused with `EPERM` whatever their arguments (see the module docs).
fn refused() -> Vec<i64> {
    use libc::*;
    let mut v = vec![
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chroot,
        SYS_open_tree,
        467, // open_tree_attr (Linux 6.15), the same number on every architecture
        SYS_move_mount,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_mount_setattr,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_reboot,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_userfaultfd,
        SYS_keyctl,
        SYS_add_key,
        SYS_request_key,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_swapon,
        SYS_swapoff,
        SYS_acct,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_clock_adjtime,
        SYS_adjtimex,
        SYS_setns,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_quotactl,
        SYS_quotactl_fd,
        SYS_lookup_dcookie,
        SYS_vhangup,
        SYS_syslog,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([SYS_iopl, SYS_ioperm, SYS_sysfs, SYS__sysctl, SYS_uselib]);
    v
}

/// Personalities a task may take on: Linux, 32-bit Linux (`linux32`), a 2.6 version
/// number (`UNAME26`), both, and the query.
const PERSONALITIES: &[u64] = &[0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
#[cfg(target_arch = "x86_64")]
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Calls pid 1 still makes once its filter is loaded (hiding paths after the gate),
/// and the rootless task's own user namespace: refused by the task's filter only.
const TASK_ONLY: &[i64] = &[libc::SYS_mount, libc::SYS_umount2];

fn newuser_rule(bad: impl Fn(seccompiler::BackendError) -> String) -> Result<SeccompRule, String> {
    let newuser = libc::CLONE_NEWUSER as u64;
    let cond = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(newuser),
        newuser,
    )
    .map_err(&bad)?;
    SeccompRule::new(vec![cond]).map_err(bad)
}

/// The seccomp programs (see the module docs), in two parts so that the task's start
/// pays little for them: pid 1 loads the first (everything but [`TASK_ONLY`] and
/// `CLONE_NEWUSER`) before the gate, and the task inherits it; the task adds the
/// second (a few instructions, cheap for the kernel to check and cache) before exec.
pub(crate) fn filters() -> Result<(BpfProgram, BpfProgram), String> {
    let bad = |e: seccompiler::BackendError| format!("seccomp filter: {e}");
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(bad)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = refused()
        .into_iter()
        .filter(|nr| !TASK_ONLY.contains(nr))
        .map(|nr| (nr, Vec::new()))
        .collect();
    let others: Vec<SeccompCondition> = PERSONALITIES
        .iter()
        .map(|&p| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p))
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(others).map_err(bad)?],
    );
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let body: BpfProgram = SeccompFilter::new(rules, SeccompAction::Allow, eperm.clone(), arch)
        .and_then(BpfProgram::try_from)
        .map_err(bad)?;
    // Ahead of seccompiler's program (which checks the architecture again): a foreign
    // architecture or (x86_64) the x32 ABI dies, clone3 gets ENOSYS.
    let mut pid1 = vec![
        stmt(BPF_LD_W_ABS, 4), // seccomp_data.arch
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, 0), // seccomp_data.nr
    ];
    #[cfg(target_arch = "x86_64")]
    pid1.extend([
        jump(BPF_JGE_K, 0x4000_0000, 0, 1), // __X32_SYSCALL_BIT
        stmt(BPF_RET_K, RET_KILL_PROCESS),
    ]);
    pid1.extend([
        jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32),
    ]);
    pid1.extend(body);

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        TASK_ONLY.iter().map(|&nr| (nr, Vec::new())).collect();
    for nr in [libc::SYS_clone, libc::SYS_unshare] {
        rules.insert(nr, vec![newuser_rule(bad)?]);
    }
    let task: BpfProgram = SeccompFilter::new(rules, SeccompAction::Allow, eperm, arch)
        .and_then(BpfProgram::try_from)
        .map_err(bad)?;
    Ok((pid1, task))
}

/// Loads `prog` into this thread (no_new_privs must be set).
pub(crate) fn load(prog: &[sock_filter]) -> Result<(), String> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| "seccomp filter too long".to_owned())?,
        // seccompiler's sock_filter has the kernel's layout (repr(C), like libc's).
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let mut flags = libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW;
    loop {
        // SAFETY: fprog points to `len` valid instructions for the call's duration.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &fprog,
            )
        };
        if r == 0 {
            return Ok(());
        }
        // Kernels before 4.17 do not know the flag.
        if flags != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            flags = 0;
            continue;
        }
        return Err(last_error("load the seccomp filter"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child that has loaded the filter (with every capability
    /// the test has: the filter alone must refuse), and returns what it wrote.
    fn in_filtered_child(f: impl FnOnce() -> Vec<i64>) -> Vec<i64> {
        let (pid1, task) = filters().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        // SAFETY: the child only makes system calls and writes a pipe, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            drop(r);
            // SAFETY: integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let out = match load(&pid1).and_then(|()| load(&task)) {
                Ok(()) => f(),
                Err(_) => vec![-1],
            };
            let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut w = w;
            let _ = std::io::Write::write_all(&mut w, &bytes);
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(0) }
        }
        drop(w);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut { r }, &mut bytes).unwrap();
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        bytes
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn errno_of(r: libc::c_long) -> i64 {
        if r == -1 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64
        } else {
            0
        }
    }

    #[test]
    fn the_filter_alone_refuses_every_listed_call() {
        let calls = refused();
        let got = in_filtered_child(|| {
            calls
                .iter()
                .map(|&nr| {
                    // Arguments that would fail harmlessly if the call went through.
                    // SAFETY: invalid (null / -1) arguments only.
                    errno_of(unsafe { libc::syscall(nr, -1i64, 0, 0, 0, 0xdead_beefu64, 0) })
                })
                .collect()
        });
        assert_eq!(got, vec![libc::EPERM as i64; refused().len()]);
    }

    #[test]
    fn the_filter_refuses_new_user_namespaces_and_clone3_and_odd_personalities() {
        let got = in_filtered_child(|| {
            // SAFETY: each call fails (refused) or does nothing harmful.
            unsafe {
                vec![
                    errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)),
                    errno_of(libc::syscall(
                        libc::SYS_clone,
                        libc::CLONE_NEWUSER | libc::CLONE_FS,
                        0,
                        0,
                        0,
                        0,
                    )),
                    errno_of(libc::syscall(libc::SYS_clone3, 0, 0)),
                    errno_of(libc::syscall(libc::SYS_personality, 0x0040000)),
                    errno_of(libc::syscall(libc::SYS_personality, 0xffff_ffffu32)),
                    errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_FILES)),
                ]
            }
        });
        let (eperm, enosys) = (libc::EPERM as i64, libc::ENOSYS as i64);
        assert_eq!(got, [eperm, eperm, enosys, eperm, 0, 0]);
    }

    #[test]
    fn clamped_limits_never_exceed_the_helper_and_pin_rtprio_and_nice() {
        let nofile = own_limit(libc::RLIMIT_NOFILE);
        let own = own_limits();
        let got = clamp_rlimits(
            &[
                (libc::RLIMIT_NOFILE as i32, u64::MAX, u64::MAX),
                (libc::RLIMIT_NICE as i32, 40, 40),
                (libc::RLIMIT_RTPRIO as i32, 99, 99),
                (libc::RLIMIT_NPROC as i32, 1, 1),
                (libc::RLIMIT_CORE as i32, 0, 0),
                (-1, 0, 0),
            ],
            true,
            &own,
        );
        let find = |r| {
            got.iter()
                .find(|(x, _)| *x == r)
                .map(|(_, l)| (l.rlim_cur, l.rlim_max))
        };
        assert_eq!(
            find(libc::RLIMIT_NOFILE),
            Some((nofile.rlim_max, nofile.rlim_max))
        );
        assert_eq!(find(libc::RLIMIT_NICE), Some((0, 0)));
        assert_eq!(find(libc::RLIMIT_RTPRIO), Some((0, 0)));
        assert_eq!(find(libc::RLIMIT_NPROC), None);
        assert_eq!(find(libc::RLIMIT_CORE), Some((0, 0)));
        let not_idle = clamp_rlimits(&[(libc::RLIMIT_NICE as i32, 40, 40)], false, &own);
        let own_nice = own_limit(libc::RLIMIT_NICE).rlim_max.min(40);
        assert!(not_idle.contains(&(
            libc::RLIMIT_NICE,
            libc::rlimit {
                rlim_cur: own_nice,
                rlim_max: own_nice
            }
        )));
    }

    /// In forked children, pid 1's steps and then the task's (capabilities cleared,
    /// limits set, the task's filter loaded) all succeed, in that order; each is timed.
    /// CI runs 3 children; for figures, run 300 in release mode:
    /// `HERD_HARDEN_RUNS=300 cargo test --release -p herd-sandbox --lib
    /// the_tasks_hardening_steps -- --nocapture`.
    #[test]
    fn the_tasks_hardening_steps_succeed_in_a_child_and_are_timed() {
        use std::time::Instant;
        let n: usize = std::env::var("HERD_HARDEN_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(filters().unwrap());
        }
        let build = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let (pid1, prog) = filters().unwrap();
        let mut steps = vec![Vec::new(); 3];
        let mut per_call = vec![Vec::new(); 2];
        for _ in 0..n {
            let got = in_filtered_child_timed(&pid1, &prog);
            for (i, v) in got[..3].iter().enumerate() {
                steps[i].push(*v as f64 / 1e3);
            }
            per_call[0].push(got[3] as f64);
            per_call[1].push(got[4] as f64);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        println!("filters' build (pid 1, before the gate): {build:.1} us");
        println!("task: capset to nothing: {:.1} us", median(&mut steps[0]));
        println!(
            "task: setrlimit of the clamped limits: {:.1} us",
            median(&mut steps[1])
        );
        println!(
            "task: its seccomp filter's load ({} instructions, over pid 1's {}): {:.1} us",
            prog.len(),
            pid1.len(),
            median(&mut steps[2])
        );
        println!(
            "getppid: {:.0} ns without, {:.0} ns with the filter",
            median(&mut per_call[0]),
            median(&mut per_call[1])
        );
    }

    /// In a forked child that did what pid 1 does before the gate (bounding set,
    /// pid 1's filter): ns for the task's capset, its limits, its filter's load, then
    /// ns per getppid before and after the filters.
    fn in_filtered_child_timed(pid1: &[sock_filter], prog: &[sock_filter]) -> Vec<i64> {
        use std::time::Instant;
        let (r, w) = std::io::pipe().unwrap();
        // SAFETY: the child only makes system calls and writes a pipe, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            drop(r);
            let calls = 100_000;
            let per = || {
                let t = Instant::now();
                for _ in 0..calls {
                    // SAFETY: getppid has no arguments.
                    unsafe { libc::syscall(libc::SYS_getppid) };
                }
                (t.elapsed().as_nanos() / calls) as i64
            };
            let before = per();
            let own = own_limits();
            let pre = limit_capabilities().and_then(|()| load(pid1));
            let requested = [
                (libc::RLIMIT_NOFILE as i32, 1024, 4096),
                (libc::RLIMIT_STACK as i32, 8 << 20, u64::MAX),
                (libc::RLIMIT_CORE as i32, 0, u64::MAX),
            ];
            let t = Instant::now();
            let caps = pre.and_then(|()| clear_capabilities());
            let t_caps = t.elapsed().as_nanos() as i64;
            let t = Instant::now();
            for (res, lim) in clamp_rlimits(&requested, true, &own) {
                // SAFETY: lim is a valid rlimit.
                unsafe { libc::setrlimit(res, &lim) };
            }
            let t_lim = t.elapsed().as_nanos() as i64;
            // SAFETY: integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let t = Instant::now();
            let loaded = load(prog);
            let t_load = t.elapsed().as_nanos() as i64;
            let after = per();
            let out = if caps.is_ok() && loaded.is_ok() {
                vec![t_caps, t_lim, t_load, before, after]
            } else {
                vec![-1; 5]
            };
            let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut w = w;
            let _ = std::io::Write::write_all(&mut w, &bytes);
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(0) }
        }
        drop(w);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut { r }, &mut bytes).unwrap();
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        let v: Vec<i64> = bytes
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(v.len() == 5 && v[0] >= 0, "{v:?}");
        v
    }
}
