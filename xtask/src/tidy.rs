//! `cargo xtask tidy`: repository hygiene checks (module docs, lints tables, unwrap, dbg/todo, docs).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Directories (relative to the root) whose `.rs` files must start with `//!`.
const RS_ROOTS: &[&str] = &[
    "kernel",
    "plugin-api",
    "plugins",
    "compat",
    "tests",
    "xtask",
];

/// Directories whose `src/` trees are library/binary source: no `.unwrap()`.
const SRC_ROOTS: &[&str] = &["kernel", "plugin-api", "plugins", "compat"];

/// Directory names never descended into.
const SKIP_DIRS: &[&str] = &["target", "fixtures"];

/// Files that must exist at the root.
const REQUIRED_DOCS: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "BENCHMARKS.md",
    "docs/agent-protocol.md",
];

/// A line carrying this marker may call `.unwrap()`.
const ALLOW_UNWRAP: &str = "// tidy: allow-unwrap";

/// One hygiene problem, shown as `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path relative to the workspace root.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// Run every check on the workspace at `root`; an empty list means tidy.
pub fn check(root: &Path) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    check_module_docs(root, &mut problems)?;
    check_lints_tables(root, &mut problems)?;
    check_source_bans(root, &mut problems)?;
    check_required_docs(root, &mut problems);
    Ok(problems)
}

fn problem(root: &Path, path: &Path, line: usize, message: impl Into<String>) -> Problem {
    Problem {
        path: path.strip_prefix(root).unwrap_or(path).to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Every `.rs` file under `dir`, recursively, sorted; skips `target`, `fixtures`
/// and hidden directories. A missing `dir` yields nothing.
fn rs_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    collect(dir, &mut |p| {
        if p.extension().is_some_and(|e| e == "rs") {
            out.push(p.to_path_buf());
        }
    })?;
    out.sort();
    Ok(out)
}

fn collect(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let ty = entry
            .file_type()
            .with_context(|| format!("stat {}", path.display()))?;
        if ty.is_dir() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if SKIP_DIRS.contains(&name.as_ref()) || name.starts_with('.') {
                continue;
            }
            collect(&path, f)?;
        } else if ty.is_file() {
            f(&path);
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Every `.rs` file's first line is a `//!` module doc comment.
fn check_module_docs(root: &Path, problems: &mut Vec<Problem>) -> Result<()> {
    for dir in RS_ROOTS {
        for file in rs_files(&root.join(dir))? {
            let text = read_text(&file)?;
            let first = text.lines().next().unwrap_or("");
            if !first.trim_start_matches('\u{feff}').starts_with("//!") {
                problems.push(problem(
                    root,
                    &file,
                    1,
                    "first line must be a `//!` comment saying what the file is for",
                ));
            }
        }
    }
    Ok(())
}

/// Every workspace member's Cargo.toml has `[lints] workspace = true`.
fn check_lints_tables(root: &Path, problems: &mut Vec<Problem>) -> Result<()> {
    let manifest_path = root.join("Cargo.toml");
    let manifest: toml::Table = read_text(&manifest_path)?
        .parse()
        .with_context(|| format!("parsing {}", manifest_path.display()))?;
    let workspace = manifest.get("workspace").and_then(toml::Value::as_table);
    let strings = |key: &str| -> Vec<String> {
        workspace
            .and_then(|w| w.get(key))
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let excluded: Vec<PathBuf> = strings("exclude")
        .iter()
        .map(|e| root.join(e.trim_end_matches('/')))
        .collect();

    let mut crates = Vec::new();
    if manifest.contains_key("package") {
        crates.push(root.to_path_buf());
    }
    for member in strings("members") {
        let is_glob = member.contains(['*', '?', '[']);
        let dirs = expand_member(root, &member)?;
        for dir in dirs {
            if excluded.iter().any(|e| dir.starts_with(e)) {
                continue;
            }
            if dir.join("Cargo.toml").is_file() {
                crates.push(dir);
            } else if !is_glob {
                problems.push(problem(
                    root,
                    &manifest_path,
                    line_of(&read_text(&manifest_path)?, &member),
                    format!("workspace member `{member}` has no Cargo.toml"),
                ));
            }
        }
    }
    crates.sort();
    crates.dedup();

    for dir in crates {
        let path = dir.join("Cargo.toml");
        let text = read_text(&path)?;
        if let Some(p) = lints_problem(&text) {
            problems.push(problem(root, &path, p.0, p.1));
        }
    }
    Ok(())
}

/// What is wrong with a member manifest's lints setting, if anything, as (line, message).
fn lints_problem(text: &str) -> Option<(usize, String)> {
    const EXPECTED: &str = "expected a `[lints]` table with `workspace = true`";
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            return Some((line, format!("cannot parse manifest: {}", e.message())));
        }
    };
    let lints_line = text
        .lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with("[lints") || l.starts_with("lints")
        })
        .map_or(1, |i| i + 1);
    match table.get("lints") {
        None => Some((1, format!("no `[lints]` table; {EXPECTED}"))),
        Some(lints) => {
            let ok = lints
                .get("workspace")
                .and_then(toml::Value::as_bool)
                .unwrap_or(false);
            (!ok).then(|| {
                (
                    lints_line,
                    format!("`[lints]` does not inherit; {EXPECTED}"),
                )
            })
        }
    }
}

