//! `choreo ping`, the images' health check (they have no shell): 0 when NATS answers with
//! JetStream or an `http://` URL answers 2xx, 69 when not, 64 for a URL it cannot probe. Runs
//! the built binary, as compose's health checks do.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use choreo_local_nats::NatsServer;
use choreo_local_nats::process::sibling_binary;

/// `choreo ping ARGS`: its exit code and what it printed.
async fn ping(args: &[&str]) -> (i32, String) {
    let choreo = sibling_binary("choreo").expect("built: scripts/test builds the binaries");
    let output = tokio::process::Command::new(choreo)
        .arg("ping")
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .await
        .expect("choreo runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().expect("an exit code"), printed)
}

#[tokio::test]
async fn ping_answers_0_while_nats_and_jetstream_answer_and_69_once_the_server_is_gone() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let (code, printed) = ping(&["--nats-url", &url]).await;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("JetStream answers"), "{printed}");

    drop(server);
    let (code, printed) = ping(&["--nats-url", &url]).await;
    assert_eq!(code, 69, "{printed}");
}

#[tokio::test]
async fn ping_http_answers_0_for_2xx_69_otherwise_and_64_for_a_url_it_cannot_probe() {
    let app = Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route(
            "/not-ready",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "NATS is not connected") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (code, printed) = ping(&["--http", &format!("http://{address}/readyz")]).await;
    assert_eq!(code, 0, "{printed}");

    let (code, printed) = ping(&["--http", &format!("http://{address}/not-ready")]).await;
    assert_eq!(code, 69, "{printed}");
    assert!(printed.contains("503"), "{printed}");
    assert!(printed.contains("NATS is not connected"), "{printed}");

    let (code, printed) = ping(&["--http", &format!("http://{address}/missing")]).await;
    assert_eq!(code, 69, "{printed}");

    let (code, printed) = ping(&["--http", "https://127.0.0.1/readyz"]).await;
    assert_eq!(code, 64, "{printed}");
}
