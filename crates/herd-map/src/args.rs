//! Where job arguments come from: `:::` groups or input lines.
//!
//! Each job gets a row of arguments. With `:::` groups the rows are the cartesian
//! product of the groups, the last group varying fastest (as GNU parallel does:
//! `::: a b ::: 1 2` gives `a 1`, `a 2`, `b 1`, `b 2`). Without groups every input
//! line is a row of one argument, read lazily so jobs start before input ends.
//!
//! [`run_map`](crate::run_map) takes rows as `io::Result<Vec<String>>`:
//!
//! ```
//! use std::io;
//! // `:::` groups:
//! let groups = vec![vec!["a".to_owned(), "b".to_owned()], vec!["1".to_owned()]];
//! let rows = herd_map::cartesian(groups).map(Ok::<_, io::Error>);
//! assert_eq!(rows.size_hint(), (2, Some(2)));
//! // Standard input (Send and 'static, as `run_map` needs):
//! let stdin_rows = herd_map::lines(io::BufReader::new(io::stdin()));
//! # drop(stdin_rows);
//! ```

use std::io::{self, BufRead};

/// The cartesian product of argument groups, lazily, last group fastest.
///
/// No groups give no rows; so does any empty group.
#[derive(Clone, Debug)]
pub struct Cartesian {
    groups: Vec<Vec<String>>,
    /// The next row's index into each group; `None` once exhausted.
    next: Option<Vec<usize>>,
    left: Option<u64>,
}

/// The rows of the cartesian product of `groups`.
pub fn cartesian(groups: Vec<Vec<String>>) -> Cartesian {
    let empty = groups.is_empty() || groups.iter().any(Vec::is_empty);
    let left = groups
        .iter()
        .try_fold(1u64, |n, g| n.checked_mul(g.len() as u64));
    Cartesian {
        next: (!empty).then(|| vec![0; groups.len()]),
        left: if empty { Some(0) } else { left },
        groups,
    }
}

impl Iterator for Cartesian {
    type Item = Vec<String>;

    fn next(&mut self) -> Option<Vec<String>> {
        let idx = self.next.as_mut()?;
        let row = idx
            .iter()
            .zip(&self.groups)
            .map(|(&i, g)| g[i].clone())
            .collect();
        // Advance like an odometer, last position fastest.
        let mut pos = idx.len();
        loop {
            if pos == 0 {
                self.next = None;
                break;
            }
            pos -= 1;
            idx[pos] += 1;
            if idx[pos] < self.groups[pos].len() {
                break;
            }
            idx[pos] = 0;
        }
        if let Some(left) = &mut self.left {
            *left -= 1;
        }
        Some(row)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.left.and_then(|n| usize::try_from(n).ok()) {
            Some(n) => (n, Some(n)),
            None => (usize::MAX, None),
        }
    }
}

/// Rows of one argument each: the lines of `reader`, without their `\n`.
///
/// A line that is not UTF-8 ends the rows with an `InvalidData` error naming its
/// number.
pub fn lines<R: BufRead>(reader: R) -> Lines<R> {
    Lines {
        reader,
        number: 0,
        done: false,
    }
}

/// The iterator returned by [`lines`].
#[derive(Debug)]
pub struct Lines<R> {
    reader: R,
    number: u64,
    done: bool,
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = io::Result<Vec<String>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        let read = loop {
            match self.reader.read_until(b'\n', &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                self.number += 1;
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                match String::from_utf8(buf) {
                    Ok(line) => Some(Ok(vec![line])),
                    Err(_) => {
                        self.done = true;
                        Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("input line {} is not valid UTF-8", self.number),
                        )))
                    }
                }
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn product_varies_the_last_group_fastest() {
        let rows: Vec<_> =
            cartesian(vec![strings(&["a", "b"]), strings(&["1", "2", "3"])]).collect();
        let want: Vec<Vec<String>> = [
            ["a", "1"],
            ["a", "2"],
            ["a", "3"],
            ["b", "1"],
            ["b", "2"],
            ["b", "3"],
        ]
        .iter()
        .map(|r| strings(r))
        .collect();
        assert_eq!(rows, want);
    }

    #[test]
    fn product_knows_its_size() {
        let mut p = cartesian(vec![strings(&["a", "b"]), strings(&["1", "2", "3"])]);
        assert_eq!(p.size_hint(), (6, Some(6)));
        p.next();
        assert_eq!(p.size_hint(), (5, Some(5)));
        assert_eq!(p.count(), 5);
        assert_eq!(cartesian(vec![strings(&["a"]), vec![]]).count(), 0);
        assert_eq!(cartesian(vec![]).count(), 0);
    }

    #[test]
    fn lines_strip_newlines_and_keep_empty_lines() {
        let rows: Vec<_> = lines(io::Cursor::new("l1\nl 2\n\nl4"))
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            vec![
                strings(&["l1"]),
                strings(&["l 2"]),
                strings(&[""]),
                strings(&["l4"])
            ]
        );
    }

    #[test]
    fn a_non_utf8_line_is_an_error() {
        let mut it = lines(io::Cursor::new(b"ok\n\xff\nmore\n".to_vec()));
        assert_eq!(it.next().unwrap().unwrap(), strings(&["ok"]));
        let e = it.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(it.next().is_none());
    }
}
