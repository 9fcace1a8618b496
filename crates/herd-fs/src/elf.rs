//! The dynamic-loading closure of an ELF executable: every file the dynamic loader
//! will open to start it, computed on the workstation so that a helper can receive
//! them in one batch instead of one network round trip per shared library.
//!
//! [`closure`] reads ELF headers only (through the `object` crate, lazily: a 100 MB
//! library costs a few small reads) and never runs anything. It is pure apart from
//! reading files under the given root, and its work is bounded: at most
//! [`MAX_FILES`] paths, [`MAX_DEPTH`] levels of dependencies, 40 symlinks per path,
//! 256 directories per search path and 1 MiB per string.
//!
//! The result is a prefetch hint, not a promise: the loader on the helper stays the
//! authority, a file the closure misses costs one round trip as before, and a file it
//! lists needlessly costs only its transfer. The rules are glibc's; musl's loader
//! (`/etc/ld-musl-*.path`) is not modelled.
//!
//! ```no_run
//! use std::path::Path;
//!
//! let closure = herd_fs::elf::closure(Path::new("/"), Path::new("/usr/bin/python3"))?;
//! for path in &closure.files {
//!     println!("{}", path.display()); // /lib64, /usr/lib64/ld-linux-x86-64.so.2, ...
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # What is resolved
//!
//! * `PT_INTERP` names the dynamic loader; it comes first. Its `DT_SONAME` (or file
//!   name) counts as already loaded, so libc's `DT_NEEDED` on the loader matches it, as
//!   in ld.so.
//! * `/etc/ld.so.cache` comes next if it exists and the executable is dynamic: the
//!   loader reads it.
//! * Then each `DT_NEEDED` entry, breadth-first (the order ld.so loads them), searched
//!   the way glibc's ld.so searches:
//!   1. if the name contains a `/`, it is a path and is not searched (only an absolute
//!      path can be resolved here: a relative one depends on the task's directory);
//!   2. a name already loaded (by its `DT_NEEDED` name or its `DT_SONAME`) is reused;
//!   3. if the requesting object has no `DT_RUNPATH`: the `DT_RPATH` of the requesting
//!      object, then of the object that loaded it, and so on up to the executable
//!      (an object with a `DT_RUNPATH` has its `DT_RPATH` ignored);
//!   4. `LD_LIBRARY_PATH` is **not** used: the helper runs the task with the task's
//!      environment, which the workstation does not see here; a task that sets it
//!      gets its libraries fetched one by one, as before;
//!   5. the requesting object's `DT_RUNPATH`;
//!   6. the directories listed in `/etc/ld.so.conf`, following `include` lines and
//!      their globs (`*`, `?`; a relative pattern is relative to the including file's
//!      directory), as the loader would find them through the cache that `ldconfig`
//!      builds from that file;
//!   7. the default directories of the executable's class and machine, for example
//!      on x86-64 `/lib/x86_64-linux-gnu`, `/usr/lib/x86_64-linux-gnu`, `/lib64`,
//!      `/usr/lib64`, `/lib`, `/usr/lib`.
//! * A candidate is accepted only if it is a shared object (`ET_DYN`) of the
//!   executable's class, byte order and machine; anything else (a text file such as
//!   a linker script, a 32-bit library in a 64-bit search) is skipped and the search
//!   goes on, as ld.so skips incompatible libraries.
//! * In `DT_RPATH`, `DT_RUNPATH` and `DT_NEEDED`, the dynamic string tokens `$ORIGIN`,
//!   `$LIB` and `$PLATFORM` (also `${...}`) are substituted. `$ORIGIN` is the directory
//!   of the executable after following its symlinks, and for a library the directory
//!   it was found in (not following symlinks), as in glibc. `$LIB` is
//!   `lib/<multiarch triplet>` when `/usr/lib/<triplet>` exists under the root
//!   (Debian's layout), else `lib64` for 64-bit and `lib` for 32-bit. `$PLATFORM` is
//!   the machine's usual `AT_PLATFORM` (`x86_64`, `i686`, `aarch64`, ...); a path
//!   element using a token with no known value is dropped, as glibc does.
//!
//! # Paths, symlinks and the root
//!
//! Everything is looked up under `root` (`/` on the workstation, a directory in
//! tests) and reported as an absolute path as seen under it. Symlinks are followed
//! component by component inside the root: an absolute target starts again at the
//! root and `..` stops at it, so resolution never leaves the root. For each file the
//! closure lists what the helper's kernel looks up to open it by the loader's name:
//! every symlink met on the way (a directory symlink such as `/lib -> usr/lib` too,
//! as the path of the link itself) and the final target. None of these paths goes
//! through a link or has a `..` (the view is asked for exactly such paths, and the
//! file service refuses any other), so the path the loader names is listed only when
//! it is one of them. [`closure_in`] looks everything up through a
//! [`Tree`](crate::beneath::Tree), so a hidden or pseudo path is neither read nor
//! listed.
//!
//! # What is not resolved
//!
//! * Libraries opened at run time with `dlopen` (plugins, NSS modules, `gconv`,
//!   Python extension modules): nothing in the headers names them. They keep being
//!   fetched one by one.
//! * `LD_LIBRARY_PATH`, `LD_PRELOAD` and `/etc/ld.so.preload` (the first two are the
//!   task's environment; see above).
//! * The cache's contents: `/etc/ld.so.cache` is shipped but not parsed; its
//!   directories are taken from `/etc/ld.so.conf` instead, so a cache out of date
//!   with its configuration is not mirrored.
//! * `glibc-hwcaps` subdirectories and the legacy hardware-capability directories
//!   (`tls`, `haswell`, ...): which one the loader picks depends on the helper's CPU.
//! * Empty or relative rpath elements (relative to the task's working directory),
//!   the secure-mode (setuid) restrictions on `$ORIGIN`, `DT_AUDIT`/`DT_FILTER`
//!   objects, and `ldconfig`'s trusted directories beyond the defaults above.
//! * The executable itself is not listed: the task has opened it already.
//!
//! A library (or interpreter) that is not found is reported in
//! [`Closure::not_found`]; its own dependencies are then unknown.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use object::elf;
use object::read::ReadCache;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{Endianness, ReadRef};
use rustix::fs::{Mode, OFlags};

