//! A real multi-host testbed on one Linux machine, for herd's end-to-end tests and
//! benchmarks.
//!
//! A [`Testbed`] is a little LAN: an Ethernet bridge in a network namespace of its own,
//! and hosts ([`Host`]) plugged into it. Every host is
//!
//! * a **network namespace** with one interface, `eth0`, on a private subnet
//!   (`10.213.0.0/24` by default: the first host is `.1`, the next `.2`, ...), linked by a
//!   veth pair to the bridge. There is no route anywhere else: test traffic cannot leave
//!   the testbed, and nothing is created in the machine's own network namespace;
//! * a **cgroup** in every hierarchy the testbed uses (cgroup v1, v2 and hybrid layouts
//!   are detected), holding all its processes and their descendants, with an optional
//!   CPU quota ([`HostSpec::cpu_quota`]) and memory limit;
//! * optionally a **link bandwidth** (tc tbf, both directions). Latency is not emulated;
//! * a **mount namespace**, joined by all its processes: what a host mounts (herd's FUSE
//!   view, say) is seen on that host only, never on the machine or other hosts, while the
//!   host still sees the machine's mounts;
//! * a **root**: the machine's real file system ([`RootKind::RealFs`], "the
//!   workstation"), or a directory holding only one binary and its shared libraries
//!   ([`RootKind::Minimal`], "a helper with nothing installed but herd").
//!
//! Processes are started on a host with [`Host::command`], a builder much like
//! [`std::process::Command`]. A host can be killed ([`Host::kill_all`]) and cut off from
//! the others ([`Host::partition`], [`Host::heal`]).
//!
//! Dropping the testbed kills every host process and removes every namespace, veth,
//! cgroup, mount and root directory, also when a test panics. What a killed test process
//! leaves behind is removed by [`cleanup_stale`], which [`Testbed::new`] calls.
//!
//! # Example
//!
//! ```no_run
//! use herd_testbed::{HostSpec, Testbed};
//!
//! # fn main() -> Result<(), herd_testbed::Error> {
//! // The binary under test; here the probe tool built from this crate, which
//! // understands `listen PORT` and `connect ADDR:PORT`.
//! let probe = "target/debug/herd-testbed-probe";
//!
//! let mut bed = Testbed::new()?; // fails (never skips) unless run as root
//! bed.add_host(HostSpec::real_fs("ws"))?;
//! bed.add_host(
//!     HostSpec::minimal("helper", probe)
//!         .cpu_quota(0.5)
//!         .bandwidth_mbit(100),
//! )?;
//!
//! // The helper's root holds only the binary (as /herd and /usr/local/bin/herd) and its
//! // shared libraries; its output goes to a log file under `bed.log_dir()`.
//! let helper = bed.host("helper");
//! let mut server = helper.command("herd", &["listen", "7000"]).spawn()?;
//!
//! // The workstation sees the real file system; it reaches the helper by address (minimal
//! // hosts also resolve every testbed host by name through their /etc/hosts).
//! let target = format!("{}:7000", helper.addr());
//! let out = bed.host("ws").command(probe, &["connect", &target]).output()?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//!
//! helper.partition()?; // now unreachable
//! helper.heal()?;
//! helper.kill_all()?; // SIGKILLs the server and anything it forked
//! let _ = server.wait();
//! # Ok(()) }
//! // Dropping `bed` removes everything it made.
//! ```
//!
//! # Requirements
//!
//! Root, `ip` and `tc` (Debian: `iproute2`), `ldd` (`libc-bin`) for minimal roots, a
//! kernel with network namespaces, veth, bridge and tbf, and the cgroup cpu controller
//! (v1 or v2). [`Testbed::new`] fails with an error saying which of these is missing;
//! it never silently skips.
//!
//! # Names
//!
//! Everything made on the machine is named after the testbed's [`id`](Testbed::id),
//! `htb<pid>x<n>`: netns `/run/netns/<id>-<host>` and `/run/netns/<id>_bridge`, cgroups
//! `<hierarchy>/<…>/<id>/<host>`, mount namespaces `/run/herd-testbed/<id>/<host>.mnt`,
//! state in `$TMPDIR/herd-testbed/<id>`. Interfaces exist
//! only inside the testbed's namespaces (`eth0` in a host, `p<index>` and `br0` in the
//! bridge namespace), so concurrent testbeds never clash.
//!
//! # Logs
//!
//! Each command's stdout and stderr go to a file in the host's
//! [`log_dir`](Host::log_dir) unless redirected. Logs are deleted with the testbed
//! unless the testbed is dropped during a panic (a failing test), the environment
//! variable `HERD_TESTBED_KEEP_LOGS` is set, or [`TestbedOptions::keep_logs`] is true; the
//! kept directory is printed to stderr.
//!
//! # Not a security boundary
//!
//! Minimal hosts are chroots run by root with the machine's `/proc`, `/dev` and `/sys`:
//! enough to prove that herd does not rely on files a helper does not have, not enough to
//! contain hostile code.

