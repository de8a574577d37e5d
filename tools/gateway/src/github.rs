//! GitHub webhooks: `POST /v1/webhooks/github`.
//!
//! A delivery is trusted only if its `X-Hub-Signature-256` is the HMAC-SHA256 of the exact body
//! under the configured secret (compared in constant time). A `pull_request` delivery whose
//! action asks for a review (`opened`, `synchronize`, `reopened`, `ready_for_review`; drafts
//! wait until ready) becomes a `github.pull_request.changed` event; the `fetcher` agent fetches
//! the diff and emits `review.requested`. Its id is the delivery's `X-GitHub-Delivery`, so a
//! delivery GitHub sends again is stored once. `ping` and every other event or action are
//! answered `200` and published nowhere.

use axum::http::HeaderMap;
use choreo_bus::names::validate_id;
use choreo_bus::{Emit, Event, EventType, RootEvent};
use choreo_review::events::{PULL_REQUEST_CHANGED, PullRequestChanged};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::problem::{Kind, Problem, from_validation};

pub const SIGNATURE: &str = "x-hub-signature-256";
pub const EVENT: &str = "x-github-event";
pub const DELIVERY: &str = "x-github-delivery";

/// The source of the events the webhook publishes.
pub const SOURCE: &str = "github";

/// Pull request actions that ask for a review.
const REVIEWED_ACTIONS: [&str; 4] = ["opened", "synchronize", "reopened", "ready_for_review"];

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the body.
pub fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), Problem> {
    let bad = |detail: &str| Problem::new(Kind::BadSignature, detail).field("X-Hub-Signature-256");
    let header = headers
        .get(SIGNATURE)
        .ok_or_else(|| bad("X-Hub-Signature-256 is missing: set the webhook's secret in GitHub"))?;
    let signature = header
        .to_str()
        .ok()
        .and_then(|text| text.strip_prefix("sha256="))
        .and_then(|hex_text| hex::decode(hex_text).ok())
        .ok_or_else(|| bad("X-Hub-Signature-256 is not sha256=<hex>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| bad("the configured secret cannot key HMAC-SHA256"))?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| {
        bad(
            "X-Hub-Signature-256 does not match the body: is the webhook's secret the same as \
             CHOREO_GITHUB_WEBHOOK_SECRET?",
        )
    })
}

/// What a verified delivery is.
#[derive(Debug)]
pub enum Delivery {
    /// GitHub checking the hook.
    Ping,
    /// Nothing to do, and why.
    Ignored(String),
    /// A pull request to review.
    Review(Box<Event>),
}

/// Reads a verified delivery.
pub fn read(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, Problem> {
    let header = |name: &'static str, shown: &'static str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .filter(|text| !text.trim().is_empty())
            .ok_or_else(|| Problem::invalid(shown, format!("{shown} is missing or empty")))
    };
    let event = header(EVENT, "X-GitHub-Event")?;
    match event {
        "ping" => return Ok(Delivery::Ping),
        "pull_request" => {}
        other => return Ok(Delivery::Ignored(format!("{other} events are not handled"))),
    }
    let delivery = header(DELIVERY, "X-GitHub-Delivery")?;
    validate_id("X-GitHub-Delivery", delivery)
        .map_err(|err| from_validation(&err, "", |_| None))?;
    let payload: Value = serde_json::from_slice(body).map_err(|err| {
        Problem::new(
            Kind::MalformedBody,
            format!("the delivery is not JSON: {err}"),
        )
        .field("body")
    })?;
    let action = text(&payload, "action")?;
    if !REVIEWED_ACTIONS.contains(&action) {
        return Ok(Delivery::Ignored(format!(
            "pull_request {action} asks for no review"
        )));
    }
    if payload.pointer("/pull_request/draft") == Some(&Value::Bool(true)) {
        return Ok(Delivery::Ignored(
            "a draft is reviewed when it is ready".into(),
        ));
    }
    let number = payload
        .pointer("/pull_request/number")
        .and_then(Value::as_u64)
        .ok_or_else(|| Problem::invalid("pull_request.number", "pull_request.number is missing"))?;
    let changed = PullRequestChanged {
        action: action.to_string(),
        repository: text(&payload, "repository.full_name")?.to_string(),
        number,
        title: text(&payload, "pull_request.title")?.to_string(),
        author: text(&payload, "pull_request.user.login")?.to_string(),
        url: text(&payload, "pull_request.html_url")?.to_string(),
        diff_url: text(&payload, "pull_request.diff_url")?.to_string(),
        head_sha: text(&payload, "pull_request.head.sha")?.to_string(),
    };
    let event_type =
        EventType::new(PULL_REQUEST_CHANGED).map_err(|err| from_validation(&err, "", |_| None))?;
    let emit = Emit::json(event_type, &changed)
        .map_err(|err| Problem::invalid("body", format!("cannot be encoded: {err}")))?;
    let event = RootEvent::new(emit, SOURCE)
        .with_id(delivery)
        .into_event()
        .map_err(|err| from_validation(&err, "", |_| None))?;
    Ok(Delivery::Review(Box::new(event)))
}