use crate::beneath::{Stop, Tree};

/// At most this many paths are returned; the search stops when it is reached.
pub const MAX_FILES: usize = 512;
/// Dependencies deeper than this many levels below the executable are not followed.
pub const MAX_DEPTH: usize = 16;
/// At most this many symlinks are followed while resolving one path (as Linux does).
const MAX_SYMLINKS: usize = 40;
/// `include` lines in `/etc/ld.so.conf` are followed this many levels deep.
const MAX_CONF_DEPTH: usize = 8;
/// At most this many `DT_NEEDED` entries are read from one object.
const MAX_NEEDED: usize = 1024;
/// Longest string read from a dynamic string table.
const MAX_STRING: u64 = 1 << 20;
/// At most this many directories are taken from one rpath or runpath, and from one
/// chain of inherited rpaths: each costs a lookup per library searched.
const MAX_SEARCH_DIRS: usize = 256;

/// The files the dynamic loader opens to start an executable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Absolute paths as seen under the root, without duplicates, in a stable order:
    /// the interpreter, `/etc/ld.so.cache` if present, then the libraries
    /// breadth-first. For each file: each symlink met while resolving it, then its
    /// final target; no path goes through a link or has a `..`.
    pub files: Vec<PathBuf>,
    /// `DT_NEEDED` names that no search directory provided (`ldd`'s "not found"),
    /// in the order they were met, without duplicates; an interpreter that does not
    /// exist under the root is listed here by its path.
    pub not_found: Vec<String>,
}

/// Computes the dynamic-loading closure of `exe`.
///
/// `root` is the filesystem root to resolve in (`/` on the workstation, a temporary
/// directory in tests); `exe` is an absolute path as seen under `root`. A file that is
/// not ELF gives an empty closure; a static executable gives just what applies (an
/// empty closure unless it names an interpreter or libraries). See the
/// [module documentation](self) for the rules.
///
/// # Errors
///
/// An error if `exe` is not an absolute path, cannot be resolved or read under
/// `root`, or is a malformed ELF file. Problems with libraries are not errors: an
/// unreadable or malformed candidate is skipped like an incompatible one.
pub fn closure(root: &Path, exe: &Path) -> io::Result<Closure> {
    closure_with(Fs::Under(root), exe)
}

/// Computes the dynamic-loading closure of `exe` as [`closure`] does, looking every
/// file up through `tree`: each path is walked from the tree's root following no link
/// (the links met are resolved here, one by one, each hop checked), and a hidden or
/// pseudo path is missing. So no hidden file is read, even for its ELF headers, and
/// none is in the closure. What the workstation's file service uses.
///
/// # Errors
///
/// As [`closure`]; a hidden `exe` is not found.
pub fn closure_in(tree: &Tree, exe: &Path) -> io::Result<Closure> {
    closure_with(Fs::Tree(tree), exe)
}

