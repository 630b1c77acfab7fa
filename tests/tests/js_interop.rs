//! Live interop over real HTTP on 127.0.0.1 between JS @ucanto and our crate.

use std::sync::Arc;

use etracker_e2e::{alice, echo_server, run_js, serve, service, spawn_js};
use ucanto::client::Connection;
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::{Did, Ed25519Signer, Signer};
use ucanto::server::error_name;
use ucanto::transport::{router, DEFAULT_BODY_LIMIT};
use ucanto::ucan::{Capability, Delegation};

async fn js_client(url: &str, did: &str, scenario: &str) -> serde_json::Value {
    let (code, stdout) = run_js(
        "client.js",
        &["--url", url, "--service-did", did, "--scenario", scenario],
    )
    .await;
    assert_eq!(code, 0, "client.js {scenario} failed: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{scenario}: {stdout:?}: {e}"))
}

fn outcome_name(result: &serde_json::Value) -> String {
    match result["out"].get("error") {
        Some(err) => err["name"].as_str().unwrap_or("?").to_string(),
        None => "ok".to_string(),
    }
}

/// A JS client gets the same outcome (ok or the same error name) from our
/// server as from a real JS server, for every scenario, and our receipts verify.
#[tokio::test(flavor = "multi_thread")]
async fn js_client_sees_same_outcomes_from_rust_and_js_servers() {
    let rust_url = serve(router(
        Arc::new(echo_server(Arc::new(service()))),
        DEFAULT_BODY_LIMIT,
    ))
    .await;
    let js = spawn_js("echo-server.js", &[]).await;
    let js_url = js.hello["url"].as_str().unwrap().to_string();
    let did = service().did().to_string();
    assert_eq!(js.hello["did"], did.as_str());

    for scenario in etracker_e2e::CLIENT_SCENARIOS {
        let ours = js_client(&rust_url, &did, scenario).await;
        let theirs = js_client(&js_url, &did, scenario).await;
        assert_eq!(ours["signatureValid"], true, "{scenario}: {ours}");
        assert_eq!(ours["issuer"], did.as_str(), "{scenario}");
        assert_eq!(
            ours["ran"], ours["invocation"],
            "{scenario}: receipt must be for the invocation sent"
        );
        assert_eq!(
            outcome_name(&ours),
            outcome_name(&theirs),
            "{scenario}: ours {ours} theirs {theirs}"
        );
        if scenario == &"ok" || scenario == &"delegated" {
            assert_eq!(ours["out"], theirs["out"], "{scenario}");
        }
    }
}

/// Our client invokes a real JS server over HTTP and verifies its receipts.
#[tokio::test(flavor = "multi_thread")]
async fn rust_client_invokes_js_server() {
    let js = spawn_js("echo-server.js", &[]).await;
    let url = js.hello["url"].as_str().unwrap();
    let service_did: Did = js.hello["did"].as_str().unwrap().parse().unwrap();
    assert_eq!(&service_did, service().did());
    let connection = Connection::http(ucanto::principal::verifier_for(&service_did).unwrap(), url);

    let alice = alice();
    let mut nb = IpldMap::new();
    nb.insert("text".into(), Ipld::String("hello from rust".into()));
    let echo = Delegation::builder(&alice, service_did.clone())
        .capability(Capability::new("test/echo", alice.did().as_str()).with_nb(nb.clone()))
        .build()
        .unwrap();
    let unknown = Delegation::builder(&alice, service_did.clone())
        .capability(Capability::new("test/unknown", alice.did().as_str()))
        .build()
        .unwrap();
    let wrong_audience = Delegation::builder(&alice, etracker_e2e::mallory().did().clone())
        .capability(Capability::new("test/echo", alice.did().as_str()).with_nb(nb.clone()))
        .build()
        .unwrap();

    let receipts = connection
        .execute(&[echo.clone(), unknown.clone(), wrong_audience.clone()])
        .await
        .unwrap();
    assert_eq!(receipts[0].ran_cid(), echo.cid());
    assert_eq!(receipts[0].out(), &Ok(Ipld::Map(nb)));
    assert_eq!(error_name(receipts[1].out()), Some("HandlerNotFound"));
    assert_eq!(error_name(receipts[2].out()), Some("InvalidAudience"));

    // A connection that expects another service key refuses JS's receipts.
    let impostor = Connection::http(Ed25519Signer::from_seed([9; 32]).verifier(), url);
    let err = impostor.invoke(&echo).await.unwrap_err();
    assert!(
        matches!(err, ucanto::client::ClientError::InvalidSignature(_)),
        "{err}"
    );
}

/// A JS client talks to our server presenting a did:web identity.
#[tokio::test(flavor = "multi_thread")]
async fn js_client_reaches_did_web_service() {
    let web: Did = "did:web:tracker.example".parse().unwrap();
    let signer = Arc::new(service().with_did(web.clone()));
    let url = serve(router(Arc::new(echo_server(signer)), DEFAULT_BODY_LIMIT)).await;
    let key_did = service().did().to_string();
    let (code, stdout) = run_js(
        "client.js",
        &[
            "--url",
            &url,
            "--service-did",
            web.as_str(),
            "--service-key-did",
            &key_did,
            "--scenario",
            "ok",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["issuer"], web.as_str());
    assert_eq!(result["signatureValid"], true);
    assert_eq!(outcome_name(&result), "ok");
}
