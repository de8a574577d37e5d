//! A call from a handler to another service, behind a circuit breaker, with the answer sorted
//! into what a redelivery can fix and what it cannot.
//!
//! A refused connection, a timeout, a `429` or a `5xx` is the other side's trouble: the breaker
//! counts it and the event is retried with the runtime's backoff (and, once the breaker opens,
//! waits in the stream). Any other `4xx` is our request's fault (a wrong URL, a bad token):
//! retrying cannot help, the breaker ignores it, and the event is dead-lettered with the answer.

use choreo_bus::HandlerError;
use choreo_bus::guard::CircuitBreaker;

/// Longest part of a refusing answer quoted in the error.
const QUOTED: usize = 300;

/// Sends `request` to `url` through `breaker`; a success status is returned as is. `hint` says
/// what to check when the other side refuses the request (e.g. which settings).
pub async fn send(
    breaker: &CircuitBreaker,
    request: reqwest::RequestBuilder,
    url: &str,
    hint: &str,
) -> Result<reqwest::Response, HandlerError> {
    let permit = breaker.try_acquire()?;
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => {
            permit.failure();
            return Err(HandlerError::retryable(format!(
                "cannot reach {url}: {err}"
            )));
        }
    };
    let status = response.status();
    if status.is_success() {
        permit.success();
        return Ok(response);
    }
    let answer: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(QUOTED)
        .collect();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        permit.failure();
        Err(HandlerError::retryable(format!(
            "{url} answered {status}: {answer}"
        )))
    } else {
        permit.ignore();
        Err(HandlerError::permanent(format!(
            "{url} refused the request with {status}: {answer} ({hint})"
        )))
    }
}