fn closure_with(root: Fs<'_>, exe: &Path) -> io::Result<Closure> {
    if !exe.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("executable path {} is not absolute", exe.display()),
        ));
    }
    let walked = walk(root, exe).map_err(|e| annotate(e, "resolving", exe))?;
    let Some(file) = open_regular(root, &walked.target).map_err(|e| annotate(e, "opening", exe))?
    else {
        // A directory, device or pipe: nothing a loader runs.
        return Ok(Closure::default());
    };
    let obj = match parse(file) {
        Ok(Some(obj)) => obj,
        Ok(None) => return Ok(Closure::default()),
        Err(ParseError::Io(e)) => return Err(annotate(e, "reading", exe)),
        Err(ParseError::Malformed(why)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed ELF file {}: {why}", exe.display()),
            ));
        }
    };
    let origin = parent(&walked.target);
    Ok(Resolver::new(root, obj.kind).run(obj, origin))
}

/// Attaches what was being done, and to which path, to an I/O error.
fn annotate(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// The class, byte order and machine of an ELF file: what must match between an
/// executable and its libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    is_64: bool,
    big_endian: bool,
    machine: elf::Machine,
    /// `e_flags`, kept to tell ARM hard-float from soft-float; not compared.
    flags: u32,
}

/// What the loader needs from one ELF file's headers.
#[derive(Debug, Clone)]
struct Object {
    kind: Kind,
    /// `ET_DYN` for a shared object (or a position-independent executable).
    shared: bool,
    interp: Option<Vec<u8>>,
    needed: Vec<Vec<u8>>,
    soname: Option<Vec<u8>>,
    rpath: Option<Vec<u8>>,
    runpath: Option<Vec<u8>>,
}

/// Why an ELF file's headers could not be read.
#[derive(Debug)]
enum ParseError {
    /// Reading the file failed.
    Io(io::Error),
    /// The file starts like ELF but its headers are inconsistent.
    Malformed(String),
}

/// Parses an ELF file's headers: `Ok(None)` if it is not ELF at all.
fn parse(mut file: File) -> Result<Option<Object>, ParseError> {
    let mut ident = [0u8; 6];
    match file.read_exact(&mut ident) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ParseError::Io(e)),
    }
    if ident[..4] != elf::ELFMAG {
        return Ok(None);
    }
    let cache = ReadCache::new(file);
    match elf::FileClass(ident[4]) {
        elf::ELFCLASS32 => parse_as::<elf::FileHeader32<Endianness>>(&cache),
        elf::ELFCLASS64 => parse_as::<elf::FileHeader64<Endianness>>(&cache),
        class => Err(format!("unknown ELF class {}", class.0)),
    }
    .map(Some)
    .map_err(ParseError::Malformed)
}

fn parse_as<'data, H: FileHeader<Endian = Endianness>>(
    data: impl ReadRef<'data>,
) -> Result<Object, String> {
    let header = H::parse(data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let kind = Kind {
        is_64: header.is_class_64(),
        big_endian: endian == Endianness::Big,
        machine: header.e_machine(endian),
        flags: header.e_flags(endian).0,
    };
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| e.to_string())?;
    let mut interp = None;
    let mut dynamic = None;
    for ph in phdrs {
        if let Some(i) = ph.interpreter(endian, data).map_err(|e| e.to_string())? {
            interp.get_or_insert_with(|| i.to_vec());
        }
        if let Some(d) = ph.dynamic(endian, data).map_err(|e| e.to_string())? {
            dynamic.get_or_insert(d);
        }
    }
    let mut obj = Object {
        kind,
        shared: header.e_type(endian) == elf::ET_DYN,
        interp,
        needed: Vec::new(),
        soname: None,
        rpath: None,
        runpath: None,
    };
    let Some(dynamic) = dynamic else {
        return Ok(obj);
    };

    // String values are offsets into DT_STRTAB, which is a virtual address: map it to
    // a file offset through the PT_LOAD segment that contains it.
    let mut strtab = None;
    let mut strsz = None;
    for d in dynamic {
        let tag = d.d_tag(endian);
        if tag == elf::DT_NULL {
            break;
        }
        let val: u64 = d.d_val(endian).into();
        if tag == elf::DT_STRTAB {
            strtab = Some(val);
        } else if tag == elf::DT_STRSZ {
            strsz = Some(val);
        }
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err("dynamic section without DT_STRTAB or DT_STRSZ".into());
    };
    let strtab_offset = phdrs
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .find_map(|ph| {
            let vaddr: u64 = ph.p_vaddr(endian).into();
            let filesz: u64 = ph.p_filesz(endian).into();
            let offset: u64 = ph.p_offset(endian).into();
            let delta = strtab.checked_sub(vaddr)?;
            (delta < filesz).then(|| offset.checked_add(delta))?
        })
        .ok_or("DT_STRTAB is outside every loaded segment")?;
    let string = |offset: u64| -> Result<Vec<u8>, String> {
        if offset >= strsz {
            return Err(format!("string offset {offset} beyond DT_STRSZ {strsz}"));
        }
        let start = strtab_offset
            .checked_add(offset)
            .ok_or("string offset overflows")?;
        let end = strtab_offset
            .checked_add(strsz)
            .ok_or("string table overflows")?;
        read_string(data, start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("string at offset {offset} is not terminated"))
    };
    for d in dynamic {
        let tag = d.d_tag(endian);
        if tag == elf::DT_NULL {
            break;
        }
        let val: u64 = d.d_val(endian).into();
        if tag == elf::DT_NEEDED {
            if obj.needed.len() < MAX_NEEDED {
                obj.needed.push(string(val)?);
            }
        } else if tag == elf::DT_SONAME {
            obj.soname = Some(string(val)?);
        } else if tag == elf::DT_RPATH {
            obj.rpath = Some(string(val)?);
        } else if tag == elf::DT_RUNPATH {
            obj.runpath = Some(string(val)?);
        }
    }
    Ok(obj)
}

