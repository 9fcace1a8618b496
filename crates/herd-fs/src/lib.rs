//! The workstation's files on a helper: a read-only FUSE view and where its bytes
//! come from.
//!
//! * [`beneath`]: walking the workstation's tree as a peer asks, following no link
//!   and reaching no hidden object or pseudo file system; [`beneath::Hidden`], the
//!   hidden paths as given, as resolved and as objects.
//! * [`source`]: the [`Source`] trait (stat, list, read, readlink on absolute paths)
//!   and [`LocalSource`], which answers from this machine's filesystem while hiding
//!   secret paths. The workstation's file service runs a `LocalSource` as the
//!   submitting user; tests mount one directly.
//! * [`view`]: [`View`], a FUSE filesystem (fuser) over any source; what it learns is
//!   kept for the task's lifetime, and a directory listing brings the attributes of
//!   all its entries. A helper keeps it mounted for the next task, and
//!   [`view::ViewCtl`] drops from it (and from the kernel's caches) what changed on
//!   the workstation in between.
//! * [`cache`]: the helper's persistent cache of facts and contents, validated in one
//!   round trip per task.
//! * [`cached`]: a source that answers validated facts from the cache and asks for
//!   the rest.
//! * [`journal`]: the workstation's change journal (inotify), which lets the file
//!   service vouch for unchanged validation items without looking at each.
//! * [`elf`]: the dynamic-loading closure of an executable, sent to a helper at once.
//! * [`changes`]: a task's changes, scanned from its overlay upper layer on the helper
//!   and committed on the workstation all at once, with conflict detection.
//!
//! Writes never reach a view: the sandbox stacks an overlay upper layer on top of it,
//! and the task's changes are committed back separately when it exits.
//!
//! **Architecture invariant:** this crate knows nothing about the network; a remote
//! source is a [`Source`] implemented by the agent.

#![deny(missing_docs)]

pub mod beneath;
pub mod cache;
pub mod cached;
pub mod changes;
pub mod elf;
pub mod journal;
pub mod source;
pub mod view;

pub use source::{LocalSource, Source};
pub use view::{IdShift, Mounted, Seen, View, mount};
