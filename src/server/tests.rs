//! The server's hooks and what one message may cost it.

use crate::validator::Violation;
use std::sync::Mutex;

use super::*;
use crate::principal::Ed25519Signer;
use crate::validator::CapabilityParser;

/// `test/echo` on any DID.
struct Echo;

impl CapabilityParser for Echo {
    fn can(&self) -> &str {
        "test/echo"
    }
    fn parse(&self, capability: &Capability) -> Result<Capability, Violation> {
        Ok(capability.clone())
    }
}

/// What the hook saw: the invocation, whether the receipt is for it, the effect.
type Seen = Vec<(cid::Cid, bool, Option<u32>)>;

/// The after-receipt hook sees each signed receipt with the handler's
/// effect before the answer goes out, once per distinct invocation; a
/// refused invocation (no handler ran) has no effect.
#[tokio::test]
async fn the_after_hook_gets_receipt_and_effect() {
    let service = Arc::new(Ed25519Signer::from_seed([4; 32]));
    let alice = Ed25519Signer::from_seed([1; 32]);
    let follow = crate::ucan::Delegation::builder(&alice, service.did().clone())
        .capability(Capability::new("test/follow", alice.did().as_str()))
        .build()
        .unwrap();
    let follow_up = crate::receipt::Receipt::issue(
        service.as_ref(),
        crate::receipt::ReceiptParts::new(&follow, Ok(Ipld::Map(IpldMap::new()))),
    )
    .unwrap();
    let seen: Arc<Mutex<Seen>> = Default::default();
    let log = seen.clone();
    let reported = follow_up.cid();
    let server = Server::builder(service.clone())
        .provide(Arc::new(Echo), |request: Request| async move {
            let n = request.capability.with.len() as u32;
            Ok::<_, HandlerError>(Response::ok(Ipld::Map(IpldMap::new())).with_effect(n))
        })
        .after(Arc::new(move |invocation, receipt, effect| {
            let (log, follow_up) = (log.clone(), follow_up.clone());
            Box::pin(async move {
                let value = effect.as_ref().and_then(|e| e.get::<u32>()).copied();
                let signed = receipt.ran_cid() == invocation.cid();
                log.lock().unwrap().push((invocation.cid(), signed, value));
                // What the hook invoked in turn, reported with the answer.
                value.map(|_| follow_up).into_iter().collect()
            })
        }))
        .build();
    let echo = crate::ucan::Delegation::builder(&alice, service.did().clone())
        .capability(Capability::new("test/echo", alice.did().as_str()))
        .build()
        .unwrap();
    let unknown = crate::ucan::Delegation::builder(&alice, service.did().clone())
        .capability(Capability::new("test/other", alice.did().as_str()))
        .build()
        .unwrap();
    let message = AgentMessage::build(&[echo.clone(), echo.clone(), unknown.clone()], &[]).unwrap();
    let answer = server.execute(&message).await.unwrap();
    // The echo's receipt, the unknown one's, and what the hook reported.
    assert_eq!(answer.report().len(), 3);
    assert_eq!(
        answer.receipt_for(&follow.cid()).unwrap().unwrap().cid(),
        reported
    );
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|(cid, _, _)| cid.to_string());
    let mut expected = vec![
        (echo.cid(), true, Some(alice.did().as_str().len() as u32)),
        (unknown.cid(), true, None),
    ];
    expected.sort_by_key(|(cid, _, _)| cid.to_string());
    assert_eq!(seen, expected);
}

/// Every error message a server writes is at most 1 KiB, cut with a marker;
/// `stack` is `"<name>: <message>"` of the cut message. Short ones are kept.
#[test]
fn error_messages_are_cut_to_1_kib() {
    let max = crate::bounded::MAX_MESSAGE_BYTES;
    let fields = failure_fields("Oops", "é".repeat(3000));
    let (Some(Ipld::String(message)), Some(Ipld::String(stack))) =
        (fields.get("message"), fields.get("stack"))
    else {
        panic!("{fields:?}")
    };
    assert!(message.len() <= max && message.ends_with(" bytes cut]"));
    assert_eq!(stack, &format!("Oops: {message}"));
    let Ipld::Map(short) = error_value("Oops", "short".into()) else {
        panic!()
    };
    assert_eq!(short.get("message"), Some(&Ipld::String("short".into())));
    assert_eq!(
        short.get("stack"),
        Some(&Ipld::String("Oops: short".into()))
    );
    assert!(HandlerError::new("x".repeat(10_000)).message.len() <= max);
    let Err(Ipld::Map(failure)) = Response::failure("Oops", "y".repeat(5000)).out else {
        panic!()
    };
    assert!(matches!(failure.get("message"), Some(Ipld::String(m)) if m.len() <= max));
}