/// The NUL-terminated string at `range.start`, read in growing chunks so that a long
/// rpath (package managers write kilobytes of them) does not cost the whole table.
fn read_string<'data>(data: impl ReadRef<'data>, range: Range<u64>) -> Option<&'data [u8]> {
    let available = range.end.checked_sub(range.start)?;
    let mut chunk = 4096;
    loop {
        let len = chunk.min(available).min(MAX_STRING);
        let bytes = data.read_bytes_at(range.start, len).ok()?;
        if let Some(end) = bytes.iter().position(|&b| b == 0) {
            return Some(&bytes[..end]);
        }
        if len == available || len == MAX_STRING {
            return None;
        }
        chunk *= 16;
    }
}

/// A path resolved under the root.
#[derive(Debug)]
struct Walked {
    /// Each symlink met, as the path of the link itself.
    links: Vec<PathBuf>,
    /// The final path, with no symlink in it.
    target: PathBuf,
}

/// Where the closure's files are looked up.
#[derive(Clone, Copy)]
enum Fs<'a> {
    /// Plain paths under a root directory.
    Under(&'a Path),
    /// Through a walker that follows no link and refuses hidden and pseudo paths
    /// (every path asked of it is resolved already: no link on the way).
    Tree(&'a Tree),
}

fn stopped(s: Stop) -> io::Error {
    io::Error::from_raw_os_error(s.errno())
}

impl Fs<'_> {
    /// Whether `path` (resolved but for its last component) is a symlink.
    fn is_link(self, path: &Path) -> io::Result<bool> {
        match self {
            Fs::Under(root) => Ok(std::fs::symlink_metadata(under(root, path))?.is_symlink()),
            Fs::Tree(t) => Ok(crate::beneath::is_link(&t.lstat(path).map_err(stopped)?)),
        }
    }

    /// The target of symlink `path`.
    fn read_link(self, path: &Path) -> io::Result<PathBuf> {
        match self {
            Fs::Under(root) => std::fs::read_link(under(root, path)),
            Fs::Tree(t) => {
                let (dir, name, _) = t.entry(path).map_err(stopped)?;
                let name = name.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
                let target = rustix::fs::readlinkat(&dir.fd, name, Vec::new())?;
                Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
            }
        }
    }

    /// Names in directory `path` (resolved).
    fn names(self, path: &Path) -> io::Result<Vec<OsString>> {
        match self {
            Fs::Under(root) => Ok(std::fs::read_dir(under(root, path))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect()),
            Fs::Tree(t) => {
                let dir = t.dir(path).map_err(stopped)?;
                let fd = rustix::fs::openat(
                    &dir.fd,
                    c".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let hidden: Vec<&OsStr> = t.hidden().names_in(path).collect();
                Ok(rustix::fs::Dir::read_from(&fd)?
                    .filter_map(|e| e.ok())
                    .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
                    .filter(|n| n != "." && n != ".." && !hidden.contains(&n.as_os_str()))
                    .collect())
            }
        }
    }
}

/// Opens a resolved path if it is a regular file; `None` for anything else, which is
/// checked before opening (and opened `O_NONBLOCK`, not following a link, then checked
/// again) so that a pipe cannot block and a device is not opened.
fn open_regular(root: Fs<'_>, resolved: &Path) -> io::Result<Option<File>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let (fd, checked) = match root {
        Fs::Under(root) => {
            let path = under(root, resolved);
            let st = rustix::fs::lstat(&path)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Ok(None);
            }
            (
                rustix::fs::open(&path, flags | OFlags::CLOEXEC, Mode::empty())?,
                st,
            )
        }
        Fs::Tree(t) => {
            let (dir, name, st) = t.entry(resolved).map_err(stopped)?;
            let Some(name) = name else {
                return Ok(None);
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Ok(None);
            }
            let fd = rustix::fs::openat(&dir.fd, name, flags | OFlags::CLOEXEC, Mode::empty())?;
            (fd, st)
        }
    };
    let now = rustix::fs::fstat(&fd)?;
    let same = now.st_mode & libc::S_IFMT == libc::S_IFREG
        && (now.st_dev, now.st_ino) == (checked.st_dev, checked.st_ino);
    Ok(same.then(|| File::from(fd)))
}

