//! Listening and serving, as `etracker start` and `etracker consolidator`
//! both do.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use ucanto::cli::{explain, BoxError};
use ucanto::principal::Did;

/// A listener on `address`; when it is taken, a sentence with what to do.
pub(crate) async fn bind(address: SocketAddr) -> Result<TcpListener, BoxError> {
    TcpListener::bind(address).await.map_err(explain(
        format!("cannot listen on {address}"),
        "Is another service using that port? Pass another --listen (ETRACKER_LISTEN).",
    ))
}

/// Serves `app` on `listener` until Ctrl-C (requests carry the peer's
/// address), once `announce` logged its address and one line on stdout,
/// `{"url":…,"did":…}`, told scripts and tests where the service is.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    did: &Did,
    replica: Option<&str>,
    announce: impl FnOnce(SocketAddr),
) -> Result<(), BoxError> {
    let address = listener.local_addr()?;
    announce(address);
    let mut hello = serde_json::json!({ "url": format!("http://{address}/"), "did": did.as_str() });
    if let Some(replica) = replica {
        hello["replica"] = replica.into();
    }
    println!("{hello}");
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