/// A string at a dotted path of the payload.
fn text<'a>(payload: &'a Value, path: &'static str) -> Result<&'a str, Problem> {
    payload
        .pointer(&format!("/{}", path.replace('.', "/")))
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::invalid(path, format!("{path} is missing or not a string")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    fn signed(body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn githubs_documented_example_signature_verifies() {
        // The example in GitHub's "Validating webhook deliveries".
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(signed(body), expected);
        verify(SECRET, &headers(&[(SIGNATURE, expected)]), body).expect("valid");
    }

    #[test]
    fn a_wrong_missing_or_malformed_signature_is_refused() {
        let body = b"{\"action\":\"opened\"}";
        let good = signed(body);
        let cases = [
            headers(&[(SIGNATURE, &signed(b"another body"))]),
            headers(&[]),
            headers(&[(SIGNATURE, "sha1=abc")]),
            headers(&[(SIGNATURE, "sha256=zz")]),
        ];
        for case in cases {
            let problem = verify(SECRET, &case, body).expect_err("refused");
            assert_eq!(problem.kind, Kind::BadSignature);
            assert_eq!(problem.status, 401);
        }
        verify(SECRET, &headers(&[(SIGNATURE, &good)]), body).expect("the right one passes");
        assert!(verify(b"other secret", &headers(&[(SIGNATURE, &good)]), body).is_err());
    }

    fn pull_request(action: &str, draft: bool) -> Value {
        json!({
            "action": action,
            "repository": {"full_name": "acme/shop"},
            "pull_request": {
                "number": 42, "title": "Refunds", "draft": draft,
                "user": {"login": "dev"},
                "html_url": "https://github.com/acme/shop/pull/42",
                "diff_url": "https://github.com/acme/shop/pull/42.diff",
                "head": {"sha": "abc123"}
            }
        })
    }

    #[test]
    fn an_opened_pull_request_becomes_an_announcement_with_the_delivery_id() {
        let body = pull_request("opened", false).to_string();
        let delivery = read(
            &headers(&[
                (EVENT, "pull_request"),
                (DELIVERY, "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ]),
            body.as_bytes(),
        )
        .expect("valid");
        let Delivery::Review(event) = delivery else {
            panic!("expected a review, got {delivery:?}");
        };
        assert_eq!(event.id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(event.r#type, PULL_REQUEST_CHANGED);
        assert_eq!(event.source, SOURCE);
        let changed: PullRequestChanged = serde_json::from_slice(&event.data).expect("json");
        assert_eq!(changed.repository, "acme/shop");
        assert_eq!(changed.number, 42);
        assert_eq!(
            changed.diff_url,
            "https://github.com/acme/shop/pull/42.diff"
        );
        assert_eq!(changed.head_sha, "abc123");
    }

    #[test]
    fn pings_other_events_other_actions_and_drafts_publish_nothing() {
        let pr = |action, draft| pull_request(action, draft).to_string();
        let ping = read(&headers(&[(EVENT, "ping")]), b"{}").expect("ping");
        assert!(matches!(ping, Delivery::Ping));
        let push = read(&headers(&[(EVENT, "push")]), b"{}").expect("push");
        assert!(matches!(push, Delivery::Ignored(_)));
        let with = |body: String| {
            read(
                &headers(&[(EVENT, "pull_request"), (DELIVERY, "d-1")]),
                body.as_bytes(),
            )
        };
        assert!(matches!(
            with(pr("closed", false)).expect("closed"),
            Delivery::Ignored(_)
        ));
        assert!(matches!(
            with(pr("opened", true)).expect("draft"),
            Delivery::Ignored(_)
        ));
        assert!(matches!(
            with(pr("ready_for_review", false)).expect("ready"),
            Delivery::Review(_)
        ));
    }

    #[test]
    fn a_pull_request_missing_a_field_names_it() {
        let mut payload = pull_request("opened", false);
        payload["pull_request"]
            .as_object_mut()
            .expect("object")
            .remove("diff_url");
        let problem = read(
            &headers(&[(EVENT, "pull_request"), (DELIVERY, "d-2")]),
            payload.to_string().as_bytes(),
        )
        .expect_err("no diff url");
        assert_eq!(problem.field.as_deref(), Some("pull_request.diff_url"));
        let problem =
            read(&headers(&[(EVENT, "pull_request")]), b"{}").expect_err("no delivery id");
        assert_eq!(problem.field.as_deref(), Some("X-GitHub-Delivery"));
        let problem = read(&headers(&[(EVENT, " ")]), b"{}").expect_err("an empty event");
        assert_eq!(problem.field.as_deref(), Some("X-GitHub-Event"));
    }
}
