//! Every failure of the `etracker` command line a person may meet ends the
//! real binary with exit code 1 and one line on stderr: what failed, its
//! cause, and what to do ("what: cause. hint"), never a bare error.

use std::path::Path;
use std::process::Command;

use etracker_e2e::node::temp_dir;
use etracker_e2e::service;
use ucanto::principal::Signer;

/// Runs `etracker args` (with `env`) and checks it failed as a sentence:
/// exit code 1, nothing on stdout, one line on stderr, `etracker: ` then
/// `what`, a cause, and `hint`. Returns that line.
fn fails(args: &[&str], env: &[(&str, &str)], what: &str, hint: &str) -> String {
    let output = Command::new(etracker_e2e::etracker_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "off")
        .output()
        .expect("etracker runs");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        output.stdout.is_empty(),
        "{args:?} printed {:?}",
        output.stdout
    );
    let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !line.contains('\n'),
        "{args:?}: more than one line: {stderr}"
    );
    let sentence = line
        .strip_prefix("etracker: ")
        .unwrap_or_else(|| panic!("{args:?}: {line}"));
    let cause = sentence
        .strip_prefix(what)
        .and_then(|rest| rest.strip_prefix(": "))
        .and_then(|rest| rest.strip_suffix(hint))
        .and_then(|rest| rest.strip_suffix(". "))
        .unwrap_or_else(|| panic!("{args:?}: not \"{what}: cause. {hint}\": {line}"));
    assert!(!cause.is_empty(), "{args:?}: no cause in {line}");
    assert!(
        !line.contains("Error {") && !line.contains("Err(") && !line.contains(" { "),
        "{args:?}: a Debug dump: {line}"
    );
    line.to_string()
}

fn dir(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp dir")
}

#[test]
fn a_taken_address_is_named_with_a_hint() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let key = service().format();
    let hint = "Is another service using that port? Pass another --listen (ETRACKER_LISTEN).";
    let what = format!("cannot listen on {address}");
    let data_dir = temp_dir("cli-bind");
    let line = fails(
        &["start", "--listen", &address, "--data-dir", dir(&data_dir)],
        &[("ETRACKER_PRIVATE_KEY", &key)],
        &what,
        hint,
    );
    assert!(line.contains("in use"), "{line}");
    // The consolidator deployed apart binds the same way.
    fails(
        &[
            "consolidator",
            "--listen",
            &address,
            "--data-dir",
            dir(&temp_dir("cli-bind-consolidator")),
            "--tracker-url",
            "http://127.0.0.1:9/",
            "--tracker-did",
            service().did().as_str(),
        ],
        &[("ETRACKER_PRIVATE_KEY", &key)],
        &what,
        hint,
    );
}

#[test]
fn a_data_directory_that_cannot_be_made_is_named_with_a_hint() {
    // A data directory under a regular file: create_dir_all fails.
    let file = temp_dir("cli-data-dir").join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let data_dir = file.join("data");
    let hint = "Pass --data-dir (ETRACKER_DATA_DIR) a directory this user can create and write.";
    let what = format!("cannot create the data directory {}", data_dir.display());
    // Without a key flag too: the key file would live in that directory.
    fails(
        &[
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir(&data_dir),
        ],
        &[],
        &what,
        hint,
    );
    fails(
        &[
            "consolidator",
            "--listen",
            "127.0.0.1:0",
            "--tracker-url",
            "http://127.0.0.1:9/",
            "--tracker-did",
            service().did().as_str(),
        ],
        &[("ETRACKER_DATA_DIR", dir(&data_dir))],
        &what,
        hint,
    );
}

#[test]
fn a_bad_consolidator_did_is_named_with_a_hint() {
    let key = service().format();
    let hint = "Pass the did:key `etracker consolidator` printed (--consolidator-did).";
    for did in ["not-a-did", "did:key:zzz", "did:web:consolidator.example"] {
        let data_dir = temp_dir("cli-consolidator-did");
        let what = format!("ETRACKER_CONSOLIDATOR_DID {did:?} cannot be used");
        // As a flag…
        fails(
            &[
                "start",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir(&data_dir),
                "--consolidator-url",
                "http://127.0.0.1:9/",
                "--consolidator-did",
                did,
            ],
            &[("ETRACKER_PRIVATE_KEY", &key)],
            &what,
            hint,
        );
        // …and from the environment.
        fails(
            &[
                "start",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir(&data_dir),
            ],
            &[
                ("ETRACKER_PRIVATE_KEY", &key),
                ("ETRACKER_CONSOLIDATOR_URL", "http://127.0.0.1:9/"),
                ("ETRACKER_CONSOLIDATOR_DID", did),
            ],
            &what,
            hint,
        );
    }
}

#[test]
fn nodes_with_a_malformed_did_is_named_with_a_hint() {
    let hint = "A node's DID looks like did:key:z6Mk…; `etracker nodes` lists them all.";
    for did in ["not-a-did", "did:key:bogus"] {
        // Refused before any request: nothing listens at this URL.
        let line = fails(
            &["nodes", did, "--url", "http://127.0.0.1:9"],
            &[],
            &format!("{did:?} is not a DID"),
            hint,
        );
        assert!(!line.contains("reach"), "{line}");
    }
}

/// Replicas asking for port 0 on one host get distinct default names (the
/// address bound, not the one asked for), so their leases are never taken
/// for each other's.
#[tokio::test]
async fn replicas_on_port_0_are_named_apart() {
    let mut names = Vec::new();
    let mut children = Vec::new();
    for _ in 0..2 {
        let data = temp_dir("replica-name");
        let mut child = tokio::process::Command::new(etracker_e2e::etracker_bin())
            .args(["start", "--listen", "127.0.0.1:0", "--data-dir", dir(&data)])
            .env("ETRACKER_PRIVATE_KEY", service().format())
            .env("RUST_LOG", "off")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("etracker starts");
        let hello = etracker_e2e::hello_line(&mut child, "etracker start").await;
        let url = hello["url"].as_str().unwrap().to_string();
        let replica = hello["replica"].as_str().unwrap().to_string();
        let bound = url.trim_start_matches("http://").trim_end_matches('/');
        assert!(
            replica.ends_with(&format!("/{bound}")),
            "{replica} for {url}"
        );
        assert!(!replica.ends_with(":0"), "{replica}");
        names.push(replica);
        children.push(child);
    }
    assert_ne!(names[0], names[1]);
}