/// The whole of a small resolved regular file (a configuration file).
fn read_small(root: Fs<'_>, resolved: &Path) -> io::Result<Vec<u8>> {
    let Some(file) = open_regular(root, resolved)? else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut out = Vec::new();
    file.take(MAX_STRING).read_to_end(&mut out)?;
    Ok(out)
}

/// `path` (absolute, as seen under `root`) as a path on this machine.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The directory holding `path`, `/` for `/`.
fn parent(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// Resolves an absolute `path` under `root`, following every symlink inside the root:
/// an absolute target starts again at the root, and `..` stops at the root.
fn walk(root: Fs<'_>, path: &Path) -> io::Result<Walked> {
    let mut pending: VecDeque<OsString> = components(path);
    let mut current = PathBuf::from("/");
    let mut links = Vec::new();
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&name);
        if !root.is_link(&candidate)? {
            current = candidate;
            continue;
        }
        if links.len() >= MAX_SYMLINKS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("too many symlinks at {}", candidate.display()),
            ));
        }
        let target = root.read_link(&candidate)?;
        if target.as_os_str().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("empty symlink {}", candidate.display()),
            ));
        }
        links.push(candidate);
        if target.is_absolute() {
            current = PathBuf::from("/");
        }
        for c in components(&target).into_iter().rev() {
            pending.push_front(c);
        }
    }
    Ok(Walked {
        links,
        target: current,
    })
}

/// The normal and `..` components of a path (`.` and the root dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// A library found on disk.
#[derive(Debug)]
struct Found {
    /// Every path to report for it: the symlinks met looking it up, its target.
    paths: Vec<PathBuf>,
    /// Its final path.
    target: PathBuf,
    /// `$ORIGIN` for it: the directory it was found in.
    origin: PathBuf,
    obj: Object,
}

/// One loaded object waiting for its dependencies to be resolved.
#[derive(Debug)]
struct Queued {
    obj: Object,
    origin: PathBuf,
    depth: usize,
    /// The `DT_RPATH` directories of this object and its loaders, nearest first
    /// (only of those without `DT_RUNPATH`).
    rpath_chain: Vec<PathBuf>,
}

struct Resolver<'a> {
    root: Fs<'a>,
    kind: Kind,
    out: Closure,
    seen_files: HashSet<PathBuf>,
    /// Names (`DT_NEEDED` as written, and sonames) of objects already loaded.
    loaded: HashSet<Vec<u8>>,
    /// Final paths of the objects loaded, the interpreter included.
    loaded_files: HashSet<PathBuf>,
    /// Parsed candidates by final path; `None` if not a compatible ELF file.
    candidates: HashMap<PathBuf, Option<Object>>,
    /// `/etc/ld.so.conf` directories then the defaults, computed once.
    system_dirs: Option<Vec<PathBuf>>,
}

impl<'a> Resolver<'a> {
    fn new(root: Fs<'a>, kind: Kind) -> Self {
        Resolver {
            root,
            kind,
            out: Closure::default(),
            seen_files: HashSet::new(),
            loaded: HashSet::new(),
            loaded_files: HashSet::new(),
            candidates: HashMap::new(),
            system_dirs: None,
        }
    }

    fn run(mut self, exe: Object, origin: PathBuf) -> Closure {
        if let Some(soname) = &exe.soname {
            self.loaded.insert(soname.clone());
        }
        let dynamic = exe.interp.is_some() || !exe.needed.is_empty();
        if let Some(interp) = &exe.interp {
            self.load_interpreter(interp);
        }
        if dynamic {
            let cache = Path::new("/etc/ld.so.cache");
            if let Ok(walked) = walk(self.root, cache) {
                self.add_walked(&walked);
            }
        }

        let rpath_chain = self.rpath_dirs(&exe, &origin);
        let mut queue = VecDeque::from([Queued {
            obj: exe,
            origin,
            depth: 0,
            rpath_chain,
        }]);
        while let Some(item) = queue.pop_front() {
            if item.depth >= MAX_DEPTH {
                continue;
            }
            for name in &item.obj.needed {
                if self.out.files.len() >= MAX_FILES {
                    return self.out;
                }
                if name.is_empty() || self.loaded.contains(name) {
                    continue;
                }
                let Some(found) = self.find(&item, name) else {
                    let name = String::from_utf8_lossy(name).into_owned();
                    if self.out.not_found.len() < MAX_FILES && !self.out.not_found.contains(&name) {
                        self.out.not_found.push(name);
                    }
                    continue;
                };
                self.loaded.insert(name.clone());
                if let Some(soname) = &found.obj.soname {
                    self.loaded.insert(soname.clone());
                }
                for p in &found.paths {
                    self.add(p);
                }
                // Another name for a file already loaded: ld.so maps it once.
                if !self.loaded_files.insert(found.target.clone()) {
                    continue;
                }
                let own = self.rpath_dirs(&found.obj, &found.origin);
                let rpath_chain = own
                    .into_iter()
                    .chain(item.rpath_chain.iter().cloned())
                    .take(MAX_SEARCH_DIRS)
                    .collect();
                queue.push_back(Queued {
                    obj: found.obj,
                    origin: found.origin,
                    depth: item.depth + 1,
                    rpath_chain,
                });
            }
        }
        self.out
    }

