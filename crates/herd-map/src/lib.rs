//! `herd map`: templates, argument sources, job log, and the batch driver.
//!
//! `herd map [-j N] [--joblog FILE] [--resume] [--retries N] [--halt …] [--keep-order]
//! [--bar] TEMPLATE... ::: ARGS...` runs one job per argument (or per combination of
//! arguments from several `:::` groups, or per input line), as GNU parallel does, on
//! whatever a [`Runner`] decides: the herd CLI's runner sends each job through the herd
//! agent to a host of the cluster; [`LocalRunner`] runs it on this machine.
//!
//! * [`template`]: the command template and GNU parallel's replacement strings (`{}`,
//!   `{.}`, `{/}`, `{//}`, `{/.}`, `{#}`, `{%}`, `{N}`…), with shell quoting.
//! * [`args`]: argument rows: the cartesian product of `:::` groups, or input lines.
//! * [`runner`]: the [`Runner`] trait, its request and result types, [`LocalRunner`].
//! * [`captured`]: a job's output, in memory or spilled to a temporary file.
//! * [`cancel`]: the [`Cancel`] flag a runner polls or waits on.
//! * [`joblog`]: GNU parallel's `--joblog` format and `--resume`.
//! * [`options`]: [`MapOptions`], [`Halt`], [`Progress`].
//! * [`driver`]: [`run_map`], which runs it all and returns a [`MapSummary`].
//! * `progress` (private): progress on stderr, an indicatif bar or one line per job.
//!
//! **Architecture invariant:** this crate knows nothing about the cluster, the agent or
//! the network; the only thing it runs is what a [`Runner`] runs. Where it differs from
//! GNU parallel is said next to the behaviour concerned.

pub mod args;
pub mod cancel;
pub mod captured;
pub mod driver;
pub mod joblog;
pub mod options;
mod progress;
pub mod runner;
pub mod template;

pub use args::{Cartesian, Lines, cartesian, lines};
pub use cancel::Cancel;
pub use captured::{CaptureWriter, Captured};
pub use driver::{MapError, MapSummary, run_map};
pub use joblog::{JobLog, JobLogEntry, JobLogError};
pub use options::{Halt, MapOptions, OptionError, Progress};
pub use runner::{JobError, JobRequest, JobResult, LocalRunner, Runner};
pub use template::{Template, TemplateError};
