//! Command templates and GNU parallel's replacement strings.
//!
//! A template is the command words given to `herd map`, joined by single spaces (the
//! result is a line for `/bin/sh -c`, as with GNU parallel). Replacement strings:
//!
//! | string | replaced by |
//! |---|---|
//! | `{}` | the argument (with several `:::` groups: all arguments, space-separated) |
//! | `{.}` | the argument without its extension (`s:\.[^/.]*$::`) |
//! | `{/}` | the basename (`s:.*/::`) |
//! | `{//}` | the dirname (Perl's `File::Basename::dirname`; `.` for a bare name) |
//! | `{/.}` | the basename without its extension |
//! | `{#}` | the job's sequence number, from 1 |
//! | `{%}` | the job's slot number, from 1 |
//! | `{N}`, `{N.}`, `{N/}`, `{N//}`, `{N/.}` | the same for the N-th argument (from 1; `-N` counts from the last) |
//!
//! Every argument put into the line is shell-quoted (with `shlex`), so names with
//! spaces, quotes or `$` reach the command unchanged; `{#}` and `{%}` are plain
//! numbers. A positional string beyond the job's arguments becomes nothing, as in GNU
//! parallel. A template with no replacement string gets ` {}` appended. An empty
//! template (no command words) runs the arguments themselves: they are joined by
//! spaces, unquoted.
//!
//! ```
//! use herd_map::Template;
//! let t = Template::parse(&["gzip".into(), "-k".into()]);
//! assert_eq!(t.text(), "gzip -k {}");
//! assert_eq!(t.render(&["a b.txt".into()], 1, 1).unwrap(), "gzip -k 'a b.txt'");
//! ```

use std::fmt;

/// What a replacement string does to an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transform {
    /// `{}`: unchanged.
    Whole,
    /// `{.}`: without the extension.
    NoExt,
    /// `{/}`: basename.
    Basename,
    /// `{//}`: dirname.
    Dirname,
    /// `{/.}`: basename without the extension.
    BasenameNoExt,
}

impl Transform {
    /// Parses the part of a replacement string after the position (`""`, `"."`, …).
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" => Self::Whole,
            "." => Self::NoExt,
            "/" => Self::Basename,
            "//" => Self::Dirname,
            "/." => Self::BasenameNoExt,
            _ => return None,
        })
    }

    fn apply<'a>(self, arg: &'a str) -> std::borrow::Cow<'a, str> {
        match self {
            Self::Whole => arg.into(),
            Self::NoExt => strip_extension(arg).into(),
            Self::Basename => basename(arg).into(),
            Self::Dirname => dirname(arg).into(),
            Self::BasenameNoExt => strip_extension(basename(arg)).into(),
        }
    }
}

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// Text copied as is.
    Literal(String),
    /// `{}` and friends: every argument, transformed, quoted, space-separated.
    All(Transform),
    /// `{N}` and friends: one argument; negative counts from the last.
    Position(i64, Transform),
    /// `{#}`.
    Seq,
    /// `{%}`.
    Slot,
}

/// A parsed command template; see the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    tokens: Vec<Token>,
    text: String,
    /// No command words: the arguments are the command.
    bare: bool,
}

/// Why a command line could not be made from a template and arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A shell line cannot carry a NUL byte.
    #[error("argument {arg:?} contains a NUL byte, which a shell command cannot carry")]
    Nul {
        /// The offending argument.
        arg: String,
    },
}

impl Template {
    /// Parses the command words (joined by single spaces). Never fails: text that is
    /// not a replacement string is kept literally, as GNU parallel does.
    pub fn parse(words: &[String]) -> Self {
        Self::from_text(&words.join(" "))
    }

    /// Parses a template given as one string.
    pub fn from_text(text: &str) -> Self {
        if text.is_empty() {
            return Self {
                tokens: Vec::new(),
                text: String::new(),
                bare: true,
            };
        }
        let mut tokens = tokenize(text);
        let mut text = text.to_owned();
        if !tokens.iter().any(|t| !matches!(t, Token::Literal(_))) {
            text.push_str(" {}");
            tokens = tokenize(&text);
        }
        Self {
            tokens,
            text,
            bare: false,
        }
    }

