//! Transparent offload: `herd shell` and herd run under another program's name.
//!
//! `herd shell [-- CMD]` makes a *masquerade directory* holding symbolic links named
//! after the configured programs (`gcc`, `cc`, `xz`, `convert`, ...), all pointing at
//! the herd binary, puts it first in `PATH`, and runs a shell (or CMD) there. When a
//! build then runs `gcc -c a.c`, it runs herd under the name `gcc`; herd finds the real
//! `gcc` further down `PATH` (skipping any entry that is herd itself) and runs it
//! through the agent like `herd run -T --retries N -- /usr/bin/gcc -c a.c`, so
//! placement may send it to a helper or keep it on the workstation. The masquerade
//! directory is taken out of the task's `PATH`, so the real program's own children run
//! as they would locally. Without a running agent the real program runs locally, with
//! one line on stderr saying so.
//!
//! Any link to herd under a name not starting with `herd` works the same way (as
//! distcc's masquerade directories do), inside `herd shell` or not.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The environment variable naming the masquerade directory of a `herd shell`.
pub const SHELL_DIR_ENV: &str = "HERD_SHELL_DIR";

/// Whether herd was started under another program's name (`gcc`, not `herd`), and
/// which.
pub fn masquerade_name(argv0: &OsStr) -> Option<String> {
    let name = Path::new(argv0).file_name()?.to_str()?.to_string();
    (!name.starts_with("herd") && !name.is_empty()).then_some(name)
}

/// `path` without the entry `dir` (and without empty entries).
pub fn strip_path(path: &OsStr, dir: &Path) -> OsString {
    let kept: Vec<&[u8]> = path
        .as_bytes()
        .split(|b| *b == b':')
        .filter(|e| !e.is_empty() && Path::new(OsStr::from_bytes(e)) != dir)
        .collect();
    OsString::from(OsStr::from_bytes(&kept.join(&b':')))
}

/// The first executable named `program` in `path` that is not herd itself (`herd`, a
/// canonical path): the real program a masquerade link stands for.
pub fn resolve(program: &str, path: &OsStr, herd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for entry in path.as_bytes().split(|b| *b == b':') {
        if entry.is_empty() {
            continue;
        }
        let cand = Path::new(OsStr::from_bytes(entry)).join(program);
        let Ok(meta) = std::fs::metadata(&cand) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        if std::fs::canonicalize(&cand).is_ok_and(|c| c == herd) {
            continue;
        }
        return Some(cand);
    }
    None
}

/// Fills `dir` (which must exist) with links named after `programs` that point at
/// `herd`, for the programs found in `path`; returns their names.
pub fn make_masquerade(
    dir: &Path,
    herd: &Path,
    programs: &[String],
    path: &OsStr,
) -> std::io::Result<Vec<String>> {
    let mut linked = Vec::new();
    for p in programs {
        if p.contains('/') || p.is_empty() || resolve(p, path, herd).is_none() {
            continue;
        }
        std::os::unix::fs::symlink(herd, dir.join(p))?;
        linked.push(p.clone());
    }
    Ok(linked)
}

/// A private directory for a shell's links: `$XDG_RUNTIME_DIR/herd-shell-<pid>` or
/// `/tmp/herd-shell-<uid>-<pid>`, mode 0700.
pub fn make_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let pid = std::process::id();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .map(|d| d.join(format!("herd-shell-{pid}")))
        .unwrap_or_else(|| {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir().join(format!("herd-shell-{uid}-{pid}"))
        });
    std::fs::DirBuilder::new().mode(0o700).create(&base)?;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            masquerade_name(OsStr::new("/x/gcc")).as_deref(),
            Some("gcc")
        );
        assert_eq!(masquerade_name(OsStr::new("cc")).as_deref(), Some("cc"));
        assert_eq!(masquerade_name(OsStr::new("/usr/bin/herd")), None);
        assert_eq!(masquerade_name(OsStr::new("herd-1a2b")), None);
    }

    #[test]
    fn strip() {
        assert_eq!(
            strip_path(OsStr::new("/m:/usr/bin::/bin:/m"), Path::new("/m")),
            OsString::from("/usr/bin:/bin")
        );
    }

    #[test]
    fn resolve_skips_herd_and_the_masquerade() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (masq, real, herd_dir) = (t.path().join("m"), t.path().join("r"), t.path().join("h"));
        for d in [&masq, &real, &herd_dir] {
            std::fs::create_dir(d).unwrap();
        }
        let herd = herd_dir.join("herd");
        std::fs::write(&herd, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&herd, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tool = real.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(real.join("data"), "not executable").unwrap();
        let path = OsString::from(format!("{}:{}", masq.display(), real.display()));
        let herd = std::fs::canonicalize(&herd).unwrap();
        let linked = make_masquerade(
            &masq,
            &herd,
            &["tool".into(), "data".into(), "missing".into()],
            &path,
        )
        .unwrap();
        assert_eq!(linked, vec!["tool"]);
        // The link in front is herd: the real tool is found behind it.
        assert_eq!(resolve("tool", &path, &herd), Some(tool));
        assert_eq!(resolve("data", &path, &herd), None);
    }
}