mod cgroup;
pub mod cluster;
mod cmd;
mod error;
mod host;
pub mod hostile;
mod mntns;
mod rootfs;
mod spawn;
mod stale;

use std::env;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::thread;

pub use cgroup::CgroupVersion;
pub use error::Error;
pub use host::{Host, HostSpec, RootKind};
pub use rootfs::{MINIMAL_BINARY, MINIMAL_BINARY_ON_PATH, MINIMAL_PATH, MINIMAL_STATE_DIR};
pub use spawn::HostCommand;
pub use stale::{NAME_PREFIX, StaleCleanup, cleanup_stale, state_base};

use cgroup::Layout;
use spawn::Placement;

/// The name of the bridge inside the bridge namespace.
const BRIDGE: &str = "br0";
/// The name of every host's interface inside its namespace.
const HOST_IF: &str = "eth0";
/// Environment variable that keeps logs after a successful test.
pub const KEEP_LOGS_ENV: &str = "HERD_TESTBED_KEEP_LOGS";

/// Options for [`Testbed::with_options`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedOptions {
    /// The /24 the hosts get addresses in (its last octet is ignored). Each testbed has
    /// its own bridge, so concurrent testbeds may use the same subnet.
    pub subnet: Ipv4Addr,
    /// Keep logs even when the testbed is dropped after a successful test.
    pub keep_logs: bool,
    /// Where logs go (`<log_dir>/<host>/`) instead of the testbed's state directory.
    /// Logs written here are never deleted by the testbed.
    pub log_dir: Option<PathBuf>,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        TestbedOptions {
            subnet: Ipv4Addr::new(10, 213, 0, 0),
            keep_logs: false,
            log_dir: None,
        }
    }
}

/// A set of hosts on one bridge; see the [crate documentation](crate).
#[derive(Debug)]
pub struct Testbed {
    id: String,
    options: TestbedOptions,
    state_dir: PathBuf,
    log_dir: PathBuf,
    bridge_ns: String,
    layout: Layout,
    hosts: Vec<Host>,
    torn_down: bool,
}

pub(crate) fn require_root() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(Error::NotRoot { euid })
    }
}

impl Testbed {
    /// Creates an empty testbed (the bridge and the testbed's cgroups) with default options.
    ///
    /// Fails with a clear error (never skips) if not root or if netns/bridge/cgroups are
    /// unavailable. Removes leftovers of crashed runs first ([`cleanup_stale`]).
    pub fn new() -> Result<Self, Error> {
        Self::with_options(TestbedOptions::default())
    }

    /// Like [`Testbed::new`], with options.
    pub fn with_options(options: TestbedOptions) -> Result<Self, Error> {
        require_root()?;
        cmd::run("ip", &["-V"])?;
        cmd::run("tc", &["-V"])?;
        let layout = cgroup::detect()?;
        match cleanup_stale() {
            Ok(report) if !report.problems.is_empty() => eprintln!(
                "herd-testbed: cleaning up stale testbeds left problems: {}",
                report.problems.join("; ")
            ),
            Ok(_) => {}
            Err(e) => eprintln!("herd-testbed: cleaning up stale testbeds failed: {e}"),
        }
        let id = stale::allocate_id();
        let state_dir = state_base().join(&id);
        let log_dir = match &options.log_dir {
            Some(dir) => dir.join(&id),
            None => state_dir.join("logs"),
        };
        // From here on, dropping `bed` removes whatever was made.
        let mut bed = Testbed {
            bridge_ns: format!("{id}_bridge"),
            id,
            options,
            state_dir,
            log_dir,
            layout,
            hosts: Vec::new(),
            torn_down: false,
        };
        bed.setup()?;
        Ok(bed)
    }