/// 1-based line of the first occurrence of `needle` in `text`, or 1.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(1, |i| i + 1)
}

/// Expand a `members` entry (components may contain `*`/`?` wildcards) into
/// existing directories. A literal entry comes back as is, existing or not.
fn expand_member(root: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let mut current = vec![root.to_path_buf()];
    for component in pattern.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let mut next = Vec::new();
        for base in &current {
            if !component.contains(['*', '?']) {
                next.push(base.join(component));
                continue;
            }
            if !base.is_dir() {
                continue;
            }
            for entry in
                fs::read_dir(base).with_context(|| format!("reading {}", base.display()))?
            {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if entry.path().is_dir() && !name.starts_with('.') && wildcard(component, &name) {
                    next.push(entry.path());
                }
            }
        }
        current = next;
    }
    current.sort();
    Ok(current)
}

/// Shell-style match of `name` against `pattern` with `*` and `?`.
pub(crate) fn wildcard(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// No `.unwrap()` in library/binary source (outside tests), and no `dbg!(` /
/// `todo!(` in any checked `.rs` file.
fn check_source_bans(root: &Path, problems: &mut Vec<Problem>) -> Result<()> {
    // Built by concatenation so this file does not trip its own check.
    let dbg = concat!("dbg", "!(");
    let todo = concat!("todo", "!(");

    let mut src_files = Vec::new();
    for dir in SRC_ROOTS {
        for src in src_dirs(&root.join(dir))? {
            src_files.extend(rs_files(&src)?);
        }
    }
    src_files.sort();
    src_files.dedup();
    for file in &src_files {
        if is_test_only_file(file) {
            continue;
        }
        let text = read_text(file)?;
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("#[cfg(test)]") {
                break;
            }
            if code.starts_with("//") || line.contains(ALLOW_UNWRAP) {
                continue;
            }
            if line.contains(".unwrap()") {
                problems.push(problem(
                    root,
                    file,
                    i + 1,
                    format!(
                        "`.unwrap()` in non-test source; expected `?`, `expect(\"why\")` or \
                         a `{ALLOW_UNWRAP}` comment on the line"
                    ),
                ));
            }
        }
    }

    for dir in RS_ROOTS {
        for file in rs_files(&root.join(dir))? {
            let text = read_text(&file)?;
            for (i, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for banned in [dbg, todo] {
                    if line.contains(banned) {
                        problems.push(problem(
                            root,
                            &file,
                            i + 1,
                            format!("`{banned}` left in; expected it removed"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every directory named `src` at or below `dir` (crates may nest, e.g. `plugins/*/src`).
fn src_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    if dir.file_name().is_some_and(|n| n == "src") {
        out.push(dir.to_path_buf());
        return Ok(out);
    }
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.path().is_dir() && !name.starts_with('.') && !SKIP_DIRS.contains(&name.as_ref()) {
            out.extend(src_dirs(&entry.path())?);
        }
    }
    Ok(out)
}

/// `tests.rs` files and files inside a `tests/` directory under `src/` are
/// test modules (`#[cfg(test)] mod tests;`).
fn is_test_only_file(file: &Path) -> bool {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return true;
    }
    let mut in_src = false;
    for c in file.parent().into_iter().flat_map(Path::components) {
        let c = c.as_os_str();
        if c == "src" {
            in_src = true;
        } else if in_src && c == "tests" {
            return true;
        }
    }
    false
}

fn check_required_docs(root: &Path, problems: &mut Vec<Problem>) {
    for doc in REQUIRED_DOCS {
        if !root.join(doc).is_file() {
            problems.push(Problem {
                path: PathBuf::from(doc),
                line: 1,
                message: "missing; expected this file at the repository root".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory tree removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Result<Self> {
            let dir = std::env::temp_dir().join(format!(
                "xtask-tidy-{}-{}-{name}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos()
            ));
            fs::create_dir_all(&dir)?;
            Ok(Tree(dir))
        }

        fn file(&self, rel: &str, text: &str) -> Result<&Self> {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(path, text)?;
            Ok(self)
        }

        /// A tidy workspace: members kernel, xtask and plugins/*, with docs.
        fn tidy_workspace(name: &str) -> Result<Self> {
            let t = Tree::new(name)?;
            let lints = "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n";
            t.file(
                "Cargo.toml",
                "[workspace]\nmembers = [\"kernel\", \"xtask\", \"plugins/*\"]\nexclude = [\"plugins/skipped\"]\n",
            )?
            .file("kernel/Cargo.toml", lints)?
            .file("kernel/src/lib.rs", "//! The kernel.\npub fn f() {}\n")?
            .file(
                "kernel/src/bin/hive/main.rs",
                "//! The binary.\nfn main() { let _ = std::env::args().next(); }\n",
            )?
            .file("xtask/Cargo.toml", "lints.workspace = true\n[package]\nname = \"xtask\"\n")?
            .file("xtask/src/main.rs", "//! Tasks.\nfn main() { Some(1).unwrap(); }\n")?
            .file("plugins/echo/Cargo.toml", lints)?
            .file("plugins/echo/src/lib.rs", "//! Echo.\n")?
            .file("plugins/notes/README.md", "not a crate\n")?
            .file("plugins/skipped/Cargo.toml", "[package]\nname = \"s\"\n")?
            .file("tests/fixtures/bad.rs", "fn no_doc() { x.unwrap(); }\n")?
            .file("kernel/target/debug/build/gen.rs", "no doc\n")?
            .file("README.md", "")?
            .file("ARCHITECTURE.md", "")?
            .file("BENCHMARKS.md", "")?
            .file("docs/agent-protocol.md", "")?;
            Ok(t)
        }

        fn problems(&self) -> Result<Vec<String>> {
            Ok(check(&self.0)?.iter().map(ToString::to_string).collect())
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn tidy_tree_passes() -> Result<()> {
        let t = Tree::tidy_workspace("clean")?;
        assert_eq!(t.problems()?, Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn missing_module_doc() -> Result<()> {
        let t = Tree::tidy_workspace("doc")?;
        t.file("kernel/src/a.rs", "\n//! Late doc.\n")?
            .file("tests/tests/cli.rs", "// plain comment\n")?
            .file("plugins/echo/src/empty.rs", "")?
            .file("xtask/src/ok.rs", "//! Fine.\n")?;
        let p = t.problems()?;
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].starts_with("kernel/src/a.rs:1: first line must be a `//!`"),
            "{p:#?}"
        );
        assert!(p[1].starts_with("plugins/echo/src/empty.rs:1:"), "{p:#?}");
        assert!(p[2].starts_with("tests/tests/cli.rs:1:"), "{p:#?}");
        Ok(())
    }

    #[test]
    fn lints_tables() -> Result<()> {
        let t = Tree::tidy_workspace("lints")?;
        t.file("kernel/Cargo.toml", "[package]\nname = \"k\"\n")?
            .file(
                "plugins/echo/Cargo.toml",
                "[package]\nname = \"e\"\n\n[lints]\nworkspace = false\n",
            )?
            .file(
                "plugins/shell/Cargo.toml",
                "[package]\nname = \"s\"\n[lints.rust]\n",
            )?
            .file("plugins/shell/src/lib.rs", "//! Shell.\n")?
            .file("plugins/broken/Cargo.toml", "[package\n")?;
        let p = t.problems()?;
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(
            p[0].starts_with("kernel/Cargo.toml:1: no `[lints]` table"),
            "{p:#?}"
        );
        assert!(
            p[1].starts_with("plugins/broken/Cargo.toml:1: cannot parse"),
            "{p:#?}"
        );
        assert!(
            p[2].starts_with("plugins/echo/Cargo.toml:4: `[lints]` does not inherit"),
            "{p:#?}"
        );
        assert!(
            p[3].starts_with("plugins/shell/Cargo.toml:3: `[lints]` does not inherit"),
            "{p:#?}"
        );
        Ok(())
    }

    #[test]
    fn literal_member_without_manifest() -> Result<()> {
        let t = Tree::tidy_workspace("member")?;
        t.file(
            "Cargo.toml",
            "[workspace]\nmembers = [\n  \"kernel\",\n  \"ghost\",\n]\n",
        )?;
        let p = t.problems()?;
        assert_eq!(
            p,
            ["Cargo.toml:4: workspace member `ghost` has no Cargo.toml"],
            "{p:#?}"
        );
        Ok(())
    }

    #[test]
    fn unwrap_in_library_source() -> Result<()> {
        let t = Tree::tidy_workspace("unwrap")?;
        t.file(
            "kernel/src/registry.rs",
            "//! Registry.\n\
             fn a() { x.unwrap(); }\n\
             fn b() { x.unwrap(); } // tidy: allow-unwrap\n\
             /// Docs may show `x.unwrap()`.\n\
             fn c() { x.unwrap_or(1); x.unwrap_err(); }\n\
             #[cfg(test)]\n\
             mod tests { fn t() { x.unwrap(); } }\n",
        )?
        .file(
            "kernel/src/bin/hive/main.rs",
            "//! Bin.\nfn main() { y.unwrap(); }\n",
        )?
        .file(
            "kernel/src/sched/tests.rs",
            "//! Tests.\nfn t() { x.unwrap(); }\n",
        )?
        .file(
            "kernel/src/sched/tests/more.rs",
            "//! Tests.\nfn t() { x.unwrap(); }\n",
        )?
        .file(
            "plugins/echo/src/lib.rs",
            "//! Echo.\n\nfn e() { z.unwrap() }\n",
        )?
        .file("compat/src/lib.rs", "//! Compat.\nfn c() { w.unwrap(); }\n")?
        .file(
            "kernel/benches/kernel.rs",
            "//! Bench.\nfn b() { x.unwrap(); }\n",
        )?
        .file("tests/tests/cli.rs", "//! CLI.\nfn t() { x.unwrap(); }\n")?;
        let p = t.problems()?;
        let located: Vec<&str> = p
            .iter()
            .map(|s| s.split(": ").next().unwrap_or(""))
            .collect();
        assert_eq!(
            located,
            [
                "compat/src/lib.rs:2",
                "kernel/src/bin/hive/main.rs:2",
                "kernel/src/registry.rs:2",
                "plugins/echo/src/lib.rs:3",
            ],
            "{p:#?}"
        );
        assert!(p
            .iter()
            .all(|s| s.contains("`.unwrap()` in non-test source")));
        Ok(())
    }

    #[test]
    fn dbg_and_todo_anywhere() -> Result<()> {
        let t = Tree::tidy_workspace("dbg")?;
        let dbg = concat!("dbg", "!(x)");
        let todo = concat!("todo", "!()");
        t.file(
            "kernel/src/lib.rs",
            &format!(
                "//! K.\nfn a() {{ {dbg}; }}\n#[cfg(test)]\nmod t {{ fn b() {{ {todo} }} }}\n"
            ),
        )?
        .file(
            "tests/tests/cli.rs",
            &format!("//! CLI.\n// {todo} in a comment is fine\nfn c() {{ {dbg}; }}\n"),
        )?
        .file(
            "xtask/src/main.rs",
            &format!("//! X.\nfn main() {{ {todo} }}\n"),
        )?
        .file(
            "tests/fixtures/deep/x.rs",
            &format!("fn f() {{ {todo} }}\n"),
        )?;
        let p = t.problems()?;
        let located: Vec<&str> = p
            .iter()
            .map(|s| s.split(": ").next().unwrap_or(""))
            .collect();
        assert_eq!(
            located,
            [
                "kernel/src/lib.rs:2",
                "kernel/src/lib.rs:4",
                "tests/tests/cli.rs:3",
                "xtask/src/main.rs:2",
            ],
            "{p:#?}"
        );
        Ok(())
    }

    #[test]
    fn required_docs() -> Result<()> {
        let t = Tree::tidy_workspace("docs")?;
        fs::remove_file(t.0.join("BENCHMARKS.md"))?;
        fs::remove_file(t.0.join("docs/agent-protocol.md"))?;
        let p = t.problems()?;
        assert_eq!(
            p,
            [
                "BENCHMARKS.md:1: missing; expected this file at the repository root",
                "docs/agent-protocol.md:1: missing; expected this file at the repository root",
            ]
        );
        Ok(())
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard("*", "echo"));
        assert!(wildcard("e*o", "echo"));
        assert!(wildcard("ec?o", "echo"));
        assert!(wildcard("*-plugin", "shell-plugin"));
        assert!(!wildcard("*-plugin", "shell"));
        assert!(!wildcard("e?", "echo"));
    }
}
