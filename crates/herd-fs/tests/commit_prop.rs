//! Property: random workstation trees full of symlinks (inside and outside the scope,
//! relative and absolute, to directories and files) and random change sets (any
//! order, any kind, duplicates, paths through links): nothing outside the scope or
//! hidden changes, and inside it nothing changes but what the change set names. A
//! change set that fails changes nothing at all. Cases: `PROPTEST_CASES` (default
//! 256).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;
use herd_proto::fs::{Base, Change};
use proptest::prelude::*;

const NAMES: &[&str] = &["a", "b", "h"];

/// Candidate paths: /w, /o and two levels of names below them.
fn paths() -> Vec<String> {
    let mut out = vec!["/w".to_string(), "/o".to_string()];
    for top in ["/w", "/o"] {
        for a in NAMES {
            out.push(format!("{top}/{a}"));
            for b in NAMES {
                out.push(format!("{top}/{a}/{b}"));
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Node {
    File,
    Dir,
    /// A link: relative, absolute (the real absolute path) or up and out.
    Link(u8, usize),
}

fn node() -> impl Strategy<Value = Option<Node>> {
    prop_oneof![
        2 => Just(None),
        2 => Just(Some(Node::File)),
        3 => Just(Some(Node::Dir)),
        3 => (0u8..3, 0usize..20).prop_map(|(k, t)| Some(Node::Link(k, t))),
    ]
}

#[derive(Debug, Clone)]
enum Kind {
    File(bool),
    Dir(bool),
    Link(usize),
    Remove(bool),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        any::<bool>().prop_map(Kind::File),
        any::<bool>().prop_map(Kind::Dir),
        (0usize..20).prop_map(Kind::Link),
        any::<bool>().prop_map(Kind::Remove),
    ]
}

fn build(root: &Path, tree: &[Option<Node>]) {
    let ps = paths();
    fs::create_dir_all(root.join("w")).unwrap();
    fs::create_dir_all(root.join("o")).unwrap();
    for (p, n) in ps.iter().zip(tree).skip(2) {
        let real = root.join(&p[1..]);
        if !real.parent().unwrap().is_dir() || real.parent().unwrap().is_symlink() {
            continue;
        }
        match n {
            None => {}
            Some(Node::File) => fs::write(&real, p.as_bytes()).unwrap(),
            Some(Node::Dir) => fs::create_dir(&real).unwrap(),
            Some(Node::Link(k, t)) => {
                let target = &ps[t % ps.len()];
                let t = match k {
                    0 => root.join(&target[1..]).into_os_string(),
                    1 => format!("../..{target}").into(),
                    _ => format!("..{}", &target[2..]).into(),
                };
                symlink(t, &real).unwrap();
            }
        }
    }
}

fn change(root: &Path, p: &str, k: &Kind) -> Staged {
    let base_of = |fresh: bool| {
        if fresh && fs::symlink_metadata(root.join(&p[1..])).is_ok() {
            seen(root, p)
        } else {
            Base::Unseen
        }
    };
    match k {
        Kind::File(b) => {
            let mut s = file(p, format!("task {p}").as_bytes());
            if let Change::File { base, .. } = &mut s.change {
                *base = base_of(*b);
            }
            s
        }
        Kind::Dir(r) => dir(p, 0o750, *r),
        Kind::Link(t) => link(p, &paths()[t % paths().len()]),
        Kind::Remove(b) => {
            let mut s = remove(p);
            if let Change::Remove { base, .. } = &mut s.change {
                *base = base_of(*b);
            }
            s
        }
    }
}

fn allowed(d: &Path, set: &[Staged]) -> bool {
    set.iter().any(|s| {
        let c = Path::new(std::ffi::OsStr::new(
            std::str::from_utf8(s.change.path()).unwrap(),
        ));
        let c = c.strip_prefix("/").unwrap();
        let mut conflict = c.as_os_str().to_os_string();
        conflict.push(".herd-conflict-p");
        let subtree = matches!(
            s.change,
            Change::Remove { .. }
                | Change::File { .. }
                | Change::Symlink { .. }
                | Change::Dir { replaces: true, .. }
        );
        d == c || (subtree && d.starts_with(c)) || d.starts_with(Path::new(&conflict))
    })
}

fn outside(snap: &BTreeMap<PathBuf, Entry>) -> BTreeMap<PathBuf, Entry> {
    snap.iter()
        .filter(|(p, _)| !p.starts_with("w") || p.starts_with("w/h"))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]

    #[test]
    fn nothing_changes_but_what_the_change_set_says_inside_the_scope(
        tree in prop::collection::vec(node(), 26),
        set in prop::collection::vec((0usize..26, kind()), 1..16),
    ) {
        let t = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let root = t.path();
        build(root, &tree);
        let ps = paths();
        let set: Vec<Staged> = set.iter().map(|(i, k)| change(root, &ps[*i], k)).collect();
        let before = snapshot(root);
        let mut c = committer(root, "p", &["/w"], &["/w/h"], logs.path());
        let mut failed = false;
        for s in &set {
            let mut d = &s.data[..];
            let r: Option<&mut dyn std::io::Read> = matches!(s.change, Change::File { .. }).then_some(&mut d);
            if c.stage(&s.change, r).is_err() {
                failed = true;
                break;
            }
        }
        if !failed {
            failed = c.commit().is_err();
        } else {
            drop(c);
        }
        let after = snapshot(root);
        prop_assert!(leftovers(&after).is_empty(), "staging left: {:?}", leftovers(&after));
        prop_assert_eq!(fs::read_dir(logs.path()).unwrap().count(), 0);
        if failed {
            prop_assert_eq!(&after, &before);
        }
        prop_assert_eq!(outside(&after), outside(&before));
        for (p, e) in &after {
            if before.get(p) != Some(e) {
                prop_assert!(allowed(p, &set), "{} changed: {:?} -> {:?}", p.display(), before.get(p), e);
            }
        }
        for p in before.keys() {
            if !after.contains_key(p) {
                prop_assert!(allowed(p, &set), "{} vanished", p.display());
            }
        }
    }
}