    /// Lists the interpreter and counts it as loaded under its soname (or file name).
    fn load_interpreter(&mut self, interp: &[u8]) {
        let path = PathBuf::from(OsStr::from_bytes(interp));
        // A relative interpreter would be opened relative to the task's directory.
        let walked = match path.is_absolute().then(|| walk(self.root, &path)) {
            Some(Ok(walked)) => walked,
            _ => {
                self.out.not_found.push(path.to_string_lossy().into_owned());
                return;
            }
        };
        self.add_walked(&walked);
        let obj = open_regular(self.root, &walked.target)
            .ok()
            .flatten()
            .and_then(|f| parse(f).ok().flatten());
        let name = match obj.and_then(|o| o.soname) {
            Some(soname) => soname,
            None => path.file_name().unwrap_or_default().as_bytes().to_vec(),
        };
        self.loaded.insert(name);
        self.loaded_files.insert(walked.target);
    }

    fn add(&mut self, path: &Path) {
        if self.out.files.len() < MAX_FILES && self.seen_files.insert(path.to_path_buf()) {
            self.out.files.push(path.to_path_buf());
        }
    }

    /// Lists what the kernel looks up to open `path`: each link met and the target
    /// (`path` itself only as one of those: a path through a link, or with `..`, is
    /// not what a view is asked).
    fn add_walked(&mut self, walked: &Walked) {
        for link in &walked.links {
            self.add(link);
        }
        self.add(&walked.target);
    }

    /// An object's own `DT_RPATH` directories; none if it has a `DT_RUNPATH`.
    fn rpath_dirs(&self, obj: &Object, origin: &Path) -> Vec<PathBuf> {
        match (&obj.rpath, &obj.runpath) {
            (Some(rpath), None) => self.path_list(rpath, origin),
            _ => Vec::new(),
        }
    }

    /// Splits a colon-separated search path and substitutes its tokens, dropping the
    /// elements that cannot be used here.
    fn path_list(&self, list: &[u8], origin: &Path) -> Vec<PathBuf> {
        list.split(|&b| b == b':')
            .filter_map(|element| self.expand(element, origin))
            .filter(|p| p.is_absolute())
            .take(MAX_SEARCH_DIRS)
            .collect()
    }

    /// Substitutes `$ORIGIN`, `$LIB` and `$PLATFORM` (or `${...}`) in one string;
    /// `None` if it uses a token with no known value.
    fn expand(&self, s: &[u8], origin: &Path) -> Option<PathBuf> {
        let mut out = Vec::with_capacity(s.len());
        let mut rest = s;
        while let Some(pos) = rest.iter().position(|&b| b == b'$') {
            out.extend_from_slice(&rest[..pos]);
            let after = &rest[pos + 1..];
            let (name, len) = match after.strip_prefix(b"{") {
                Some(braced) => match braced.iter().position(|&b| b == b'}') {
                    Some(end) => (&braced[..end], end + 2),
                    None => (&b""[..], 0),
                },
                None => {
                    let end = after.iter().position(|&b| b == b'/').unwrap_or(after.len());
                    (&after[..end], end)
                }
            };
            let value = match name {
                b"ORIGIN" => Some(origin.as_os_str().as_bytes().to_vec()),
                b"LIB" => Some(self.lib_token().into_bytes()),
                b"PLATFORM" => Some(platform(self.kind)?.as_bytes().to_vec()),
                _ => None,
            };
            match value {
                Some(v) => {
                    out.extend_from_slice(&v);
                    rest = &after[len..];
                }
                None => {
                    out.push(b'$');
                    rest = after;
                }
            }
        }
        out.extend_from_slice(rest);
        (!out.is_empty()).then(|| PathBuf::from(OsString::from_vec(out)))
    }

