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

/// Replicas asking for port 0 on one host get distinct default names (their
/// data directories: the port changes at every start), so their leases are
/// never taken for each other's; a restart keeps the name, so it takes back
/// its own leases at once.
#[tokio::test]
async fn replicas_on_port_0_are_named_apart() {
    let start = |data: &std::path::Path| {
        tokio::process::Command::new(etracker_e2e::etracker_bin())
            .args(["start", "--listen", "127.0.0.1:0", "--data-dir", dir(data)])
            .env("ETRACKER_PRIVATE_KEY", service().format())
            .env("RUST_LOG", "off")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("etracker starts")
    };
    let mut names = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let data = temp_dir("replica-name");
        let mut child = start(&data);
        let hello = etracker_e2e::hello_line(&mut child, "etracker start").await;
        let replica = hello["replica"].as_str().unwrap().to_string();
        let absolute = std::fs::canonicalize(&data).unwrap();
        assert!(
            replica.ends_with(&format!("/{}", absolute.display())),
            "{replica} for {}",
            data.display()
        );
        names.push(replica);
        dirs.push((data, child));
    }
    assert_ne!(names[0], names[1]);
    let (data, child) = dirs.remove(0);
    etracker_e2e::kill9(child).await;
    let mut again = start(&data);
    let hello = etracker_e2e::hello_line(&mut again, "etracker start").await;
    assert_eq!(
        hello["replica"].as_str(),
        Some(names[0].as_str()),
        "kept across a restart"
    );
}

/// An empty `ETRACKER_ADMIN_TOKEN` is refused at start: it would let anyone
/// in.
#[test]
fn an_empty_admin_token_is_refused() {
    let data_dir = temp_dir("cli-empty-token");
    let line = fails(
        &[
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir(&data_dir),
        ],
        &[
            ("ETRACKER_PRIVATE_KEY", &service().format()),
            ("ETRACKER_ADMIN_TOKEN", ""),
        ],
        "ETRACKER_ADMIN_TOKEN cannot be used",
        &format!(
            "Unset it, and etracker keeps a random one in {}; or set a long random value.",
            data_dir.join("admin.token").display()
        ),
    );
    assert!(line.contains("empty"), "{line}");
}

/// No admin route trusts the network: `etracker start` without a token
/// writes one into `<data dir>/admin.token` (mode 0600, kept across
/// restarts), every admin route answers 401 without it, even on loopback,
/// and the commands run where that file is use it.
#[tokio::test]
async fn admin_routes_need_the_token_written_at_start() {
    let data = temp_dir("cli-token");
    let start = || {
        tokio::process::Command::new(etracker_e2e::etracker_bin())
            .args(["start", "--listen", "127.0.0.1:0", "--data-dir", dir(&data)])
            .env("ETRACKER_PRIVATE_KEY", service().format())
            .env_remove("ETRACKER_ADMIN_TOKEN")
            .env("RUST_LOG", "off")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("etracker starts")
    };
    let mut child = start();
    let hello = etracker_e2e::hello_line(&mut child, "etracker start").await;
    let url = hello["url"].as_str().unwrap().to_string();
    let file = data.join("admin.token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    }
    let client = reqwest::Client::new();
    let status = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut request = client.request(method, format!("{url}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let space = etracker_e2e::bob().did().to_string();
    let admin_routes = [
        (reqwest::Method::POST, "consolidate".to_string()),
        (reqwest::Method::GET, "metrics".to_string()),
        (reqwest::Method::GET, "admin/spaces".to_string()),
        (reqwest::Method::PUT, format!("admin/spaces/{space}")),
        (reqwest::Method::GET, "admin/api/overview".to_string()),
    ];
    for (method, path) in &admin_routes {
        assert_eq!(status(method.clone(), path, None).await, 401, "{path}");
        assert_eq!(
            status(method.clone(), path, Some("guess")).await,
            401,
            "{path}"
        );
    }
    for (method, path) in &admin_routes {
        assert_eq!(
            status(method.clone(), path, Some(&token)).await,
            200,
            "{path}"
        );
    }
    assert_eq!(status(reqwest::Method::GET, "health", None).await, 200);

    // A command run with the data directory's file reaches the API.
    let overview = tokio::process::Command::new(etracker_e2e::etracker_bin())
        .args(["overview", "--url", &url])
        .env("ETRACKER_DATA_DIR", &data)
        .env_remove("ETRACKER_ADMIN_TOKEN")
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    assert!(overview.status.success(), "{overview:?}");
    let refused = tokio::process::Command::new(etracker_e2e::etracker_bin())
        .args(["overview", "--url", &url])
        .env("ETRACKER_DATA_DIR", temp_dir("cli-token-elsewhere"))
        .env_remove("ETRACKER_ADMIN_TOKEN")
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("admin.token"),
        "{refused:?}"
    );

    // Restarted, it keeps its token.
    etracker_e2e::kill9(child).await;
    let mut child = start();
    let hello = etracker_e2e::hello_line(&mut child, "etracker start").await;
    let url = hello["url"].as_str().unwrap().to_string();
    let again = client
        .get(format!("{url}metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}
