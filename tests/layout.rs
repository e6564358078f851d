//! Layout rules for the source tree, checked by reading the files (no compilation):
//!
//! 1. no library source file (`src/**/*.rs`, `mes-sim/src/**/*.rs`) has more than 700 lines
//!    of non-test code (the lines before its test section); a file that is a test module
//!    itself (`#[cfg(test)] mod tests;` in its parent) is exempt;
//! 2. no module cycle at file level in `src/`: a module's `crate::…`, `super::…` and
//!    `self::…` paths are its dependencies, except those on its own ancestors or
//!    descendants (that is the module tree);
//! 3. each `src/**/*.rs` file starts with a `//!` line saying what it owns.
//!
//! The checks take a crate's `src` directory, so the synthetic-tree tests at the end can
//! show that each rule does fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Most lines of non-test code a source file may have.
const MAX_NON_TEST_LINES: usize = 700;

/// The attribute that starts a file's test section (when it is exactly a line).
const TEST_ATTR: &str = "#[cfg(test)]";

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries =
            fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()))
                .path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `path` relative to `base`, for messages.
fn shown(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The name declared by an out-of-line module declaration (`mod name;`, `pub mod name;`,
/// `pub(crate) mod name;`, …), if `line` is one.
fn mod_decl(line: &str) -> Option<&str> {
    let mut rest = line.trim();
    if let Some(r) = rest.strip_prefix("pub") {
        rest = r.trim_start();
        if rest.starts_with('(') {
            rest = rest[rest.find(')')? + 1..].trim_start();
        }
    }
    let name = rest.strip_prefix("mod ")?.trim().strip_suffix(';')?.trim();
    let valid = !name.is_empty() && name.bytes().all(is_ident_byte);
    valid.then_some(name)
}

/// The lines of `text` before its test section: the first line that is exactly
/// `#[cfg(test)]`, unless that attribute only declares an out-of-line test module
/// (`#[cfg(test)]` then `mod tests;`), which is a declaration, not the test code itself.
fn non_test_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| lines[i] == TEST_ATTR && lines.get(i + 1).and_then(|l| mod_decl(l)).is_none())
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

/// The files under `src` that are test modules themselves: declared `#[cfg(test)]` (the
/// attribute right above the `mod name;` line, possibly among other attributes) in the
/// file of their parent module.
fn test_module_files(src: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for file in rs_files(src) {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        // Where this file's child modules live: `a/mod.rs`, `lib.rs`, `main.rs` → `a/`
        // (the crate root's directory); `a/b.rs` → `a/b/`.
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let child_dir = if matches!(stem, "mod" | "lib" | "main") {
            file.parent().unwrap_or(src).to_path_buf()
        } else {
            file.with_extension("")
        };
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = mod_decl(line) else { continue };
            let is_test = lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim())
                .take_while(|l| l.starts_with("#["))
                .any(|l| l == TEST_ATTR);
            if is_test {
                out.insert(child_dir.join(format!("{name}.rs")));
                out.insert(child_dir.join(name).join("mod.rs"));
            }
        }
    }
    out
}

/// Rule 1: one message per file under `src` with more than [`MAX_NON_TEST_LINES`] lines
/// of non-test code (test-module files are exempt). `base` is what paths are shown from.
fn oversized_files(src: &Path, base: &Path) -> Vec<String> {
    let exempt = test_module_files(src);
    rs_files(src)
        .into_iter()
        .filter(|f| !exempt.contains(f))
        .filter_map(|f| {
            let n = non_test_lines(&read(&f)).len();
            (n > MAX_NON_TEST_LINES).then(|| {
                format!(
                    "{}: {n} lines of non-test code (the lines before the first \
                     `{TEST_ATTR}` line), more than the {MAX_NON_TEST_LINES} allowed ({} \
                     over): split it",
                    shown(&f, base),
                    n - MAX_NON_TEST_LINES,
                )
            })
        })
        .collect()
}

/// Rule 3: one message per file under `src` whose first line is not a `//!` module doc.
fn files_missing_module_doc(src: &Path, base: &Path) -> Vec<String> {
    rs_files(src)
        .into_iter()
        .filter(|f| !read(f).lines().next().is_some_and(|l| l.starts_with("//!")))
        .map(|f| {
            format!(
                "{}: line 1 is not a `//!` module doc saying what the module owns",
                shown(&f, base)
            )
        })
        .collect()
}

