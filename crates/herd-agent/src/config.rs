//! herd's configuration file: TOML, versioned, unknown keys refused.
//!
//! Looked up at `$HERD_CONFIG`, else `$XDG_CONFIG_HOME/herd/config.toml`, else
//! `~/.config/herd/config.toml`; a missing file means the defaults. Every key:
//!
//! ```toml
//! version = 1                 # required; the format version
//!
//! [shell]
//! # Programs `herd shell` runs through herd (the defaults: compilers, assemblers,
//! # compressors, image and video tools).
//! programs = ["cc", "gcc", "g++", "c++", "clang", "clang++", "as", "gzip", "xz",
//!             "bzip2", "zstd", "lz4", "convert", "magick", "ffmpeg"]
//! # Programs added to the defaults (rather than replacing them).
//! extra_programs = []
//! # Re-runs elsewhere when a node running an offloaded program is lost.
//! retries = 3
//!
//! [run]
//! # Absolute paths hidden from your tasks besides ~/.ssh, ~/.gnupg, ~/.aws,
//! # ~/.config/herd, ... (README: "What a task can see and change")
//! hide = []
//! # Directories every task may write under besides its working directory (absolute,
//! # or ~/...), as `herd run --writes DIR` adds for one command.
//! writable = []
//!
//! [commit]
//! # Limits on one task's changes: a change set over either fails, and nothing of it
//! # is written.
//! max_files = 1000000
//! max_bytes = 68719476736     # 64 GiB
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The format version this herd reads.
pub const CONFIG_VERSION: u32 = 1;

/// The programs `herd shell` offloads by default.
pub const DEFAULT_SHELL_PROGRAMS: &[&str] = &[
    "cc", "gcc", "g++", "c++", "clang", "clang++", "as", "gzip", "xz", "bzip2", "zstd", "lz4",
    "convert", "magick", "ffmpeg",
];

/// A configuration problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid (syntax, unknown key, wrong type, version).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, in one line.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// `herd shell`.
    #[serde(default)]
    pub shell: ShellConfig,
    /// `herd run` and every task.
    #[serde(default)]
    pub run: RunConfig,
    /// Committing a task's changes.
    #[serde(default)]
    pub commit: CommitConfig,
}

/// The `[commit]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitConfig {
    /// Files, directories and links one task may change at most.
    pub max_files: u64,
    /// Bytes of file data one task may write at most.
    pub max_bytes: u64,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_files: 1_000_000,
            max_bytes: 64 << 30,
        }
    }
}

/// The `[shell]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShellConfig {
    /// Programs run through herd inside `herd shell`.
    pub programs: Vec<String>,
    /// Programs added to `programs`.
    pub extra_programs: Vec<String>,
    /// Re-runs elsewhere when the node running an offloaded program is lost.
    pub retries: u32,
}

impl Default for ShellConfig {
    fn default() -> Self {
        ShellConfig {
            programs: DEFAULT_SHELL_PROGRAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            extra_programs: Vec::new(),
            retries: 3,
        }
    }
}

impl ShellConfig {
    /// Every program to offload, without duplicates, in order.
    pub fn all_programs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.programs.iter().chain(&self.extra_programs) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// The `[run]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Extra paths hidden from tasks (absolute).
    pub hide: Vec<PathBuf>,
    /// Directories every task may write under besides its working directory
    /// (absolute, or `~/...`: see [`RunConfig::writable_dirs`]).
    pub writable: Vec<PathBuf>,
}

impl RunConfig {
    /// `writable` with a leading `~` replaced by `home`; `~` entries are dropped when
    /// there is no home.
    pub fn writable_dirs(&self, home: Option<&Path>) -> Vec<PathBuf> {
        self.writable
            .iter()
            .filter_map(|p| match p.strip_prefix("~") {
                Ok(rest) => home.map(|h| h.join(rest)),
                Err(_) => Some(p.clone()),
            })
            .collect()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            shell: ShellConfig::default(),
            run: RunConfig::default(),
            commit: CommitConfig::default(),
        }
    }
}