    fn setup(&mut self) -> Result<(), Error> {
        stale::write_owner(&self.id)?;
        for dir in [self.state_dir.join("hosts"), self.log_dir.clone()] {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        self.layout.create_testbed(&self.id)?;
        mntns::prepare_dir(&mntns::ns_dir(&self.id))?;
        cmd::run("ip", &["netns", "add", &self.bridge_ns])
            .map_err(|e| Error::Network(format!("creating the testbed's bridge namespace: {e}")))?;
        let br = self.bridge_ns.as_str();
        cmd::ip_in(br, &["link", "set", "lo", "up"])?;
        cmd::ip_in(br, &["link", "add", BRIDGE, "type", "bridge"])
            .map_err(|e| Error::Network(format!("creating the testbed's bridge: {e}")))?;
        cmd::ip_in(br, &["link", "set", BRIDGE, "up"])?;
        Ok(())
    }

    /// Adds a host and returns it. On failure nothing of the host is left behind.
    pub fn add_host(&mut self, spec: HostSpec) -> Result<&Host, Error> {
        spec.validate()?;
        if self.try_host(&spec.name).is_some() {
            return Err(Error::InvalidSpec(format!(
                "a host named {} already exists in this testbed",
                spec.name
            )));
        }
        let index = self.hosts.len();
        if index >= 250 {
            return Err(Error::InvalidSpec(
                "a testbed holds at most 250 hosts".to_owned(),
            ));
        }
        let [a, b, c, _] = self.options.subnet.octets();
        let addr = Ipv4Addr::new(a, b, c, index as u8 + 1);
        let name = spec.name.clone();
        match self.build_host(spec, index, addr) {
            Ok(host) => {
                self.hosts.push(host);
                self.write_hosts_files()?;
                Ok(&self.hosts[index])
            }
            Err(e) => {
                self.undo_host(&name, index);
                Err(e)
            }
        }
    }

    fn build_host(&self, spec: HostSpec, index: usize, addr: Ipv4Addr) -> Result<Host, Error> {
        let name = spec.name.as_str();
        let netns = format!("{}-{name}", self.id);
        let port = format!("p{index}");
        let cgroups = self
            .layout
            .create_host(&self.id, name, spec.cpu_quota, spec.memory_limit)?;

        cmd::run("ip", &["netns", "add", &netns])?;
        cmd::ip_in(&netns, &["link", "set", "lo", "up"])?;
        cmd::ip_in(
            &self.bridge_ns,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", HOST_IF, "netns", &netns,
            ],
        )?;
        cmd::ip_in(
            &self.bridge_ns,
            &["link", "set", &port, "master", BRIDGE, "up"],
        )?;
        cmd::ip_in(
            &netns,
            &["addr", "add", &format!("{addr}/24"), "dev", HOST_IF],
        )?;
        cmd::ip_in(&netns, &["link", "set", HOST_IF, "up"])?;
        if let Some(mbit) = spec.bandwidth_mbit {
            let rate = format!("{mbit}mbit");
            // 20 ms worth of data, at least 16 KiB (tbf needs burst >= rate / HZ).
            let burst = (u64::from(mbit) * 125_000 / 50).max(16 * 1024).to_string();
            for (ns, dev) in [
                (netns.as_str(), HOST_IF),
                (self.bridge_ns.as_str(), port.as_str()),
            ] {
                cmd::tc_in(
                    ns,
                    &[
                        "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst",
                        &burst, "latency", "50ms",
                    ],
                )?;
            }
        }

        let host_dir = self.state_dir.join("hosts").join(name);
        fs::create_dir_all(&host_dir).map_err(|e| Error::io("create directory", &host_dir, e))?;
        let (root_dir, state_dir) = match &spec.root {
            RootKind::RealFs => {
                let state = host_dir.join("state");
                fs::create_dir(&state).map_err(|e| Error::io("create directory", &state, e))?;
                (None, state)
            }
            RootKind::Minimal { binary } => {
                let root = host_dir.join("root");
                rootfs::build_minimal(&root, binary, name)?;
                (Some(root), PathBuf::from(MINIMAL_STATE_DIR))
            }
        };
        let log_dir = self.log_dir.join(name);
        fs::create_dir_all(&log_dir).map_err(|e| Error::io("create directory", &log_dir, e))?;
        let ns_dir = mntns::ns_dir(&self.id);
        let mntns_path = ns_dir.join(format!("{name}.mnt"));
        mntns::create(
            &mntns_path,
            &ns_dir,
            root_dir.as_deref(),
            !spec.plain_chroot,
        )?;

        let placement = Arc::new(Placement {
            host: name.to_owned(),
            netns_path: Path::new("/run/netns").join(&netns),
            mntns_path,
            procs_files: cgroups
                .iter()
                .map(|d| d.path.join("cgroup.procs"))
                .collect(),
            root: root_dir.clone(),
            log_dir: log_dir.clone(),
            seq: AtomicU32::new(0),
        });
        Ok(Host {
            cgroup_paths: cgroups.iter().map(|d| d.path.clone()).collect(),
            cpu_cgroup: self.layout.cpu_index(),
            cgroups,
            index,
            addr,
            netns,
            bridge_ns: self.bridge_ns.clone(),
            bridge_port: port,
            root_dir,
            state_dir,
            log_dir,
            placement,
            spec,
        })
    }