/// The module a file under `src` is (`a/b.rs` and `a/b/mod.rs` are `a::b`); `None` for
/// the crate roots (`lib.rs`, `main.rs`) and for binaries under `src/bin/`.
fn module_of(file: &Path, src: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if parts.len() > 1 && parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    Some(parts.join("::"))
}

/// Every path in `code` that starts with `crate::`, `super::` or `self::`, as segments.
/// Use-tree groups are expanded: `crate::{a::X, b::{self, Y}}` gives `crate::a::X`,
/// `crate::b::self` and `crate::b::Y`.
fn module_paths(code: &str) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts_path = ["crate::", "super::", "self::"]
            .iter()
            .any(|p| b[i..].starts_with(p.as_bytes()));
        let boundary = i == 0 || !(is_ident_byte(b[i - 1]) || b[i - 1] == b':');
        if starts_path && boundary {
            i = parse_tree(b, i, &[], &mut out);
        } else {
            i += 1;
        }
    }
    out
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Parses one path (or use tree) at `i` after `prefix`, pushing what it names onto `out`;
/// returns where it ends.
fn parse_tree(b: &[u8], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut segs = prefix.to_vec();
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'{') => return parse_group(b, i + 1, &segs, out),
            Some(b'*') => {
                out.push(segs);
                return i + 1;
            }
            _ => {}
        }
        let start = i;
        while i < b.len() && is_ident_byte(b[i]) {
            i += 1;
        }
        if i == start {
            out.push(segs);
            return i;
        }
        segs.push(String::from_utf8_lossy(&b[start..i]).into_owned());
        if b[i..].starts_with(b"::") {
            i += 2;
        } else {
            out.push(segs);
            return i;
        }
    }
}

/// Parses the items of a use-tree group after its `{`; returns where its `}` ends.
fn parse_group(b: &[u8], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            None => return i,
            Some(b'}') => return i + 1,
            Some(b',') => i += 1,
            Some(_) => {
                let end = parse_tree(b, i, prefix, out);
                // Past the item's tail (`as Name`, or anything unexpected) to `,` or `}`.
                i = end.max(i + 1);
                while i < b.len() && b[i] != b',' && b[i] != b'}' {
                    i += 1;
                }
            }
        }
    }
}

/// The module `path` (as written in module `cur`) points into: the longest prefix of it
/// that is a module in `mods`. `None` for paths outside the crate or to the crate root.
fn resolve(path: &[String], cur: &str, mods: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<&str> = cur.split("::").filter(|s| !s.is_empty()).collect();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let full: Vec<&str> = base
        .into_iter()
        .chain(rest.iter().map(String::as_str))
        .collect();
    (1..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|m| mods.contains(m))
}

/// One edge's evidence: the path that made it and the file it is in.
type Why = String;

/// The file-level module graph of the crate under `src`: module → dependency → why.
/// Test-module files, comment lines (trimmed text starting with `//`) and each file's
/// test section are left out; edges to a module's own ancestors or descendants are not
/// kept.
fn module_graph(src: &Path, base: &Path) -> BTreeMap<String, BTreeMap<String, Why>> {
    let exempt = test_module_files(src);
    let files: BTreeMap<String, PathBuf> = rs_files(src)
        .into_iter()
        .filter(|f| !exempt.contains(f))
        .filter_map(|f| Some((module_of(&f, src)?, f)))
        .collect();
    let mods: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (m, file) in &files {
        let text = read(file);
        let code: String = non_test_lines(&text)
            .into_iter()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut deps: BTreeMap<String, Why> = BTreeMap::new();
        for path in module_paths(&code) {
            let Some(d) = resolve(&path, m, &mods) else {
                continue;
            };
            let related =
                d == *m || m.starts_with(&format!("{d}::")) || d.starts_with(&format!("{m}::"));
            if !related {
                let why = format!("`{}` in {}", path.join("::"), shown(file, base));
                deps.entry(d).or_insert(why);
            }
        }
        graph.insert(m.clone(), deps);
    }
    graph
}

