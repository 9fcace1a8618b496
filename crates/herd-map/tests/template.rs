//! Templates: replacement strings, quoting, the cartesian product, compared with what
//! `parallel --dry-run` prints.

mod common;

use std::process::Command;

use common::{gnu_parallel, sh, strings};
use herd_map::{Template, cartesian};

/// (template, `:::` groups, the lines we make, one per job, slot 1).
///
/// The lines are hard-coded; where our quoting differs from GNU parallel's (it writes
/// `'it'"'"'s'`, shlex writes `"it's"`), the shell reads both the same, which
/// `same_words_as_gnu_parallel` checks when GNU parallel is installed.
/// One case: template, `:::` groups, expected lines.
type Case = (
    &'static str,
    &'static [&'static [&'static str]],
    &'static [&'static str],
);

const CASES: &[Case] = &[
    ("echo", &[&["a", "b c"]], &["echo a", "echo 'b c'"]),
    (
        "echo {}",
        &[&["it's", "c\"d", "$HOME", "-n", ""]],
        &[
            "echo \"it's\"",
            "echo 'c\"d'",
            "echo '$HOME'",
            "echo -n",
            "echo ''",
        ],
    ),
    (
        "echo {} {.} {/} {//} {/.}",
        &[&[
            "dir.x/file",
            "a.b.c",
            "/abs/x.tar.gz",
            "bare",
            ".hidden",
            "dir/",
            "a b.txt",
        ]],
        &[
            "echo dir.x/file dir.x/file file dir.x file",
            "echo a.b.c a.b a.b.c . a.b",
            "echo /abs/x.tar.gz /abs/x.tar x.tar.gz /abs x.tar",
            "echo bare bare bare . bare",
            "echo .hidden '' .hidden . ''",
            "echo dir/ dir/ '' . ''",
            "echo 'a b.txt' 'a b' 'a b.txt' . 'a b'",
        ],
    ),
    (
        "echo {#} {%}",
        &[&["a", "b", "c"]],
        &["echo 1 1", "echo 2 1", "echo 3 1"],
    ),
    ("echo {#}", &[&["a", "b"]], &["echo 1", "echo 2"]),
    (
        "echo",
        &[&["a", "b.x"], &["1", "2 3"]],
        &["echo a 1", "echo a '2 3'", "echo b.x 1", "echo b.x '2 3'"],
    ),
    (
        "echo {1} {2} {} {1.} {2/} {1//} {2/.}",
        &[&["a.x", "b/c.y"], &["1", "2 3"]],
        &[
            "echo a.x 1 a.x 1 a 1 . 1",
            "echo a.x '2 3' a.x '2 3' a '2 3' . '2 3'",
            "echo b/c.y 1 b/c.y 1 b/c 1 b 1",
            "echo b/c.y '2 3' b/c.y '2 3' b/c '2 3' b '2 3'",
        ],
    ),
    (
        "echo {.} {/} {//}",
        &[&["a.x/b.y"], &["c.z"]],
        &["echo a.x/b c b.y c.z a.x ."],
    ),
    ("echo {3} {1}", &[&["a"], &["b"]], &["echo  a"]),
    ("echo {2}", &[&["a", "b"]], &["echo ", "echo "]),
    ("echo {-1} {-2}", &[&["a"], &["b"]], &["echo b a"]),
    ("echo x{}y {}{}", &[&["a b"]], &["echo x'a b'y 'a b''a b'"]),
    ("echo {{}} { } {x}", &[&["a"]], &["echo {a} { } {x}"]),
    (
        "echo {}; echo x",
        &[&["a$b", "g*"]],
        &["echo 'a$b'; echo x", "echo 'g*'; echo x"],
    ),
];

fn groups(g: &[&[&str]]) -> Vec<Vec<String>> {
    g.iter().map(|v| strings(v)).collect()
}

fn render_all(template: &str, g: &[&[&str]]) -> Vec<String> {
    let t = Template::from_text(template);
    cartesian(groups(g))
        .enumerate()
        .map(|(i, row)| t.render(&row, i as u64 + 1, 1).unwrap())
        .collect()
}

#[test]
fn replacement_strings_make_the_expected_lines() {
    for (template, g, want) in CASES {
        assert_eq!(render_all(template, g), *want, "template {template:?}");
    }
}

/// Shows each word `echo` gets in brackets, so different quoting of the same words
/// compares equal and different words do not.
fn words(line: &str) -> String {
    sh(&format!(
        "echo() {{ printf '[%s]' \"$@\"; printf '\\n'; }}; {line}"
    ))
}

#[test]
fn same_words_as_gnu_parallel() {
    let Some(parallel) = gnu_parallel() else {
        eprintln!("GNU parallel is not installed: comparison skipped");
        return;
    };
    for (template, g, want) in CASES {
        let mut cmd = Command::new(parallel);
        cmd.args(["--will-cite", "--dry-run", "-j1", template]);
        for group in *g {
            cmd.arg(":::").args(*group);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gnu: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(gnu.len(), want.len(), "template {template:?}: {gnu:?}");
        for (gnu_line, ours) in gnu.iter().zip(want.iter()) {
            assert_eq!(
                words(gnu_line),
                words(ours),
                "template {template:?}: GNU {gnu_line:?}, ours {ours:?}"
            );
        }
    }
}

#[test]
fn nasty_names_reach_the_command_unchanged() {
    let names = [
        "a b.txt",
        "it's",
        "c\"d",
        "$HOME",
        "*",
        "-n",
        "~",
        "a\\b",
        "a\tb",
        "line\nbreak",
        "ü",
        "",
        "`id`",
        "$(id)",
        "!x",
        "#x",
        ";rm -rf /nonexistent",
        "b'c d\"e",
        "{}",
        "&&",
        "a|b",
        "  ",
    ];
    let t = Template::from_text("printf '[%s]\\n' {} {/} {1}");
    for name in names {
        let line = t.render(&[name.to_owned()], 1, 1).unwrap();
        let base = name.rsplit('/').next().unwrap();
        assert_eq!(
            sh(&line),
            format!("[{name}]\n[{base}]\n[{name}]\n"),
            "line {line:?}"
        );
    }
}

#[test]
fn a_template_without_replacement_gets_one_appended() {
    let t = Template::parse(&strings(&["gzip", "-k"]));
    assert_eq!(t.text(), "gzip -k {}");
    assert_eq!(
        t.render(&strings(&["a b.txt"]), 1, 1).unwrap(),
        "gzip -k 'a b.txt'"
    );
    // `{%}` alone counts as a replacement string.
    let t = Template::parse(&strings(&["echo", "{%}"]));
    assert_eq!(t.text(), "echo {%}");
}

#[test]
fn an_empty_template_runs_the_arguments() {
    let t = Template::parse(&[]);
    assert_eq!(
        t.render(&strings(&["echo 'x y'"]), 1, 1).unwrap(),
        "echo 'x y'"
    );
    assert_eq!(
        t.render(&strings(&["echo", "a b"]), 1, 1).unwrap(),
        "echo a b"
    );
}

#[test]
fn a_nul_byte_cannot_be_quoted() {
    let t = Template::from_text("echo {}");
    let e = t.render(&strings(&["a\0b"]), 1, 1).unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
}
