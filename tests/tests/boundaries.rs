//! The crates' dependency rule, read from `cargo metadata`: the core knows
//! nothing of ours, the capabilities only the core, the node client the core
//! and the capabilities, and the tracker the same two, never the node's
//! internals. A crate that starts to depend on one it must not fails here.

use std::collections::{BTreeMap, BTreeSet};

/// Each of our crates, and ours it may depend on (normal and build
/// dependencies; dev-dependencies of tests are not linked into it).
const RULE: [(&str, &[&str]); 4] = [
    ("ucanto", &[]),
    ("etracker-capabilities", &["ucanto"]),
    ("etracker-client", &["ucanto", "etracker-capabilities"]),
    ("etracker-server", &["ucanto", "etracker-capabilities"]),
];

#[test]
fn crates_depend_only_on_what_the_rule_allows() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(etracker_e2e::repo_root())
        .output()
        .expect("cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ours: BTreeSet<String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap().to_string();
        let deps = found.entry(name).or_default();
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let linked = dep["kind"].is_null() || dep["kind"] == "build";
            if linked && ours.contains(dep_name) {
                deps.insert(dep_name.to_string());
            }
        }
    }
    for (krate, allowed) in RULE {
        let deps = found
            .get(krate)
            .unwrap_or_else(|| panic!("{krate} is not in the workspace"));
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        let extra: Vec<&String> = deps.difference(&allowed).collect();
        assert!(
            extra.is_empty(),
            "{krate} depends on {extra:?}, which the rule forbids"
        );
    }
}

/// Most lines a production source file may have, its tests aside.
const MAX_PRODUCTION_LINES: usize = 700;

/// The house stays small: no production file of ours over
/// [`MAX_PRODUCTION_LINES`] (counted up to its `#[cfg(test)]` module; files
/// that are tests are left out). A file that grows past it is cut along its
/// seams in the same change.
#[test]
fn no_production_file_outgrows_the_limit() {
    fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let root = etracker_e2e::repo_root();
    let mut files = Vec::new();
    for dir in ["src", "server/src", "capabilities/src", "client/src"] {
        walk(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut too_long = Vec::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Up to the test module: `#[cfg(test)]` then `mod …` at the top level
        // (a test-only item elsewhere counts).
        let production = lines
            .windows(2)
            .position(|w| w[0] == "#[cfg(test)]" && w[1].starts_with("mod "))
            .unwrap_or(lines.len());
        if production > MAX_PRODUCTION_LINES {
            too_long.push(format!("{} ({production} lines)", file.display()));
        }
    }
    assert!(
        too_long.is_empty(),
        "over {MAX_PRODUCTION_LINES}: {too_long:?}"
    );
}