/// The graph's cycles: its strongly connected components of more than one module
/// (Tarjan's algorithm), each sorted, in a stable order.
fn module_cycles(graph: &BTreeMap<String, BTreeMap<String, Why>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeMap<String, Why>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        sccs: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flat_map(|deps| deps.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.sccs.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        sccs: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.sccs.sort();
    t.sccs
}

/// Rule 2: one message per module cycle in the crate under `src`, naming its modules and
/// the edges between them (with the path and file behind each).
fn cycle_violations(src: &Path, base: &Path) -> Vec<String> {
    let graph = module_graph(src, base);
    module_cycles(&graph)
        .into_iter()
        .map(|scc| {
            let edges: Vec<String> = scc
                .iter()
                .flat_map(|m| {
                    graph[m]
                        .iter()
                        .filter(|(d, _)| scc.contains(d))
                        .map(move |(d, why)| format!("    {m} -> {d} ({why})"))
                })
                .collect();
            format!(
                "module cycle among {} modules: {}\n{}",
                scc.len(),
                scc.join(", "),
                edges.join("\n")
            )
        })
        .collect()
}

#[track_caller]
fn assert_none(rule: &str, violations: &[String]) {
    assert!(
        violations.is_empty(),
        "{rule}: {} violation(s):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn no_source_file_has_more_than_700_lines_of_non_test_code() {
    let root = project_root();
    let mut violations = oversized_files(&root.join("src"), &root);
    violations.extend(oversized_files(&root.join("mes-sim/src"), &root));
    assert_none(
        "layout rule 1 (at most 700 lines of non-test code)",
        &violations,
    );
}

#[test]
fn no_module_cycle() {
    let root = project_root();
    assert_none(
        "layout rule 2 (no module cycle)",
        &cycle_violations(&root.join("src"), &root),
    );
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let root = project_root();
    assert_none(
        "layout rule 3 (`//!` on line 1)",
        &files_missing_module_doc(&root.join("src"), &root),
    );
}

/// The checks themselves, against small synthetic trees.
mod checks {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str, files: &[(&str, String)]) -> Tree {
            let dir =
                std::env::temp_dir().join(format!("mesgate-layout-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            for (path, text) in files {
                let path = dir.join(path);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, text).unwrap();
            }
            Tree(dir)
        }

        fn src(&self) -> PathBuf {
            self.0.join("src")
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A module doc line and then `n - 1` more lines.
    fn lines(n: usize) -> String {
        let mut s = String::from("//! Synthetic.\n");
        for i in 1..n {
            s.push_str(&format!("const C{i}: u32 = {i};\n"));
        }
        s
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    #[test]
    fn a_701_line_file_is_too_long_and_700_is_not() {
        let tree = Tree::new(
            "long",
            &[
                ("src/lib.rs", s("//! Root.\npub mod ok;\npub mod long;\n")),
                ("src/ok.rs", lines(700)),
                ("src/long.rs", lines(701)),
            ],
        );
        let v = oversized_files(&tree.src(), &tree.0);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("src/long.rs: 701 lines"), "{v:?}");
        assert!(v[0].contains("(1 over)"), "{v:?}");
    }

    #[test]
    fn test_code_and_test_module_files_do_not_count() {
        let with_tests = format!(
            "{}#[cfg(test)]\nmod tests {{\n{}}}\n",
            lines(700),
            lines(300)
        );
        let tree = Tree::new(
            "tests",
            &[
                ("src/lib.rs", s("//! Root.\npub mod a;\n")),
                ("src/a/mod.rs", with_tests),
                ("src/a/tests.rs", s("//! Tests.\n")),
                (
                    "src/b/mod.rs",
                    s("//! B.\n#[cfg(test)]\n#[allow(dead_code)]\nmod tests;\n"),
                ),
                ("src/b/tests.rs", lines(800)),
            ],
        );
        let exempt = test_module_files(&tree.src());
        assert!(
            exempt.contains(&tree.src().join("b/tests.rs")),
            "{exempt:?}"
        );
        assert_eq!(oversized_files(&tree.src(), &tree.0), Vec::<String>::new());
    }

    #[test]
    fn a_test_module_declaration_does_not_end_the_non_test_code() {
        // `#[cfg(test)] mod tests;` near the top, then 701 lines of real code.
        let text = format!("//! Root.\n#[cfg(test)]\nmod tests;\n{}", lines(701));
        let tree = Tree::new(
            "decl",
            &[("src/lib.rs", text), ("src/tests.rs", lines(900))],
        );
        let v = oversized_files(&tree.src(), &tree.0);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("src/lib.rs: 704 lines"), "{v:?}");
    }

    #[test]
    fn a_missing_module_doc_is_reported() {
        let tree = Tree::new(
            "doc",
            &[
                ("src/lib.rs", s("//! Root.\npub mod a;\npub mod b;\n")),
                ("src/a.rs", s("//! A.\n")),
                ("src/b.rs", s("/// Not a module doc.\npub fn f() {}\n")),
            ],
        );
        let v = files_missing_module_doc(&tree.src(), &tree.0);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("src/b.rs: line 1"), "{v:?}");
    }

    #[test]
    fn paths_are_read_from_code() {
        let code = "use crate::a::b::{C, d::{self, E as F}, *};\n\
                    let x = super::super::g::h(crate::i::J::<u8>::new());\n\
                    use self::k;\n\
                    pub(crate) fn f() -> Self::T { my_crate::x::y(); Self::z() }\n";
        let got: Vec<String> = module_paths(code).iter().map(|p| p.join("::")).collect();
        let want = [
            "crate::a::b::C",
            "crate::a::b::d::self",
            "crate::a::b::d::E",
            "crate::a::b",
            "super::super::g::h",
            "crate::i::J",
            "self::k",
        ];
        assert_eq!(got, want);
        let mods: BTreeSet<String> = ["a", "a::b", "g", "m", "m::n", "m::n::k"]
            .iter()
            .map(|m| m.to_string())
            .collect();
        let p = |s: &str| -> Vec<String> { s.split("::").map(str::to_owned).collect() };
        assert_eq!(
            resolve(&p("crate::a::b::C"), "m", &mods).as_deref(),
            Some("a::b")
        );
        assert_eq!(
            resolve(&p("super::super::g::h"), "m::n", &mods).as_deref(),
            Some("g")
        );
        assert_eq!(
            resolve(&p("super::k::x"), "m::n::k", &mods).as_deref(),
            Some("m::n::k")
        );
        assert_eq!(
            resolve(&p("self::k"), "m::n", &mods).as_deref(),
            Some("m::n::k")
        );
        assert_eq!(resolve(&p("crate::nope"), "m", &mods), None);
        assert_eq!(resolve(&p("std::io"), "m", &mods), None);
    }

    #[test]
    fn a_cycle_is_detected_and_named() {
        let tree = Tree::new(
            "cycle",
            &[
                (
                    "src/lib.rs",
                    s("//! Root.\npub mod a;\npub mod b;\npub mod c;\npub mod x;\n"),
                ),
                ("src/a.rs", s("//! A.\nuse crate::b::B;\n")),
                (
                    "src/b.rs",
                    s("//! B.\npub fn f() {\n    crate::c::g();\n}\n"),
                ),
                ("src/c.rs", s("//! C.\nuse crate::{a::A, x};\n")),
                ("src/x/mod.rs", s("//! X.\npub mod y;\n")),
                ("src/x/y.rs", s("//! Y.\nuse super::super::z::Z;\n")),
                ("src/z.rs", s("//! Z.\nuse crate::x::y::Y;\n")),
            ],
        );
        let v = cycle_violations(&tree.src(), &tree.0);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].starts_with("module cycle among 3 modules: a, b, c\n"),
            "{v:?}"
        );
        assert!(v[0].contains("a -> b (`crate::b::B` in src/a.rs)"), "{v:?}");
        assert!(v[0].contains("c -> a (`crate::a::A` in src/c.rs)"), "{v:?}");
        assert!(
            v[1].starts_with("module cycle among 2 modules: x::y, z\n"),
            "{v:?}"
        );
    }

    #[test]
    fn the_module_tree_comments_and_tests_are_not_cycles() {
        let tree = Tree::new(
            "tree",
            &[
                ("src/lib.rs", s("//! Root.\npub mod p;\npub mod q;\n")),
                // `p` depends on `q`, so an edge back from `q` would be a cycle.
                (
                    "src/p/mod.rs",
                    s(
                        "//! P.\nmod child;\npub use child::X;\nuse crate::p::child::Y;\nuse crate::q::Q;\n",
                    ),
                ),
                (
                    "src/p/child.rs",
                    s("//! Child.\nuse super::Z;\nuse crate::p::W;\n"),
                ),
                (
                    "src/q.rs",
                    s(
                        "//! Q.\n// uses crate::p::X\n#[cfg(test)]\nmod tests {\n    use crate::p::X;\n}\n",
                    ),
                ),
            ],
        );
        let graph = module_graph(&tree.src(), &tree.0);
        assert!(graph["p"].contains_key("q"), "{graph:?}");
        assert!(graph["p::child"].is_empty(), "{graph:?}");
        assert!(graph["q"].is_empty(), "{graph:?}");
        assert_eq!(cycle_violations(&tree.src(), &tree.0), Vec::<String>::new());
    }
}
