//! Persistent per-host mount namespaces.
//!
//! Every host gets one mount namespace, kept alive by a bind mount of its nsfs file at
//! `/run/herd-testbed/<id>/<host>.mnt` (like `ip netns` does for network namespaces) and
//! joined by every process started on the host. Its mounts are slaves of the machine's:
//! the host sees what the machine mounts, but what the host mounts (say, herd's FUSE
//! view) stays on that host, visible to all its processes and to nobody else. A minimal
//! host's namespace also holds its root as a bind mount of itself (so that, as in a
//! container, the root its processes see is a mount point), with a fresh `/proc` and
//! bind-mounted `/dev` and `/sys`, mounted once when the host is made.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::Error;

/// Where per-testbed namespace files live: `/run/herd-testbed/<id>/`.
pub(crate) fn ns_dir(id: &str) -> std::path::PathBuf {
    Path::new(crate::stale::OWNER_DIR).join(id)
}

fn cstr(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| Error::io("use path", path, io::Error::other(e)))
}

fn mount(
    src: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let ptr = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(src),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `dir` a private mount (a bind mount of itself), so that namespace files bound
/// inside it neither propagate anywhere nor loop.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let c = cstr(dir)?;
    mount(Some(&c), &c, None, libc::MS_BIND)
        .map_err(|e| Error::io("bind-mount onto itself", dir, e))?;
    mount(None, &c, None, libc::MS_PRIVATE).map_err(|e| Error::io("make mount private", dir, e))
}

/// Steps of the namespace holder child, reported back when one fails.
const HOLDER_STEPS: &[&str] = &[
    "",
    "creating the mount namespace",
    "making the host's mounts slaves of the machine's",
    "mounting /proc in the host root",
    "bind-mounting /dev into the host root",
    "bind-mounting /sys into the host root",
    "bind-mounting the host root onto itself",
];

/// Creates the mount namespace of a host and pins it at `file` (inside a directory
/// prepared by [`prepare_dir`]). With `minimal_root`, mounts the root's `/proc`, `/dev`
/// and `/sys` inside it, and with `root_mount` makes the root a mount of its own.
pub(crate) fn create(
    file: &Path,
    dir: &Path,
    minimal_root: Option<&Path>,
    root_mount: bool,
) -> Result<(), Error> {
    fs::write(file, "").map_err(|e| Error::io("create", file, e))?;
    let dir_c = cstr(dir)?;
    let minimal = match minimal_root {
        Some(root) => Some((
            cstr(root)?,
            cstr(&root.join("proc"))?,
            cstr(&root.join("dev"))?,
            cstr(&root.join("sys"))?,
        )),
        None => None,
    };
    let root_c = c"/".to_owned();
    let proc_c = c"proc".to_owned();
    let dev_c = c"/dev".to_owned();
    let sys_c = c"/sys".to_owned();
    let (ready_r, ready_w) = pipe().map_err(|e| Error::io("create pipe for", file, e))?;
    let (release_r, release_w) = pipe().map_err(|e| Error::io("create pipe for", file, e))?;

    // SAFETY: the child only makes async-signal-safe system calls on data prepared above,
    // then leaves with _exit; it never returns into Rust code of the parent's threads.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io(
            "fork a holder for",
            file,
            io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        // Child.
        // SAFETY: see above; raw system calls only.
        unsafe {
            libc::close(release_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            // This child lives as long as the host: close every descriptor it inherited
            // from other threads (a file another test is writing would otherwise stay
            // open for writing, and executing it would fail with ETXTBSY).
            let (a, b) = {
                let (x, y) = (
                    ready_w.as_raw_fd() as libc::c_uint,
                    release_r.as_raw_fd() as libc::c_uint,
                );
                (x.min(y), x.max(y))
            };
            let close_range = |lo: libc::c_uint, hi: libc::c_uint| {
                if lo <= hi {
                    libc::syscall(libc::SYS_close_range, lo, hi, 0);
                }
            };
            close_range(3, a.saturating_sub(1));
            close_range(a + 1, b - 1);
            close_range(b + 1, libc::c_uint::MAX);
            let fail = |step: u8| -> ! {
                let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                let mut msg = [0u8; 5];
                msg[0] = step;
                msg[1..].copy_from_slice(&errno.to_ne_bytes());
                libc::write(ready_w.as_raw_fd(), msg.as_ptr().cast(), msg.len());
                libc::_exit(1);
            };
            let raw_mount = |src: *const libc::c_char,
                             target: *const libc::c_char,
                             fstype: *const libc::c_char,
                             flags: libc::c_ulong| {
                libc::mount(src, target, fstype, flags, std::ptr::null())
            };
            let null = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                fail(1);
            }
            if raw_mount(null, root_c.as_ptr(), null, libc::MS_REC | libc::MS_SLAVE) != 0 {
                fail(2);
            }
            // Drop this namespace's copy of the testbed's namespace files: otherwise
            // every host's namespace would pin the namespaces of the hosts made before it.
            libc::umount2(dir_c.as_ptr(), libc::MNT_DETACH);
            if let Some((root_dir, proc_dir, dev_dir, sys_dir)) = &minimal {
                // The root is a mount of its own, as a container's is: a process
                // chrooted there sees `/` as a mount point (sandboxes need that).
                let bind = libc::MS_BIND | libc::MS_REC;
                if root_mount && raw_mount(root_dir.as_ptr(), root_dir.as_ptr(), null, bind) != 0 {
                    fail(6);
                }
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                if raw_mount(proc_c.as_ptr(), proc_dir.as_ptr(), proc_c.as_ptr(), flags) != 0 {
                    fail(3);
                }
                if raw_mount(dev_c.as_ptr(), dev_dir.as_ptr(), null, bind) != 0 {
                    fail(4);
                }
                if raw_mount(sys_c.as_ptr(), sys_dir.as_ptr(), null, bind) != 0 {
                    fail(5);
                }
            }
            let ok = [0u8; 5];
            libc::write(ready_w.as_raw_fd(), ok.as_ptr().cast(), ok.len());
            // Wait for the parent to pin the namespace (EOF when it closes its end).
            let mut byte = 0u8;
            libc::read(release_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }

    // Parent.
    drop(ready_w);
    drop(release_r);
    let mut msg = [0u8; 5];
    let mut got = 0;
    while got < msg.len() {
        // SAFETY: reading into the unfilled tail of a stack buffer.
        let n = unsafe {
            libc::read(
                ready_r.as_raw_fd(),
                msg[got..].as_mut_ptr().cast(),
                msg.len() - got,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            break;
        }
    }
    let result = if got < msg.len() {
        Err(Error::io(
            "create mount namespace for",
            file,
            io::Error::other("the holder process died before reporting"),
        ))
    } else if msg[0] != 0 {
        let errno = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
        let step = HOLDER_STEPS
            .get(usize::from(msg[0]))
            .copied()
            .unwrap_or("setting up");
        Err(Error::io(
            "create mount namespace for",
            file,
            io::Error::new(
                io::Error::from_raw_os_error(errno).kind(),
                format!("{step}: {}", io::Error::from_raw_os_error(errno)),
            ),
        ))
    } else {
        let src = CString::new(format!("/proc/{pid}/ns/mnt")).unwrap_or_default();
        cstr(file).and_then(|target| {
            mount(Some(&src), &target, None, libc::MS_BIND)
                .map_err(|e| Error::io("bind the host's mount namespace onto", file, e))
        })
    };
    drop(release_w);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
    }
    result
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
