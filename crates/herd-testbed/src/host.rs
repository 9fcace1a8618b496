//! Hosts: what a test asks for ([`HostSpec`]) and what it gets ([`Host`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cgroup::{self, CgDir, CgroupVersion};
use crate::spawn::{HostCommand, Placement};
use crate::{Error, cmd};

/// What a host's processes see as `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKind {
    /// Uses the machine's real filesystem (the "workstation").
    RealFs,
    /// Its own root directory holding only the given binary (copied to `/herd` and
    /// `/usr/local/bin/herd`) plus the shared libraries it links to (found via the ELF
    /// interpreter / `ldd`), plus empty mount points `/proc /dev /sys /tmp /etc` (with
    /// minimal `/etc/passwd`, `/etc/group`, `/etc/hosts` listing the testbed hosts,
    /// `/etc/nsswitch.conf`) and a state dir ([`MINIMAL_STATE_DIR`](crate::MINIMAL_STATE_DIR)).
    Minimal {
        /// The binary to install as `/herd`.
        binary: PathBuf,
    },
}

/// The description of a host to add with [`Testbed::add_host`](crate::Testbed::add_host).
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// The host's name: its hostname, its name in the testbed's `/etc/hosts`, and part of
    /// its netns and cgroup names. Lowercase ASCII letters, digits and `-`, at most 40
    /// characters, starting with a letter or digit; unique within the testbed.
    pub name: String,
    /// What the host's processes see as `/`.
    pub root: RootKind,
    /// CPU quota in CPUs (e.g. `0.5` = half a CPU), enforced with CFS bandwidth control.
    pub cpu_quota: Option<f64>,
    /// Bandwidth of the host's link in Mbit/s, each direction (tc tbf on both ends).
    pub bandwidth_mbit: Option<u32>,
    /// Memory limit in bytes (swap is not allowed past it where the kernel lets us say so).
    pub memory_limit: Option<u64>,
    /// A minimal host's root is a plain directory, not a mount point of its own (as on a
    /// NAS that runs Debian in a chroot); by default it is bind-mounted onto itself, as
    /// a container's root is.
    pub plain_chroot: bool,
}

impl HostSpec {
    /// A host that sees the machine's real filesystem, with no limits.
    pub fn real_fs(name: impl Into<String>) -> Self {
        HostSpec {
            name: name.into(),
            root: RootKind::RealFs,
            cpu_quota: None,
            bandwidth_mbit: None,
            memory_limit: None,
            plain_chroot: false,
        }
    }

    /// A host whose root holds only `binary` (as `/herd`) and what it needs to run.
    pub fn minimal(name: impl Into<String>, binary: impl Into<PathBuf>) -> Self {
        HostSpec {
            root: RootKind::Minimal {
                binary: binary.into(),
            },
            ..HostSpec::real_fs(name)
        }
    }

    /// Makes a minimal host's root a plain chroot directory (see [`HostSpec::plain_chroot`]).
    pub fn plain_chroot(mut self) -> Self {
        self.plain_chroot = true;
        self
    }

    /// Sets the CPU quota, in CPUs.
    pub fn cpu_quota(mut self, cpus: f64) -> Self {
        self.cpu_quota = Some(cpus);
        self
    }

    /// Sets the link bandwidth, in Mbit/s.
    pub fn bandwidth_mbit(mut self, mbit: u32) -> Self {
        self.bandwidth_mbit = Some(mbit);
        self
    }

    /// Sets the memory limit, in bytes.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let name = &self.name;
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if name.is_empty() || name.len() > 40 || !ok_chars || name.starts_with('-') {
            return Err(Error::InvalidSpec(format!(
                "host name {name:?}: use 1 to 40 lowercase letters, digits and '-', not starting with '-'"
            )));
        }
        if let Some(cpus) = self.cpu_quota
            && !(cpus.is_finite() && cpus >= 0.01)
        {
            return Err(Error::InvalidSpec(format!(
                "host {name}: cpu_quota {cpus} must be at least 0.01 CPUs"
            )));
        }
        if self.bandwidth_mbit == Some(0) {
            return Err(Error::InvalidSpec(format!(
                "host {name}: bandwidth_mbit must be positive (use partition() to cut a host off)"
            )));
        }
        if let Some(bytes) = self.memory_limit
            && bytes < 1 << 20
        {
            return Err(Error::InvalidSpec(format!(
                "host {name}: memory_limit {bytes} is below 1 MiB"
            )));
        }
        Ok(())
    }
}