/// Where the configuration file is, given the environment (`HERD_CONFIG`,
/// `XDG_CONFIG_HOME`, `HOME`).
pub fn path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("HERD_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(x) = env("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Some(Path::new(&x).join("herd/config.toml"));
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".config/herd/config.toml"))
}

/// Parses a configuration file's text.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let c: Config = toml::from_str(text).map_err(|e| {
        invalid(
            e.to_string()
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("invalid TOML")
                .to_string(),
        )
    })?;
    if let Some(p) = c.run.hide.iter().find(|p| !p.is_absolute()) {
        return Err(invalid(format!(
            "[run] hide: {} is not an absolute path",
            p.display()
        )));
    }
    if let Some(p) = c
        .run
        .writable
        .iter()
        .find(|p| !p.is_absolute() && !p.starts_with("~"))
    {
        return Err(invalid(format!(
            "[run] writable: {} is neither an absolute path nor under ~",
            p.display()
        )));
    }
    if c.version != CONFIG_VERSION {
        return Err(invalid(format!(
            "version {} is not supported (this herd reads version {CONFIG_VERSION})",
            c.version
        )));
    }
    Ok(c)
}

/// Loads the configuration from the environment's path; the defaults when there is
/// no file.
pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let Some(path) = path(env) else {
        return Ok(Config::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

/// [`load`] with the process environment.
pub fn load_env() -> Result<Config, ConfigError> {
    load(&|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/x/config.toml")
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse(p(), "version = 1\n").unwrap();
        assert!(c.shell.all_programs().contains(&"gcc".to_string()));
        assert_eq!(c.shell.retries, 3);
        let c = parse(
            p(),
            "version = 1\n[shell]\nprograms = [\"xz\"]\nextra_programs = [\"pigz\", \"xz\"]\n",
        )
        .unwrap();
        assert_eq!(c.shell.all_programs(), vec!["xz", "pigz"]);
    }

    #[test]
    fn unknown_keys_and_versions_are_refused() {
        let e = parse(p(), "version = 1\n[shell]\nprogram = []\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(e.to_string().starts_with("/x/config.toml"), "{e}");
        let e = parse(p(), "version = 2\n").unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        assert!(parse(p(), "[shell]\n").is_err(), "version is required");
        assert!(parse(p(), "version = 1\nbogus = 3\n").is_err());
        let e = parse(p(), "version = 1\n[run]\nhide = [\"rel\"]\n").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = parse(p(), "version = 1\n[run]\nwritable = [\"rel\"]\n").unwrap_err();
        assert!(e.to_string().contains("writable: rel"), "{e}");
    }

    #[test]
    fn writable_dirs_expand_the_home() {
        let c = parse(
            p(),
            "version = 1\n[run]\nwritable = [\"~/.cache\", \"/srv/out\"]\n[commit]\nmax_files = 10\n",
        )
        .unwrap();
        assert_eq!(
            c.run.writable_dirs(Some(Path::new("/home/u"))),
            vec![PathBuf::from("/home/u/.cache"), PathBuf::from("/srv/out")]
        );
        assert_eq!(c.run.writable_dirs(None), vec![PathBuf::from("/srv/out")]);
        assert_eq!((c.commit.max_files, c.commit.max_bytes), (10, 64 << 30));
    }

    #[test]
    fn lookup_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            path(&env(&[("HERD_CONFIG", "/a.toml"), ("HOME", "/h")])),
            Some(PathBuf::from("/a.toml"))
        );
        assert_eq!(
            path(&env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/herd/config.toml"))
        );
        assert_eq!(
            path(&env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.config/herd/config.toml"))
        );
        assert_eq!(path(&env(&[])), None);
        // A missing file means the defaults.
        let c = load(&env(&[("HERD_CONFIG", "/nonexistent/herd.toml")])).unwrap();
        assert_eq!(c.version, CONFIG_VERSION);
    }
}
