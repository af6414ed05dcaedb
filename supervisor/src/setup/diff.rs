//! A unified diff of two texts, for showing an admin what `postmaster setup` would
//! change in a file before it does. The files are configuration (hundreds of
//! lines), so a plain longest-common-subsequence table is fast enough and keeps
//! this small; no diff crate is needed.

/// Lines of unchanged context around each change, as `diff -u` shows.
const CONTEXT: usize = 3;

/// `old` → `new` as a unified diff with `---`/`+++` headers naming `old_name` and
/// `new_name`; empty when the texts are equal.
pub(crate) fn unified(old_name: &str, new_name: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = edit_script(&a, &b);
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Group the script into hunks: runs of changes with at most 2*CONTEXT equal
    // lines between them.
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    let mut i = 0;
    while i < changed.len() {
        let start = changed[i].saturating_sub(CONTEXT);
        let mut end = changed[i];
        while i + 1 < changed.len() && changed[i + 1] - end <= 2 * CONTEXT + 1 {
            i += 1;
            end = changed[i];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let (old_start, new_start) = position(&ops[..start]);
        let old_len = hunk.iter().filter(|o| !matches!(o, Op::Add(_))).count();
        let new_len = hunk.iter().filter(|o| !matches!(o, Op::Remove(_))).count();
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(old_start, old_len),
            range(new_start, new_len)
        ));
        for op in hunk {
            match op {
                Op::Same(l) => out.push_str(&format!(" {l}\n")),
                Op::Remove(l) => out.push_str(&format!("-{l}\n")),
                Op::Add(l) => out.push_str(&format!("+{l}\n")),
            }
        }
        i += 1;
    }
    if !old.is_empty() && !new.is_empty() && old.ends_with('\n') != new.ends_with('\n') {
        out.push_str("\\ the final newline differs\n");
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op<'a> {
    Same(&'a str),
    Remove(&'a str),
    Add(&'a str),
}

/// Line numbers (0-based) in the old and new text where `before` ends.
fn position(before: &[Op<'_>]) -> (usize, usize) {
    before.iter().fold((0, 0), |(o, n), op| match op {
        Op::Same(_) => (o + 1, n + 1),
        Op::Remove(_) => (o + 1, n),
        Op::Add(_) => (o, n + 1),
    })
}

/// A hunk header's range: `start,len` with 1-based start (`start` is the line
/// before when the range is empty, as diff prints it).
fn range(start0: usize, len: usize) -> String {
    if len == 0 {
        format!("{start0},0")
    } else if len == 1 {
        format!("{}", start0 + 1)
    } else {
        format!("{},{len}", start0 + 1)
    }
}

/// The shortest edit script from `a` to `b` (removals before additions in a
/// changed run, as diff prints them).
fn edit_script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Op<'a>> {
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(a.len() + b.len());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push(Op::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(Op::Remove(a[i]));
            i += 1;
        } else {
            ops.push(Op::Add(b[j]));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a", "b", "x\ny\n", "x\ny\n"), "");
    }

    #[test]
    fn a_changed_line_in_the_middle_shows_three_lines_of_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified("old", "new", old, new),
            "--- old\n+++ new\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn distant_changes_make_two_hunks_and_near_ones_one() {
        let old: String = (1..=30).map(|i| format!("{i}\n")).collect();
        let far = old
            .replace("\n3\n", "\nthree\n")
            .replace("\n27\n", "\n27b\n");
        let d = unified("o", "n", &old, &far);
        assert_eq!(d.matches("@@ ").count(), 2, "{d}");
        assert!(d.contains("@@ -1,6 +1,6 @@\n"), "{d}");
        assert!(d.contains("@@ -24,7 +24,7 @@\n"), "{d}");
        let near = old
            .replace("\n3\n", "\nthree\n")
            .replace("\n9\n", "\nnine\n");
        assert_eq!(unified("o", "n", &old, &near).matches("@@ ").count(), 1);
    }

    #[test]
    fn additions_at_the_end_and_removals_at_the_start() {
        assert_eq!(
            unified("o", "n", "a\nb\n", "a\nb\nc\n"),
            "--- o\n+++ n\n@@ -1,2 +1,3 @@\n a\n b\n+c\n"
        );
        assert_eq!(
            unified("o", "n", "a\nb\n", "b\n"),
            "--- o\n+++ n\n@@ -1,2 +1 @@\n-a\n b\n"
        );
        assert_eq!(
            unified("o", "n", "", "a\n"),
            "--- o\n+++ n\n@@ -0,0 +1 @@\n+a\n"
        );
    }
}