/// One host of a [`Testbed`](crate::Testbed): a network namespace on the testbed's
/// bridge, a cgroup per hierarchy, and for minimal hosts a root directory.
#[derive(Debug)]
pub struct Host {
    pub(crate) spec: HostSpec,
    pub(crate) index: usize,
    pub(crate) addr: Ipv4Addr,
    pub(crate) netns: String,
    pub(crate) bridge_ns: String,
    pub(crate) bridge_port: String,
    pub(crate) root_dir: Option<PathBuf>,
    pub(crate) state_dir: PathBuf,
    pub(crate) log_dir: PathBuf,
    pub(crate) cgroups: Vec<CgDir>,
    pub(crate) cgroup_paths: Vec<PathBuf>,
    pub(crate) cpu_cgroup: usize,
    pub(crate) placement: Arc<Placement>,
}

/// How long [`Host::kill_all`] waits for the host's processes to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

impl Host {
    /// The host's name (also its hostname).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The spec the host was made from.
    pub fn spec(&self) -> &HostSpec {
        &self.spec
    }

    /// The host's position in the testbed (0 for the first host added).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host's address on the testbed subnet.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host's root directory on the machine; `None` for [`RootKind::RealFs`].
    pub fn root_dir(&self) -> Option<&Path> {
        self.root_dir.as_deref()
    }

    /// The host's state directory as its processes see it: `/var/lib/herd` on a minimal
    /// host, a fresh directory on the machine for a real-fs host.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Where `path`, as seen by the host's processes, is on the machine.
    pub fn machine_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        match &self.root_dir {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_owned(),
        }
    }

    /// The directory holding the logs of the host's commands.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The cgroup that stands for this host (for `herd agent --host-cgroup`): the group
    /// carrying the cpu controller, i.e. the v1 cpu group or the v2 group.
    pub fn cgroup_dir(&self) -> &Path {
        &self.cgroup_paths[self.cpu_cgroup]
    }

    /// The interface version of [`cgroup_dir`](Host::cgroup_dir).
    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroups[self.cpu_cgroup].version
    }

    /// Every group the host's processes are placed in, one per hierarchy used (on a v1 or
    /// hybrid machine: cpu, memory, pids, freezer and the unified v2 group).
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroup_paths
    }

    /// The pids currently in the host's cgroup (see [`cgroup_dir`](Host::cgroup_dir)).
    pub fn pids(&self) -> Vec<u32> {
        cgroup::procs(self.cgroup_dir())
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .collect()
    }

    /// Start a process "on" the host: in its cgroups (so its CPU quota confines it and
    /// everything it spawns), its network namespace, its mount namespace (mounts made by
    /// the host's processes are seen by all of them and by nobody else, never by the
    /// machine), with the host's name as hostname, and for minimal hosts chrooted into
    /// the host's root, where `/proc` is mounted fresh and `/dev` and `/sys` are bound
    /// (so cgroups are visible). See [`HostCommand`] for defaults (environment, stdio,
    /// log file).
    pub fn command(&self, program: &str, args: &[&str]) -> HostCommand {
        HostCommand::new(Arc::clone(&self.placement), program, args)
    }

    /// SIGKILLs every process of the host (everything in its cgroups, including forked
    /// descendants) and waits until they are gone.
    pub fn kill_all(&self) -> Result<(), Error> {
        cgroup::kill_all(&self.cgroups, KILL_TIMEOUT)
    }

    /// Cuts the host off from all other hosts by setting its bridge-side link down.
    /// Established connections stall (nothing is reset) until [`heal`](Host::heal).
    pub fn partition(&self) -> Result<(), Error> {
        cmd::ip_in(&self.bridge_ns, &["link", "set", &self.bridge_port, "down"]).map(drop)
    }

    /// Undoes [`partition`](Host::partition).
    pub fn heal(&self) -> Result<(), Error> {
        cmd::ip_in(&self.bridge_ns, &["link", "set", &self.bridge_port, "up"]).map(drop)
    }

    /// Whether the host is currently partitioned (its bridge-side link is down).
    pub fn is_partitioned(&self) -> Result<bool, Error> {
        let text = cmd::ip_in(&self.bridge_ns, &["-o", "link", "show", &self.bridge_port])?;
        let flags = text
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(flags, _)| flags.to_owned())
            .unwrap_or_default();
        Ok(!flags.split(',').any(|f| f == "UP"))
    }

    /// Path of the host's mount namespace file (`/run/herd-testbed/<id>/<host>.mnt`),
    /// for `nsenter --mount=PATH`.
    pub fn mntns_path(&self) -> PathBuf {
        self.placement.mntns_path.clone()
    }

    /// The name of the host's network namespace (for `ip -n NAME`).
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// Path of the netns (`/run/netns/NAME`), useful for `nsenter --net=PATH`.
    pub fn netns_path(&self) -> PathBuf {
        self.placement.netns_path.clone()
    }
}
