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
