//! `herd completions SHELL` and `herd man`: shell completion scripts and the manual
//! page, generated from the command-line definition so they never drift from it.
//!
//! `herd man` prints one page, herd(1), that holds every subcommand in its COMMANDS
//! section (synopsis, description and options of each), for `herd man | man -l -` or
//! for installing as `herd.1`. `herd man --dir DIR` instead writes the split set a
//! distribution package would ship: `herd.1`, whose COMMANDS section lists the
//! subcommands, and one `herd-SUB.1` per subcommand.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::Cli;

/// The apostrophe-handling preamble `roff` puts at the start of every rendering; kept
/// once, at the top of the page.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// What herd(1) says under DESCRIPTION (`--help` has only the one-line summary).
const DESCRIPTION: &str = "herd pools the CPUs of nearby Linux machines for the work \
of a workstation. Every host runs one process, herd agent; the agents find each other \
and talk over QUIC with mutual TLS. herd init on the workstation creates a cluster and \
prints a join token; herd agent --join TOKEN on each helper joins it; a helper needs \
nothing installed but herd.

herd run runs a command where it finishes soonest, seeing the workstation's files, \
working directory, environment and identity, and commits its file changes back when it \
exits; herd map runs a batch like GNU parallel; herd shell offloads compilers and other \
tools, so that make -j$(herd slots) builds across the cluster. Helpers lend only idle \
CPU: their tasks run at the lowest priority and are frozen while the owner is busy.";

/// herd's command definition as the documentation shows it: with a longer
/// description, without clap's `help` subcommand (every subcommand has `--help`).
fn command() -> clap::Command {
    let mut cmd = Cli::command()
        .long_about(DESCRIPTION)
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "herd", &mut out);
    emit(&out)
}

/// Prints herd(1) with every subcommand to stdout or, with `dir`, writes `herd.1` and
/// one `herd-SUB.1` per subcommand there (creating it) and prints their paths.
pub fn man(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cmd = command();
    let Some(dir) = dir else {
        return emit(&page(&cmd, true)?);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = vec![write_page(dir, "herd.1", &page(&cmd, false)?)?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("herd-{}.1", sub.get_name());
        let mut buf = Vec::new();
        Man::new(sub.clone()).render(&mut buf)?;
        written.push(write_page(dir, &name, &buf)?);
    }
    let mut text = String::new();
    for p in written {
        text.push_str(&format!("{}\n", p.display()));
    }
    emit(text.as_bytes())
}

fn write_page(dir: &Path, name: &str, page: &[u8]) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Writes `bytes` to stdout; a reader that went away (`herd man | head`) is not an error.
fn emit(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// herd(1). `full`: the COMMANDS section details every subcommand; otherwise it lists
/// them and refers to their own pages, herd-SUB(1).
fn page(cmd: &clap::Command, full: bool) -> io::Result<Vec<u8>> {
    let man = Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    append(&mut out, |w| man.render_name_section(w))?;
    append(&mut out, |w| man.render_synopsis_section(w))?;
    append(&mut out, |w| man.render_description_section(w))?;
    append(&mut out, |w| man.render_options_section(w))?;
    if full {
        out.extend_from_slice(b".SH COMMANDS\n");
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            subcommand(&mut out, sub)?;
        }
    } else {
        append(&mut out, |w| man.render_subcommands_section(w))?;
    }
    append(&mut out, |w| extra().to_writer(w))?;
    append(&mut out, |w| man.render_version_section(w))?;
    Ok(out)
}

/// Appends what `render` writes, without its preamble.
fn append(
    out: &mut Vec<u8>,
    render: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    out.extend_from_slice(strip_preamble(&buf).as_bytes());
    Ok(())
}

/// One subcommand of the single page: a `.SS` heading, then its synopsis, description
/// and options, taken from its own page with their `.SH` headings turned into
/// paragraphs.
fn subcommand(w: &mut Vec<u8>, sub: &clap::Command) -> io::Result<()> {
    writeln!(w, ".SS \"herd {}\"", sub.get_name())?;
    let man = Man::new(sub.clone());
    let (mut synopsis, mut description, mut options) = (Vec::new(), Vec::new(), Vec::new());
    man.render_synopsis_section(&mut synopsis)?;
    man.render_description_section(&mut description)?;
    man.render_options_section(&mut options)?;
    // The synopsis and description need no heading; option groups keep theirs.
    for (part, headed) in [(synopsis, false), (description, false), (options, true)] {
        for line in strip_preamble(&part).lines() {
            match line.strip_prefix(".SH ") {
                Some(title) if headed => writeln!(w, ".PP\n.B {title}")?,
                Some(_) => w.write_all(b".PP\n")?,
                None => writeln!(w, "{line}")?,
            }
        }
    }
    Ok(())
}

/// EXIT STATUS, ENVIRONMENT and FILES: what the clap definition cannot say.
fn extra() -> Roff {
    let mut r = Roff::new();
    let item = |r: &mut Roff, term: &str, text: &str| {
        r.control("TP", []);
        r.text([bold(term)]);
        r.text([roman(text)]);
    };
    r.control("SH", ["EXIT STATUS"]);
    item(&mut r, "0", "Success.");
    item(&mut r, "1", "A runtime failure: network, no agent running.");
    item(
        &mut r,
        "2",
        "Something to fix: a bad flag, a wrong, expired or revoked token, a state \
         directory that already holds a cluster, is locked or holds a damaged file.",
    );
    r.control("PP", []);
    r.text([roman(
        "herd run exits with the command's own status (128+N if signal N killed it, \
         127 if it or its working directory does not exist, 255 for herd's own \
         failures); herd map with the number of failed jobs (at most 101).",
    )]);
    r.control("SH", ["ENVIRONMENT"]);
    item(&mut r, "HERD_STATE", "The state directory (as --state).");
    item(
        &mut r,
        "HERD_LOG",
        "The agent's log filter, e.g. debug (default: info).",
    );
    item(
        &mut r,
        "HERD_CONFIG",
        "The configuration file (default: $XDG_CONFIG_HOME/herd/config.toml, else \
         ~/.config/herd/config.toml).",
    );
    r.control("SH", ["FILES"]);
    item(
        &mut r,
        "/var/lib/herd",
        "The agent's state directory when run as root: the node's certificate and key, \
         the cluster CA on the node that ran herd init, the helper's file cache, and the \
         agent's Unix socket.",
    );
    item(
        &mut r,
        "~/.local/share/herd",
        "The state directory for other users.",
    );
    r
}

fn strip_preamble(buf: &[u8]) -> String {
    let s = String::from_utf8_lossy(buf);
    s.strip_prefix(PREAMBLE).unwrap_or(&s).to_string()
}