    /// The template's text, including an appended ` {}`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Makes the shell line of one job from its arguments, its sequence number and its
    /// slot number.
    pub fn render(&self, args: &[String], seq: u64, slot: usize) -> Result<String, TemplateError> {
        if self.bare {
            return Ok(args.join(" "));
        }
        let mut line = String::with_capacity(self.text.len() + 16 * args.len());
        for token in &self.tokens {
            match token {
                Token::Literal(s) => line.push_str(s),
                Token::All(tr) => {
                    for (i, arg) in args.iter().enumerate() {
                        if i > 0 {
                            line.push(' ');
                        }
                        push_quoted(&mut line, &tr.apply(arg), arg)?;
                    }
                }
                Token::Position(n, tr) => {
                    let index = if *n > 0 {
                        usize::try_from(n - 1).ok()
                    } else {
                        usize::try_from(n.unsigned_abs())
                            .ok()
                            .and_then(|back| args.len().checked_sub(back))
                    };
                    if let Some(arg) = index.and_then(|i| args.get(i)) {
                        push_quoted(&mut line, &tr.apply(arg), arg)?;
                    }
                }
                Token::Seq => line.push_str(&seq.to_string()),
                Token::Slot => line.push_str(&slot.to_string()),
            }
        }
        Ok(line)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn push_quoted(line: &mut String, value: &str, arg: &str) -> Result<(), TemplateError> {
    let quoted = shlex::try_quote(value).map_err(|_| TemplateError::Nul {
        arg: arg.to_owned(),
    })?;
    line.push_str(&quoted);
    Ok(())
}

/// Splits a template into literals and replacement strings.
fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let token = after
            .find('}')
            .and_then(|close| replacement(&after[..close]).map(|token| (token, close)));
        match token {
            Some((token, close)) => {
                if !literal.is_empty() {
                    tokens.push(Token::Literal(std::mem::take(&mut literal)));
                }
                tokens.push(token);
                rest = &after[close + 1..];
            }
            None => {
                literal.push('{');
                rest = after;
            }
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        tokens.push(Token::Literal(literal));
    }
    tokens
}

/// Recognizes the inside of `{…}`.
fn replacement(inner: &str) -> Option<Token> {
    match inner {
        "#" => return Some(Token::Seq),
        "%" => return Some(Token::Slot),
        _ => {}
    }
    if let Some(tr) = Transform::parse(inner) {
        return Some(Token::All(tr));
    }
    let (negative, digits) = match inner.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, inner),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let (number, modifier) = digits.split_at(end);
    if number.is_empty() || number.starts_with('0') {
        return None;
    }
    let n: i64 = number.parse().ok()?;
    let tr = Transform::parse(modifier)?;
    Some(Token::Position(if negative { -n } else { n }, tr))
}

/// `{.}`: removes a final `.ext` whose text holds neither `/` nor `.`
/// (GNU parallel's `s:\.[^/.]*$::`).
fn strip_extension(arg: &str) -> &str {
    match arg.rfind(['.', '/']) {
        Some(i) if arg.as_bytes()[i] == b'.' => &arg[..i],
        _ => arg,
    }
}

/// `{/}`: everything after the last `/` (GNU parallel's `s:.*/::`).
fn basename(arg: &str) -> &str {
    match arg.rfind('/') {
        Some(i) => &arg[i + 1..],
        None => arg,
    }
}

/// `{//}`: Perl's `File::Basename::dirname` on Unix, which GNU parallel uses.
fn dirname(arg: &str) -> &str {
    let (dir, base) = fileparse(arg);
    let dir = strip_trailing_slashes(dir);
    if !base.is_empty() {
        return dir;
    }
    let (dir, _) = fileparse(dir);
    strip_trailing_slashes(dir)
}

/// Perl's `fileparse` without suffixes: `m{^(.*/)?(.*)}s`, with `./` for a missing
/// directory part.
fn fileparse(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("./", path),
    }
}

/// `s{(.)/*\z}{$1}s`: removes trailing slashes but keeps the first character.
fn strip_trailing_slashes(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() && !path.is_empty() {
        &path[..1]
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parts_match_gnu_parallel() {
        // (argument, {.}, {/}, {//}, {/.}) as `parallel --dry-run` prints them.
        let cases = [
            ("dir.x/file", "dir.x/file", "file", "dir.x", "file"),
            ("a.b.c", "a.b", "a.b.c", ".", "a.b"),
            ("/abs/x.tar.gz", "/abs/x.tar", "x.tar.gz", "/abs", "x.tar"),
            ("bare", "bare", "bare", ".", "bare"),
            (".hidden", "", ".hidden", ".", ""),
            ("dir/", "dir/", "", ".", ""),
            ("", "", "", ".", ""),
            ("/", "/", "", "/", ""),
            ("a/.b", "a/", ".b", "a", ""),
            ("..", ".", "..", ".", "."),
            (".", "", ".", ".", ""),
            ("a//b", "a//b", "b", "a", "b"),
            ("//", "//", "", "/", ""),
            ("a/b/", "a/b/", "", "a", ""),
            ("/a", "/a", "a", "/", "a"),
            ("/a/", "/a/", "", "/", ""),
            ("a/b//", "a/b//", "", "a", ""),
            ("./a", "./a", "a", ".", "a"),
            ("a/b.c/", "a/b.c/", "", "a", ""),
            ("/.x", "/", ".x", "/", ""),
            ("a.b/.c.d", "a.b/.c", ".c.d", "a.b", ".c"),
            ("a..b", "a.", "a..b", ".", "a."),
            ("a.", "a", "a.", ".", "a"),
        ];
        for (arg, no_ext, base, dir, base_no_ext) in cases {
            assert_eq!(strip_extension(arg), no_ext, "{{.}} of {arg:?}");
            assert_eq!(basename(arg), base, "{{/}} of {arg:?}");
            assert_eq!(dirname(arg), dir, "{{//}} of {arg:?}");
            assert_eq!(
                strip_extension(basename(arg)),
                base_no_ext,
                "{{/.}} of {arg:?}"
            );
        }
    }

    #[test]
    fn recognizes_only_known_replacement_strings() {
        assert_eq!(
            replacement("3/."),
            Some(Token::Position(3, Transform::BasenameNoExt))
        );
        assert_eq!(
            replacement("-1"),
            Some(Token::Position(-1, Transform::Whole))
        );
        assert_eq!(
            replacement("12//"),
            Some(Token::Position(12, Transform::Dirname))
        );
        for not in ["0", "01", "x", " ", "1..", "-", "1/x", "##"] {
            assert_eq!(replacement(not), None, "{not:?}");
        }
    }
}