    /// What `$LIB` stands for.
    fn lib_token(&self) -> String {
        if let Some(triplet) = triplet(self.kind) {
            let multiarch = PathBuf::from("/usr/lib").join(triplet);
            if walk(self.root, &multiarch).is_ok() {
                return format!("lib/{triplet}");
            }
        }
        if self.kind.is_64 { "lib64" } else { "lib" }.to_string()
    }

    /// Finds the library `name` needed by `item`, following ld.so's search order.
    fn find(&mut self, item: &Queued, name: &[u8]) -> Option<Found> {
        if name.contains(&b'/') {
            let path = self.expand(name, &item.origin)?;
            return if path.is_absolute() {
                self.try_candidate(&path)
            } else {
                None
            };
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        match &item.obj.runpath {
            None => dirs.extend(item.rpath_chain.iter().cloned()),
            Some(runpath) => dirs.extend(self.path_list(runpath, &item.origin)),
        }
        dirs.extend(self.system_dirs().iter().cloned());
        let file = OsStr::from_bytes(name);
        dirs.iter()
            .find_map(|dir| self.try_candidate(&dir.join(file)))
    }

    /// The candidate at `path` if it exists and is an ELF file compatible with the
    /// executable.
    fn try_candidate(&mut self, path: &Path) -> Option<Found> {
        let walked = walk(self.root, path).ok()?;
        let obj = match self.candidates.get(&walked.target) {
            Some(cached) => cached.clone(),
            None => {
                let parsed = open_regular(self.root, &walked.target)
                    .ok()
                    .flatten()
                    .and_then(|f| parse(f).ok().flatten())
                    .filter(|o| o.shared && compatible(self.kind, o.kind));
                self.candidates
                    .insert(walked.target.clone(), parsed.clone());
                parsed
            }
        }?;
        let mut paths = walked.links;
        paths.push(walked.target.clone());
        Some(Found {
            paths,
            target: walked.target,
            origin: parent(path),
            obj,
        })
    }

    /// The directories from `/etc/ld.so.conf`, then the defaults.
    fn system_dirs(&mut self) -> &[PathBuf] {
        if self.system_dirs.is_none() {
            let mut dirs = Vec::new();
            read_conf(self.root, Path::new("/etc/ld.so.conf"), 0, &mut dirs);
            dirs.extend(default_dirs(self.kind));
            let mut seen = HashSet::new();
            dirs.retain(|d| seen.insert(d.clone()));
            self.system_dirs = Some(dirs);
        }
        self.system_dirs.as_deref().unwrap_or_default()
    }
}

/// Whether a library of kind `lib` can be loaded into an executable of kind `exe`.
fn compatible(exe: Kind, lib: Kind) -> bool {
    exe.is_64 == lib.is_64 && exe.big_endian == lib.big_endian && exe.machine == lib.machine
}

/// The Debian multiarch triplet of a kind, if known.
fn triplet(kind: Kind) -> Option<&'static str> {
    Some(match (kind.machine, kind.is_64) {
        (elf::EM_X86_64, true) => "x86_64-linux-gnu",
        (elf::EM_X86_64, false) => "x86_64-linux-gnux32",
        (elf::EM_386, false) => "i386-linux-gnu",
        (elf::EM_AARCH64, true) => "aarch64-linux-gnu",
        (elf::EM_ARM, false) if kind.flags & elf::EF_ARM_ABI_FLOAT_HARD != 0 => {
            "arm-linux-gnueabihf"
        }
        (elf::EM_ARM, false) => "arm-linux-gnueabi",
        (elf::EM_RISCV, true) => "riscv64-linux-gnu",
        (elf::EM_PPC64, true) if !kind.big_endian => "powerpc64le-linux-gnu",
        (elf::EM_PPC64, true) => "powerpc64-linux-gnu",
        (elf::EM_S390, true) => "s390x-linux-gnu",
        _ => return None,
    })
}

/// The usual `AT_PLATFORM` of a kind, if known.
fn platform(kind: Kind) -> Option<&'static str> {
    Some(match (kind.machine, kind.is_64) {
        (elf::EM_X86_64, _) => "x86_64",
        (elf::EM_386, false) => "i686",
        (elf::EM_AARCH64, true) => "aarch64",
        (elf::EM_RISCV, true) => "riscv64",
        (elf::EM_PPC64, true) if !kind.big_endian => "ppc64le",
        (elf::EM_S390, true) => "s390x",
        _ => return None,
    })
}