    /// Best-effort removal of a host whose creation failed half-way.
    fn undo_host(&self, name: &str, index: usize) {
        let netns = format!("{}-{name}", self.id);
        if stale::netns_names().contains(&netns) {
            let _ = cmd::run("ip", &["netns", "delete", &netns]);
        }
        let _ = cmd::ip_in(&self.bridge_ns, &["link", "delete", &format!("p{index}")]);
        for dir in self.layout.dirs(&self.id, name) {
            let _ = cgroup::destroy(&dir, std::time::Duration::from_secs(5));
        }
        let mntns = mntns::ns_dir(&self.id).join(format!("{name}.mnt"));
        let _ = rootfs::unmount_under(&mntns);
        let _ = fs::remove_file(&mntns);
        let _ = rootfs::remove_tree(&self.state_dir.join("hosts").join(name));
    }

    /// Rewrites `/etc/hosts` of every minimal host to list all hosts.
    fn write_hosts_files(&self) -> Result<(), Error> {
        let entries: Vec<(String, Ipv4Addr)> = self
            .hosts
            .iter()
            .map(|h| (h.name().to_owned(), h.addr()))
            .collect();
        for host in &self.hosts {
            if let Some(root) = host.root_dir() {
                rootfs::write_hosts(root, &entries)?;
            }
        }
        Ok(())
    }

    /// The host named `name`.
    ///
    /// # Panics
    ///
    /// If there is no such host (a bug in the test); see [`Testbed::try_host`].
    pub fn host(&self, name: &str) -> &Host {
        self.try_host(name).unwrap_or_else(|| {
            panic!(
                "testbed {} has no host named {name:?} (hosts: {})",
                self.id,
                self.hosts
                    .iter()
                    .map(Host::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The host named `name`, if any.
    pub fn try_host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name() == name)
    }

    /// All hosts, in the order they were added.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter()
    }

    /// The testbed's id (`htb<pid>x<n>`), part of every name it creates on the machine.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The testbed's state directory (host roots, state and by default logs).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The directory holding one log directory per host.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The testbed-level cgroups (parents of the hosts' groups), one per hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.layout
            .dirs(&self.id, "")
            .into_iter()
            .map(|d| d.path)
            .collect()
    }

    /// Path of the bridge's network namespace (`/run/netns/<id>_bridge`).
    pub fn bridge_netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.bridge_ns)
    }

    /// Tears the testbed down now, reporting anything that could not be removed (dropping
    /// it does the same but can only print problems).
    pub fn shutdown(mut self) -> Result<(), Error> {
        let problems = self.teardown();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown {
                id: self.id.clone(),
                problems,
            })
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let keep_logs = self.options.keep_logs
            || self.options.log_dir.is_some()
            || thread::panicking()
            || env::var_os(KEEP_LOGS_ENV).is_some();
        let groups = self.layout.dirs(&self.id, "");
        let problems = stale::remove_testbed(&self.id, &groups, keep_logs);
        stale::release_id(&self.id);
        if keep_logs && self.log_dir.exists() {
            eprintln!(
                "herd-testbed: logs of testbed {} kept in {}",
                self.id,
                self.log_dir.display()
            );
        }
        problems
    }
}

impl Drop for Testbed {
    /// Kills every host process, removes netns, veths, cgroups, mounts and root dirs;
    /// problems are printed to stderr (use [`Testbed::shutdown`] to get them as an error).
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            eprintln!(
                "herd-testbed: teardown of testbed {} left problems: {}",
                self.id,
                problems.join("; ")
            );
        }
    }
}