/// Alice's echoes on her own DID, each one signature to check.
fn echoes(service: &Ed25519Signer, n: usize) -> Vec<Invocation> {
    let alice = Ed25519Signer::from_seed([1; 32]);
    (0..n)
        .map(|i| {
            crate::ucan::Delegation::builder(&alice, service.did().clone())
                .capability(Capability::new("test/echo", alice.did().as_str()))
                .nonce(i.to_string())
                .build()
                .unwrap()
        })
        .collect()
}

fn echo_server(service: &Arc<Ed25519Signer>) -> ServerBuilder {
    Server::builder(service.clone()).provide(Arc::new(Echo), |_: Request| async move {
        Ok::<_, HandlerError>(Response::ok(Ipld::Map(IpldMap::new())))
    })
}

/// What each of `invocations` got: its error name, if any.
fn outcomes(answer: &AgentMessage, invocations: &[Invocation]) -> Vec<Option<String>> {
    invocations
        .iter()
        .map(|i| {
            let receipt = answer.receipt_for(&i.cid()).unwrap().unwrap();
            error_name(receipt.out()).map(str::to_string)
        })
        .collect()
}

/// A message's invocations share a budget of fresh signature checks: past
/// it they are `Unauthorized`; the next message has a budget again, and
/// signatures verified before cost nothing.
#[tokio::test]
async fn a_message_has_a_budget_of_signature_checks() {
    let service = Arc::new(Ed25519Signer::from_seed([4; 32]));
    let server = echo_server(&service).max_signature_checks(3).build();
    let invocations = echoes(&service, 5);
    let message = AgentMessage::build(&invocations, &[]).unwrap();
    let answer = server.execute(&message).await.unwrap();
    let refused: Vec<_> = outcomes(&answer, &invocations)
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(refused, ["Unauthorized", "Unauthorized"]);
    let receipt = invocations
        .iter()
        .filter_map(|i| answer.receipt_for(&i.cid()))
        .flatten()
        .find(|r| r.out().is_err())
        .unwrap();
    let Err(Ipld::Map(error)) = receipt.out() else {
        panic!()
    };
    assert!(
        matches!(error.get("message"), Some(Ipld::String(m)) if m.contains("budget exhausted")),
        "{error:?}"
    );
    // Three were verified and remembered: two fresh checks are left to do.
    let answer = server.execute(&message).await.unwrap();
    assert_eq!(outcomes(&answer, &invocations), vec![None; 5]);
}

/// `test/echo` whose parsing takes a while (a stand-in for costly proofs).
struct Slow;

impl CapabilityParser for Slow {
    fn can(&self) -> &str {
        "test/echo"
    }
    fn parse(&self, capability: &Capability) -> Result<Capability, Violation> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(capability.clone())
    }
}

/// Validation runs on the blocking pool, not on the async workers: with
/// one async thread busy validating, other tasks still run. Waiting for a
/// validation permit is cancelled with the request.
#[tokio::test(flavor = "current_thread")]
async fn validation_leaves_the_async_workers_free() {
    use std::time::{Duration, Instant};
    let service = Arc::new(Ed25519Signer::from_seed([4; 32]));
    let server = Arc::new(
        Server::builder(service.clone())
            .provide(Arc::new(Slow), |_: Request| async move {
                Ok::<_, HandlerError>(Response::ok(Ipld::Map(IpldMap::new())))
            })
            .validation_workers(1)
            .build(),
    );
    let invocations = echoes(&service, 2);
    let first = AgentMessage::build(&invocations[..1], &[]).unwrap();
    let running = tokio::spawn({
        let server = server.clone();
        async move { server.execute(&first).await.unwrap() }
    });
    // The only async thread is free while the slow validation runs.
    let start = Instant::now();
    let mut ticks = 0;
    while !running.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ticks += 1;
    }
    assert!(ticks >= 10, "{ticks} ticks in {:?}", start.elapsed());
    let answer = running.await.unwrap();
    assert_eq!(outcomes(&answer, &invocations[..1]), vec![None]);

    // One permit, held by a slow validation: a request waiting for it is
    // cut off by its timeout, at the timeout.
    let holder = tokio::spawn({
        let server = server.clone();
        let message = AgentMessage::build(&invocations[1..], &[]).unwrap();
        async move { server.execute(&message).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = AgentMessage::build(&echoes(&service, 3)[2..], &[]).unwrap();
    let start = Instant::now();
    let cut = tokio::time::timeout(Duration::from_millis(100), server.execute(&waiting)).await;
    assert!(cut.is_err(), "waited for the permit");
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    holder.await.unwrap();
}