/// The loader's built-in directories for a kind: the multiarch pair, then the
/// class's (`lib64`, `lib32`, `libx32`), then `/lib` and `/usr/lib`.
fn default_dirs(kind: Kind) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(triplet) = triplet(kind) {
        dirs.push(PathBuf::from("/lib").join(triplet));
        dirs.push(PathBuf::from("/usr/lib").join(triplet));
    }
    let class_dir = match (kind.machine, kind.is_64) {
        (_, true) => Some("lib64"),
        (elf::EM_X86_64, false) => Some("libx32"),
        (elf::EM_386, false) => Some("lib32"),
        _ => None,
    };
    if let Some(d) = class_dir {
        dirs.push(PathBuf::from("/").join(d));
        dirs.push(PathBuf::from("/usr").join(d));
    }
    dirs.push(PathBuf::from("/lib"));
    dirs.push(PathBuf::from("/usr/lib"));
    dirs
}

/// Appends the directories named by an `ld.so.conf` file (as seen under `root`),
/// following its `include` lines. A missing or unreadable file adds nothing.
fn read_conf(root: Fs<'_>, conf: &Path, depth: usize, dirs: &mut Vec<PathBuf>) {
    if depth > MAX_CONF_DEPTH {
        return;
    }
    let Ok(walked) = walk(root, conf) else {
        return;
    };
    let Ok(text) = read_small(root, &walked.target) else {
        return;
    };
    let conf_dir = parent(conf);
    for line in text.split(|&b| b == b'\n') {
        let line = line.split(|&b| b == b'#').next().unwrap_or_default();
        let line = line.trim_ascii();
        if let Some(rest) = line.strip_prefix(b"include")
            && rest.first().is_some_and(u8::is_ascii_whitespace)
        {
            for pattern in rest
                .split(u8::is_ascii_whitespace)
                .filter(|p| !p.is_empty())
            {
                let pattern = conf_dir.join(OsStr::from_bytes(pattern));
                for file in glob(root, &pattern) {
                    read_conf(root, &file, depth + 1, dirs);
                }
            }
        } else if line.starts_with(b"hwcap") && line.get(5).is_some_and(u8::is_ascii_whitespace) {
            // Old glibc's hardware-capability lines: not a directory.
        } else if line.starts_with(b"/") {
            // `dir=TYPE` names the libraries' type; the directory is before it.
            let dir = line.split(|&b| b == b'=').next().unwrap_or_default();
            dirs.push(PathBuf::from(OsStr::from_bytes(dir.trim_ascii_end())));
        }
    }
}

/// The paths matching an absolute glob pattern (`*` and `?` in any component) under
/// `root`, in sorted order per directory, as `glob(3)` returns them.
fn glob(root: Fs<'_>, pattern: &Path) -> Vec<PathBuf> {
    let mut matches = vec![PathBuf::from("/")];
    for component in components(pattern) {
        let wild = component
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b'*' | b'?'));
        let mut next = Vec::new();
        for prefix in matches {
            if !wild {
                next.push(prefix.join(&component));
                continue;
            }
            let Ok(walked) = walk(root, &prefix) else {
                continue;
            };
            let Ok(entries) = root.names(&walked.target) else {
                continue;
            };
            let mut names: Vec<OsString> = entries
                .into_iter()
                .filter(|n| {
                    let n = n.as_bytes();
                    (!n.starts_with(b".") || component.as_bytes().starts_with(b"."))
                        && wildcard(component.as_bytes(), n)
                })
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| prefix.join(n)));
        }
        matches = next;
        if matches.len() > MAX_FILES {
            matches.truncate(MAX_FILES);
        }
    }
    matches
}

/// Whether `name` matches `pattern`, where `*` matches any run of bytes and `?` any
/// one byte.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative matching with backtracking to the last star: linear in practice.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_like_glob() {
        assert!(wildcard(b"*.conf", b"libc.conf"));
        assert!(wildcard(b"*", b"x"));
        assert!(wildcard(b"a?c*", b"abcdef"));
        assert!(!wildcard(b"*.conf", b"libc.conf.bak"));
        assert!(!wildcard(b"?", b""));
        assert!(wildcard(b"*a*b", b"xaxxb"));
    }

    #[test]
    fn tokens_are_substituted() {
        let kind = Kind {
            is_64: true,
            big_endian: false,
            machine: elf::EM_X86_64,
            flags: 0,
        };
        let r = Resolver::new(Fs::Under(Path::new("/nonexistent-root")), kind);
        let origin = Path::new("/opt/app/bin");
        assert_eq!(
            r.expand(b"$ORIGIN/../lib", origin),
            Some(PathBuf::from("/opt/app/bin/../lib"))
        );
        assert_eq!(
            r.expand(b"${ORIGIN}/x:$PLATFORM", origin),
            Some(PathBuf::from("/opt/app/bin/x:x86_64"))
        );
        assert_eq!(
            r.expand(b"/usr/$LIB", origin),
            Some(PathBuf::from("/usr/lib64"))
        );
        assert_eq!(
            r.expand(b"/a/$ORIGINAL/b", origin),
            Some(PathBuf::from("/a/$ORIGINAL/b"))
        );
    }
}
