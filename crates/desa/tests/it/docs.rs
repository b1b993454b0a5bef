//! The documents against the code: every `desa` command in the READMEs'
//! code blocks uses flags its subcommand has, and every repository path the
//! documents cite exists (`COMMIT:path`, or a path in a code block that
//! checks out an older commit, cites a file of that commit and is left
//! alone).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const DOCUMENTS: [&str; 5] = [
    "README.md",
    "DEVELOPERS.md",
    "docs/DESIGN.md",
    "docs/BENCHMARKS.md",
    "deploy/kubernetes/README.md",
];

/// Shell lines of the fenced code blocks, continuations joined and
/// comments dropped.
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut fenced, mut pending) = (false, String::new());
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            continue;
        }
        let line = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        match line.trim_end().strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

/// Each `desa` invocation in a shell line: its subcommand and the tokens
/// after it.
fn invocations(line: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let line = line.replace("$(", " | ").replace(" -- ", " | ");
    for part in line.split(['|', ';', '&']) {
        let tokens: Vec<&str> = part.split_whitespace().collect();
        let Some(at) = tokens
            .iter()
            .position(|t| *t == "desa" || t.ends_with("/desa"))
        else {
            continue;
        };
        let Some(sub) = tokens.get(at + 1) else {
            continue;
        };
        if sub.starts_with('-') || !sub.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        let rest = tokens[at + 2..].iter().map(|t| t.to_string()).collect();
        out.push((sub.to_string(), rest));
    }
    out
}

/// `desa <path> --help`.
fn help(path: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "desa {} --help", path.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands a help text lists under `Commands:`.
fn nested_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_desa_command_in_the_readmes_uses_flags_the_binary_has() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for doc in ["README.md", "deploy/kubernetes/README.md"] {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap();
        for line in code_lines(&text) {
            for (sub, rest) in invocations(&line) {
                // Flags may be the subcommand's or, after a nested command
                // (`desa query ... avg --device-id`), that one's.
                let mut text = help(&[&sub]);
                let nested = nested_commands(&text);
                if let Some(n) = rest.iter().find(|t| nested.contains(t)) {
                    text.push_str(&help(&[&sub, n]));
                }
                for flag in rest.iter().filter(|t| t.starts_with("--") && t.len() > 2) {
                    let flag = flag.split('=').next().unwrap_or(flag);
                    checked += 1;
                    if !text.contains(&format!("{flag} ")) && !text.contains(&format!("{flag}\n")) {
                        wrong.push(format!("{doc}: desa {sub} has no {flag}: {line}"));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} flags found: is the parsing right?"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Repository paths in `text`: a top-level folder's name, a slash and more,
/// not inside a longer path (`/var/tmp/bench/...`) or after `COMMIT:`.
fn cited_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for root in ["crates/", "docs/", "bench/", "scripts/", "deploy/", ".ci/"] {
        for (i, _) in text.match_indices(root) {
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || "/.~$:-_".contains(c)) {
                continue;
            }
            let path: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "_./*{}-".contains(*c))
                .collect();
            let path = path.trim_end_matches(['.', ',', ';', ':', ')']).to_string();
            if !path.contains('*') && !path.contains('{') && path.len() > root.len() {
                out.push(path);
            }
        }
    }
    out
}

/// `text` without the fenced code blocks that `git checkout` an older
/// commit: their paths are that commit's.
fn current_text(text: &str) -> String {
    let mut out = String::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut block, fence) {
            (None, true) => block = Some(String::new()),
            (None, false) => {
                out.push_str(line);
                out.push('\n');
            }
            (Some(b), false) => {
                b.push_str(line);
                b.push('\n');
            }
            (Some(b), true) => {
                if !b.contains("git checkout ") {
                    out.push_str(b);
                }
                block = None;
            }
        }
    }
    out
}

#[test]
fn every_path_the_documents_cite_exists() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in DOCUMENTS {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap();
        for path in cited_paths(&current_text(&text)) {
            checked += 1;
            if !repo().join(&path).exists() {
                missing.push(format!("{doc}: {path}"));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the parsing right?"
    );
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
