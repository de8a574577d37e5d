//! Real HTTP servers for tests: whatever router a test needs, on a loopback port, and the
//! answer a chat-completions endpoint gives.

use std::net::SocketAddr;

use axum::response::IntoResponse as _;

/// Serves `router` on `address` (port 0 for a free one); returns the bound address and the
/// server's task (abort it to stop serving).
pub async fn serve(
    address: SocketAddr,
    router: axum::Router,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((bound, task))
}

/// A free loopback address for [`serve`].
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A chat completion from `model` saying `content`, billed 100 prompt and 50 completion tokens.
pub fn chat_answer(id: &str, model: &str, content: &str) -> axum::response::Response {
    axum::Json(serde_json::json!({
        "id": id,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    }))
    .into_response()
}
