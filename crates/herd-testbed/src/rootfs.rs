//! Minimal host roots: the binary, its shared libraries, stub files; and deleting them
//! without ever crossing into a mount.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, cmd};

/// Where the binary of a [`RootKind::Minimal`](crate::RootKind::Minimal) host is placed,
/// as seen from inside the host.
pub const MINIMAL_BINARY: &str = "/herd";
/// The second copy (a hard link) of the binary, on the host's `PATH`.
pub const MINIMAL_BINARY_ON_PATH: &str = "/usr/local/bin/herd";
/// The state directory of a minimal host, as seen from inside the host.
pub const MINIMAL_STATE_DIR: &str = "/var/lib/herd";
/// The `PATH` processes on minimal hosts start with.
pub const MINIMAL_PATH: &str = "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin";

/// NSS modules glibc may `dlopen` at run time (not visible to `ldd`); copied next to
/// libc when they exist so name and user look-ups work inside the root.
const NSS_MODULES: &[&str] = &["libnss_files.so.2", "libnss_dns.so.2", "libresolv.so.2"];

/// Builds a minimal root at `root` for `binary`.
pub(crate) fn build_minimal(root: &Path, binary: &Path, hostname: &str) -> Result<(), Error> {
    let meta = fs::metadata(binary).map_err(|e| Error::io("read binary", binary, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidSpec(format!(
            "minimal host binary {} is not a regular file",
            binary.display()
        )));
    }
    for (dir, mode) in [
        ("", 0o755),
        ("proc", 0o555),
        ("dev", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("root", 0o700),
        ("usr", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
        ("var", 0o755),
        ("var/lib", 0o755),
        ("var/lib/herd", 0o755),
    ] {
        let path = root.join(dir);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_empty() => {}
            Err(e) => return Err(Error::io("create directory", path, e)),
        }
        set_mode(&path, mode)?;
    }

    let inside = root.join(MINIMAL_BINARY.trim_start_matches('/'));
    copy(binary, &inside)?;
    set_mode(&inside, 0o755)?;
    let on_path = root.join(MINIMAL_BINARY_ON_PATH.trim_start_matches('/'));
    fs::hard_link(&inside, &on_path).map_err(|e| Error::io("hard-link", &on_path, e))?;

    for lib in shared_libraries(binary)? {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if dest.exists() {
            continue;
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        }
        copy(&lib, &dest)?;
    }

    let etc = root.join("etc");
    write_file(
        &etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    write_file(&etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    write_file(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nservices: files\nprotocols: files\n",
    )?;
    write_file(&etc.join("hostname"), &format!("{hostname}\n"))?;
    write_hosts(root, &[])?;
    Ok(())
}

/// Writes `ROOT/etc/hosts` listing localhost and every testbed host (atomically, since
/// processes in the root may be reading it).
pub(crate) fn write_hosts(root: &Path, hosts: &[(String, Ipv4Addr)]) -> Result<(), Error> {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, addr) in hosts {
        text.push_str(&format!("{addr}\t{name}\n"));
    }
    let tmp = root.join("etc/.hosts.tmp");
    write_file(&tmp, &text)?;
    let dest = root.join("etc/hosts");
    fs::rename(&tmp, &dest).map_err(|e| Error::io("rename into place", dest, e))
}

/// The shared libraries (with the ELF interpreter) `binary` needs, as absolute paths;
/// empty for a static binary.
pub(crate) fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let path = binary.to_string_lossy();
    let text = match cmd::run("ldd", &[&path]) {
        Ok(text) => text,
        // ldd exits 1 with "not a dynamic executable" for static binaries.
        Err(Error::CommandFailed { stderr, .. })
            if stderr.contains("not a dynamic executable")
                || stderr.contains("statically linked") =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut libs = parse_ldd(&text).map_err(|missing| Error::CommandFailed {
        command: format!("ldd {path}"),
        status: "exit status: 0".to_owned(),
        stderr: format!("shared libraries not found: {}", missing.join(", ")),
    })?;
    let libc_dir = libs
        .iter()
        .find(|l| l.file_name().is_some_and(|n| n == "libc.so.6"))
        .and_then(|l| l.parent().map(Path::to_owned));
    if let Some(dir) = libc_dir {
        for module in NSS_MODULES {
            let candidate = dir.join(module);
            if candidate.exists() && !libs.contains(&candidate) {
                libs.push(candidate);
            }
        }
    }
    Ok(libs)
}

/// Parses `ldd` output into library paths; `Err` lists libraries ldd could not find.
pub(crate) fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, Vec<String>> {
    let mut libs = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    missing.push(name.trim().to_owned());
                    continue;
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            let path = PathBuf::from(path);
            if !libs.contains(&path) {
                libs.push(path);
            }
        }
    }
    if missing.is_empty() {
        Ok(libs)
    } else {
        Err(missing)
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    fs::copy(from, to).map(drop).map_err(|e| {
        Error::io(
            "copy to",
            to,
            io::Error::new(e.kind(), format!("from {}: {e}", from.display())),
        )
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    fs::write(path, text).map_err(|e| Error::io("write", path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

/// Mount points at or under `dir`, deepest first, as seen from this mount namespace.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = herd_sandbox::cgroups::mount_points(&text)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// Lazily unmounts everything mounted at or under `dir`.
pub(crate) fn unmount_under(dir: &Path) -> Result<(), Error> {
    // A path can be mounted over more than once: loop until nothing is left.
    for _ in 0..16 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            let c = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes())
                .map_err(|e| Error::io("unmount", &mount, io::Error::other(e)))?;
            // SAFETY: `c` is a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT)
                {
                    return Err(Error::io("unmount", mount, e));
                }
            }
        }
    }
    Err(Error::io(
        "unmount everything under",
        dir,
        io::Error::other("mounts keep reappearing"),
    ))
}

/// Deletes `dir` recursively, never following symlinks, first unmounting anything
/// mounted inside it, and refusing to descend into any other file system.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", dir, e)),
    };
    unmount_under(dir)?;
    if !mounts_under(dir).is_empty() {
        return Err(Error::io(
            "delete",
            dir,
            io::Error::other("something is still mounted inside; refusing to delete"),
        ));
    }
    remove_rec(dir, meta.dev())
}

fn remove_rec(path: &Path, dev: u64) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    if meta.is_dir() {
        if meta.dev() != dev {
            return Err(Error::io(
                "delete",
                path,
                io::Error::other("another file system is mounted here; refusing to delete"),
            ));
        }
        let entries = fs::read_dir(path).map_err(|e| Error::io("list", path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", path, e))?;
            remove_rec(&entry.path(), dev)?;
        }
        match fs::remove_dir(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove directory", path, e)),
        }
    } else {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f)
";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            parse_ldd("\tstatically linked\n").unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err(),
            ["libfoo.so.1"]
        );
    }

    #[test]
    fn remove_tree_deletes_files_and_does_not_follow_symlinks() {
        let base = std::env::temp_dir().join(format!("herd-testbed-rm-{}", std::process::id()));
        let outside = base.join("outside");
        let tree = base.join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        fs::write(tree.join("a/b/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&tree).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }
}
