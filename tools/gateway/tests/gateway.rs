//! The gateway end to end: a real nats-server, the gateway on a real listener, a real HTTP
//! client. Each test names the promise it checks and reads the stream to prove it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use choreo_bus::guard::{BudgetLimits, CorrelationBudget};
use choreo_bus::settings::HumanDuration;
use choreo_bus::{Event, NatsConfig};
use choreo_gateway::{Gateway, Settings};
use choreo_testkit::{Bus, wait_until};
use clap::Parser as _;
use hmac::Mac as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CI_TOKEN: &str = "ci-token-0123456789abcdef";
const OPS_TOKEN: &str = "ops-token-0123456789abcdef";
const SECRET: &str = "webhook-secret-for-tests";
const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A gateway serving `bus` on a random port, with `ci` allowed `review.*` and `build.*` as
/// sources `ci`, `ci/…` and `sensor/…`, `ops` allowed everything as `ops`, and `extra` settings
/// on top.
struct Door {
    url: String,
    http: reqwest::Client,
    _task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Door {
    async fn open(bus: &Bus, extra: &[&str]) -> Door {
        let tokens = format!("ci={CI_TOKEN}:review.*,build.*;ops={OPS_TOKEN}:*");
        let mut args = vec![
            "choreo-gateway",
            "--tokens",
            &tokens,
            "--github-webhook-secret",
            SECRET,
            "--publish-timeout",
            "2s",
            "--sources",
            "ci=ci/*,sensor/*",
        ];
        args.extend_from_slice(extra);
        let settings = Settings::try_parse_from(args).expect("settings");
        let client = bus.connect(NatsConfig::default()).await.expect("connect");
        let gateway = Gateway::new(client, bus.server.url(), &settings).expect("gateway");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(choreo_gateway::serve(
            listener,
            gateway,
            std::future::pending(),
        ));
        Door {
            url,
            http: reqwest::Client::new(),
            _task: task,
        }
    }

    fn post(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{}{path}", self.url));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// A plain event from `ci`.
    async fn event(&self, body: Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self.post("/v1/events", Some(CI_TOKEN)).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("request")
    }

    /// A body of `content_type` from `ci`.
    async fn send(&self, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.post("/v1/events", Some(CI_TOKEN))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    async fn ready(&self) -> StatusCode {
        self.http
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .expect("request")
            .status()
    }
}

/// The answer's status and JSON body, checking a problem is served as problem+json.
async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = response.json().await.expect("a JSON body");
    if !status.is_success() {
        assert_eq!(content_type, "application/problem+json", "{body}");
        assert_eq!(body["status"], status.as_u16(), "{body}");
    }
    (status, body)
}

async fn stored(bus: &Bus) -> Vec<Event> {
    bus.events("events.>").await.expect("read the stream")
}

#[tokio::test]
async fn an_event_is_accepted_with_its_ids_and_a_retried_key_is_stored_once() {
    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &[]).await;
    let body = json!({"type": "review.requested", "data": {"diff": "+x"}});

    let (status, first) = answer(door.event(body.clone(), Some("order-7-review")).await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["id"], "order-7-review");
    assert_eq!(first["correlation_id"], "order-7-review", "a new run");
    assert_eq!(first["duplicate"], false);
    // The client timed out and tries again with the same key.
    let (status, again) = answer(door.event(body, Some("order-7-review")).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["stream_sequence"], first["stream_sequence"]);

    let events = stored(&bus).await;
    assert_eq!(events.len(), 1, "stored once");
    let event = &events[0];
    assert_eq!(event.id, "order-7-review");
    assert_eq!(event.r#type, "review.requested");
    assert_eq!(event.source, "ci", "the token's name");
    assert_eq!(event.depth, 0);
    assert_eq!(
        serde_json::from_slice::<Value>(&event.data).unwrap(),
        json!({"diff": "+x"})
    );

    // Without a key each request is its own event; joining a run keeps its correlation.
    let (_, joined) = answer(
        door.event(
            json!({"type": "build.started", "correlation_id": "order-7-review"}),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(joined["correlation_id"], "order-7-review");
    assert_ne!(joined["id"], "order-7-review");
    assert_eq!(stored(&bus).await.len(), 2);
}

#[tokio::test]
async fn each_cloudevents_mode_is_published_as_the_mapping_says() {
    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &[]).await;

    let structured = json!({
        "specversion": "1.0", "id": "ce-structured", "source": "ci/pipeline",
        "type": "build.finished", "correlationid": "release-1", "traceparent": TRACE,
        "data": {"ok": true}, "region": "eu"
    });
    let response = door
        .send("application/cloudevents+json", structured.to_string())
        .await;
    let (status, body) = answer(response).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["id"], "ce-structured");

    let response = door
        .post("/v1/events", Some(CI_TOKEN))
        .header("ce-specversion", "1.0")
        .header("ce-id", "ce-binary")
        .header("ce-source", "sensor/7")
        .header("ce-type", "build.log")
        .header("ce-correlationid", "release-1")
        .header("ce-note", "caf%C3%A9")
        .header("content-type", "text/plain")
        .header("traceparent", TRACE)
        .body("compiling 42 crates")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let batch = json!([
        {"specversion": "1.0", "id": "ce-batch-1", "source": "ci", "type": "build.step", "data": {"n": 1}},
        {"specversion": "1.0", "id": "ce-batch-2", "source": "ci", "type": "build.step", "data": {"n": 2}}
    ]);
    let send_batch = || door.send("application/cloudevents-batch+json", batch.to_string());
    let (status, body) = answer(send_batch().await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let ids: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ce-batch-1", "ce-batch-2"]);
    // The batch again: every event is recognised by its CloudEvent id.
    let (_, again) = answer(send_batch().await).await;
    assert!(
        again["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["duplicate"] == true)
    );

    let events = stored(&bus).await;
    assert_eq!(events.len(), 4, "each event once");
    let by_id = |id: &str| events.iter().find(|e| e.id == id).expect(id).clone();
    let structured = by_id("ce-structured");
    assert_eq!(structured.source, "ci/pipeline");
    assert_eq!(structured.correlation_id, "release-1");
    assert_eq!(structured.traceparent, TRACE);
    assert_eq!(structured.attributes["region"], "eu");
    let binary = by_id("ce-binary");
    assert_eq!(binary.correlation_id, "release-1");
    assert_eq!(binary.content_type, "text/plain");
    assert_eq!(&binary.data[..], b"compiling 42 crates");
    assert_eq!(binary.attributes["note"], "café");
    assert_eq!(binary.traceparent, TRACE);
    assert_eq!(
        serde_json::from_slice::<Value>(&by_id("ce-batch-2").data).unwrap(),
        json!({"n": 2})
    );
}

#[tokio::test]
async fn missing_unknown_and_unentitled_tokens_are_refused_and_publish_nothing() {
    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &[]).await;
    let body = json!({"type": "review.requested", "data": {}});

    let missing = door
        .post("/v1/events", None)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer realm=\"choreo\""
    );
    let (status, problem) = answer(missing).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["type"], "urn:choreo:problem:unauthorized");

    let unknown = door
        .post("/v1/events", Some("not-a-token-anyone-has"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer(unknown).await.0, StatusCode::UNAUTHORIZED);

    // ci may publish review.* and build.*, not deploy.*; one such event fails the batch.
    let forbidden = door
        .event(json!({"type": "deploy.requested", "data": {}}), None)
        .await;
    let (status, problem) = answer(forbidden).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("deploy.requested"),
        "{problem}"
    );
    let batch = json!([
        {"specversion": "1.0", "id": "b-ok", "source": "ci", "type": "build.step"},
        {"specversion": "1.0", "id": "b-no", "source": "ci", "type": "deploy.now"}
    ]);
    let response = door
        .send("application/cloudevents-batch+json", batch.to_string())
        .await;
    assert_eq!(answer(response).await.0, StatusCode::FORBIDDEN);

    // ops may publish anything.
    let response = door
        .post("/v1/events", Some(OPS_TOKEN))
        .json(&json!({"type": "deploy.requested"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, StatusCode::ACCEPTED);
    let events = stored(&bus).await;
    assert_eq!(events.len(), 1, "only ops's event");
    assert_eq!(events[0].source, "ops");
}

#[tokio::test]
async fn bad_input_is_a_400_problem_naming_the_field_and_a_large_body_is_413() {
    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &["--max-body", "2048"]).await;

    let cases = [
        (json!({"data": {}}), "type"),
        (json!({"type": "has space"}), "type"),
        (
            json!({"type": "a.b", "corelation_id": "x"}),
            "corelation_id",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = answer(door.event(body.clone(), None).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(problem["field"], field, "{problem}");
        assert_eq!(problem["type"], "urn:choreo:problem:invalid-field");
    }
    let (status, problem) = answer(
        door.event(json!({"type": "review.requested"}), Some("white space"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "Idempotency-Key");

    let not_json = door.send("application/json", "{\"type\": ").await;
    let (status, problem) = answer(not_json).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "urn:choreo:problem:malformed-body");

    let form = door
        .send("application/x-www-form-urlencoded", "type=a.b")
        .await;
    assert_eq!(answer(form).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let big = json!({"type": "review.requested", "data": {"diff": "+".repeat(4096)}});
    let (status, problem) = answer(door.event(big, None).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        problem["detail"].as_str().unwrap().contains("2048"),
        "{problem}"
    );

    assert!(stored(&bus).await.is_empty(), "nothing published");
}

#[tokio::test]
async fn a_client_over_its_rate_is_told_when_to_come_back() {
    let bus = Bus::start().await.expect("bus");
    // Two requests back to back, then one a minute: the third is refused however slow the
    // machine is.
    let door = Door::open(&bus, &["--rate", "1/m", "--burst", "2"]).await;
    let body = json!({"type": "build.step"});
    for _ in 0..2 {
        assert_eq!(
            answer(door.event(body.clone(), None).await).await.0,
            StatusCode::ACCEPTED
        );
    }
    let refused = door.event(body.clone(), None).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (status, problem) = answer(refused).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["type"], "urn:choreo:problem:rate-limited");

    // The rate is per token: ops is not held back by ci.
    let response = door
        .post("/v1/events", Some(OPS_TOKEN))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, StatusCode::ACCEPTED);
    assert_eq!(stored(&bus).await.len(), 3);
}

#[tokio::test]
async fn an_event_for_a_run_over_its_budget_is_refused_at_the_door() {
    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &["--max-events", "3"]).await;
    // Agents in run-spent have emitted the run's three events.
    let budget = CorrelationBudget::new(
        bus.client.clone(),
        Default::default(),
        BudgetLimits {
            max_events: Some(3),
            max_tokens: None,
            max_cost_micros: None,
        },
    );
    budget.charge("run-spent", 3, 0).await.expect("charged");

    let (status, problem) = answer(
        door.event(
            json!({"type": "review.requested", "correlation_id": "run-spent"}),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["type"], "urn:choreo:problem:budget-exhausted");
    assert_eq!(problem["field"], "correlation_id");
    assert!(
        problem["detail"].as_str().unwrap().contains("3 of 3"),
        "{problem}"
    );

    // A run with budget left, and a new run, are accepted.
    budget.charge("run-going", 1, 0).await.expect("charged");
    for body in [
        json!({"type": "review.requested", "correlation_id": "run-going"}),
        json!({"type": "review.requested"}),
    ] {
        assert_eq!(
            answer(door.event(body, None).await).await.0,
            StatusCode::ACCEPTED
        );
    }
    let events = stored(&bus).await;
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.correlation_id != "run-spent"));
}

#[tokio::test]
async fn with_nats_down_the_gateway_answers_503_and_after_a_restart_accepts_losing_nothing() {
    let mut bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &[]).await;
    assert_eq!(door.ready().await, StatusCode::OK);
    let body = |n: u32| json!({"type": "build.step", "data": {"n": n}});
    let (status, _) = answer(door.event(body(1), Some("step-1")).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    bus.server.kill();
    wait_until("the gateway sees NATS gone", || async {
        Ok(door.ready().await == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await
    .expect("not ready");
    let refused = door.event(body(2), Some("step-2")).await;
    assert!(refused.headers().contains_key("retry-after"));
    let (status, problem) = answer(refused).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["type"], "urn:choreo:problem:nats-unavailable");
    // A client without a key gives up after its 503.
    assert_eq!(
        answer(door.event(body(99), None).await).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    bus.server.start_again().await.expect("restart");
    wait_until("the gateway is ready again", || async {
        Ok(door.ready().await == StatusCode::OK)
    })
    .await
    .expect("ready");
    // The client retries with its key: stored now, and as new: nothing went out while NATS
    // was down.
    let (status, retried) = answer(door.event(body(2), Some("step-2")).await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    assert_eq!(retried["duplicate"], false);
    let (status, _) = answer(door.event(body(3), Some("step-3")).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let events = stored(&bus).await;
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        ["step-1", "step-2", "step-3"],
        "every accepted event once, the refused one never"
    );
}

fn signature(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_signed_pull_request_delivery_becomes_a_review_request_with_its_diff() {
    use choreo_agent_fetcher::{Fetcher, Settings as FetcherSettings};
    use choreo_review::events::{REQUESTED, ReviewRequested};
    use choreo_review::samples::REFUNDS_DIFF;

    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &[]).await;
    // GitHub's side: the pull request's diff.
    let diffs = axum::Router::new().route(
        "/acme/shop/pull/42.diff",
        axum::routing::get(|| async { REFUNDS_DIFF }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let diff_host = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, diffs).await });
    let fetcher = Fetcher::new(&FetcherSettings {
        github_token: None,
        fetch_timeout: HumanDuration(Duration::from_secs(5)),
        fetch_max_bytes: 1 << 20,
        fetch_allow_hosts: vec!["127.0.0.1".into()],
        fetch_breaker_open_for: HumanDuration(Duration::from_secs(30)),
    })
    .expect("fetcher");
    let running = bus
        .run(
            choreo_agent_fetcher::agent().unwrap(),
            fetcher,
            choreo_testkit::quick_config(),
        )
        .await
        .expect("fetcher runs");

    let payload = json!({
        "action": "opened",
        "repository": {"full_name": "acme/shop"},
        "pull_request": {
            "number": 42, "title": "Refunds", "draft": false,
            "user": {"login": "dev"},
            "html_url": "https://github.com/acme/shop/pull/42",
            "diff_url": format!("http://{diff_host}/acme/shop/pull/42.diff"),
            "head": {"sha": "abc123"}
        }
    })
    .to_string();
    let deliver = |signature: String| {
        door.post("/v1/webhooks/github", None)
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
            .header("x-hub-signature-256", signature)
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
    };
    let (status, problem) = answer(deliver(signature(b"a different body")).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["type"], "urn:choreo:problem:bad-signature");
    assert!(
        stored(&bus).await.is_empty(),
        "a forged delivery publishes nothing"
    );

    let (status, accepted) = answer(deliver(signature(payload.as_bytes())).await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["id"], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    // GitHub redelivers it: stored once.
    let (_, again) = answer(deliver(signature(payload.as_bytes())).await.unwrap()).await;
    assert_eq!(again["duplicate"], true);

    wait_until("the fetcher asked for the review", || async {
        Ok(stored(&bus).await.iter().any(|e| e.r#type == REQUESTED))
    })
    .await
    .expect("review.requested");
    running.stop().await.expect("stops");
    let events = stored(&bus).await;
    assert_eq!(events.len(), 2, "the announcement and the request");
    let request = events.iter().find(|e| e.r#type == REQUESTED).unwrap();
    assert_eq!(
        request.correlation_id,
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
    let request: ReviewRequested = serde_json::from_slice(&request.data).unwrap();
    assert_eq!(request.diff, REFUNDS_DIFF);
    assert_eq!(request.repository, "acme/shop");
    assert_eq!(request.url, "https://github.com/acme/shop/pull/42");

    let ping = door
        .post("/v1/webhooks/github", None)
        .header("x-github-event", "ping")
        .header("x-hub-signature-256", signature(b"{}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_binary_refuses_a_bad_setting_with_64_and_serves_until_sigterm() {
    let bus = Bus::start().await.expect("bus");
    let binary = env!("CARGO_BIN_EXE_choreo-gateway");
    let bad = tokio::process::Command::new(binary)
        .env("NATS_URL", bus.server.url())
        .env("CHOREO_GATEWAY_TOKENS", "ci=tiny-secret:*")
        .output()
        .await
        .expect("runs");
    assert_eq!(bad.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("invalid tokens"),
        "names the setting: {stderr}"
    );
    assert!(stderr.contains("at least 16"), "{stderr}");
    assert!(
        !stderr.contains("tiny-secret"),
        "never echoes a token: {stderr}"
    );

    let port = free_port();
    let mut gateway = tokio::process::Command::new(binary)
        .env("NATS_URL", bus.server.url())
        .env("CHOREO_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("CHOREO_GATEWAY_TOKENS", format!("ci={CI_TOKEN}:*"))
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let http = reqwest::Client::new();
    wait_until("the gateway is ready", || async {
        Ok(http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK))
    })
    .await
    .expect("ready");
    let response = http
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .bearer_auth(CI_TOKEN)
        .json(&json!({"type": "build.step"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pid = gateway.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(30), gateway.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(0));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics`: requests by route and status, and the events stored, after one accepted
/// event and one refused token; read with a Prometheus text parser.
#[tokio::test]
async fn metrics_count_requests_by_status_and_the_events_stored() {
    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &[]).await;
    let accepted = door
        .event(
            json!({"type": "build.finished", "data": {"ok": true}}),
            None,
        )
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let refused = door
        .post("/v1/events", Some("not-a-token"))
        .json(&json!({"type": "build.finished", "data": {}}))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let (text, scrape) = choreo_testkit::metrics::scrape(&format!("{}/metrics", door.url))
        .await
        .expect("Prometheus text at /metrics");
    let value = |metric: &str, labels: &[(&str, &str)]| {
        choreo_testkit::metrics::total(&scrape, metric, labels)
    };
    let events = [("route", "events")];
    assert_eq!(
        value(
            "choreo_gateway_requests_total",
            &[events[0], ("status", "202")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            "choreo_gateway_requests_total",
            &[events[0], ("status", "401")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("choreo_gateway_events_published_total", &[]),
        1.0,
        "{text}"
    );
    assert!(
        text.contains("choreo_gateway_request_duration_seconds_bucket"),
        "{text}"
    );
}

/// A token speaks for its own name and the sources it is given, nothing else: a CloudEvent
/// claiming another source (another system, an agent) is refused 403 naming the field as the
/// request wrote it, in every content mode, and nothing is published.
#[tokio::test]
async fn a_cloudevent_claiming_a_source_its_token_was_not_given_is_refused() {
    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &[]).await;
    let document = |id: &str, source: &str| json!({"specversion": "1.0", "id": id, "source": source, "type": "build.step"});

    for spoofed in ["github", "triage", "cix"] {
        let response = door
            .send(
                "application/cloudevents+json",
                document("spoof", spoofed).to_string(),
            )
            .await;
        let (status, problem) = answer(response).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{spoofed}: {problem}");
        assert_eq!(problem["type"], "urn:choreo:problem:forbidden-source");
        assert_eq!(problem["field"], "source");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("{spoofed:?}")) && detail.contains("ci, ci/*, sensor/*"),
            "{detail}"
        );
    }
    let binary = door
        .post("/v1/events", Some(CI_TOKEN))
        .header("ce-specversion", "1.0")
        .header("ce-id", "spoof-binary")
        .header("ce-source", "github")
        .header("ce-type", "build.step")
        .send()
        .await
        .unwrap();
    let (status, problem) = answer(binary).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["field"], "ce-source");
    let batch = json!([document("fine", "ci/job-1"), document("spoof", "github")]);
    let (status, problem) = answer(
        door.send("application/cloudevents-batch+json", batch.to_string())
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["field"], "[1].source");
    // ops was given no sources: only its own name.
    let response = door
        .post("/v1/events", Some(OPS_TOKEN))
        .header("content-type", "application/cloudevents+json")
        .body(document("ops-as-ci", "ci").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, StatusCode::FORBIDDEN);
    assert!(stored(&bus).await.is_empty(), "nothing published");

    for (id, source) in [("own-name", "ci"), ("given", "sensor/7")] {
        let response = door
            .send(
                "application/cloudevents+json",
                document(id, source).to_string(),
            )
            .await;
        assert_eq!(answer(response).await.0, StatusCode::ACCEPTED, "{source}");
    }
    assert_eq!(stored(&bus).await.len(), 2);
}

/// The CloudEvents attributes `subject` and `dataschema`, sent to the gateway structured and
/// binary, come back out of `choreo replay --json` and `choreo tail --json` as they went in.
#[tokio::test]
async fn subject_and_dataschema_round_trip_to_choreo_tail_and_replay() {
    const SCHEMA: &str = "https://example.com/schemas/build-step.json";
    let bus = Bus::start().await.expect("bus");
    let door = Door::open(&bus, &[]).await;
    let structured = json!({
        "specversion": "1.0", "id": "with-subject", "source": "ci", "type": "build.step",
        "correlationid": "run-ce", "subject": "crates/bus", "dataschema": SCHEMA,
        "data": {"n": 1}
    });
    let (status, body) = answer(
        door.send("application/cloudevents+json", structured.to_string())
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let response = door
        .post("/v1/events", Some(CI_TOKEN))
        .header("ce-specversion", "1.0")
        .header("ce-id", "with-subject-binary")
        .header("ce-source", "ci")
        .header("ce-type", "build.step")
        .header("ce-correlationid", "run-ce")
        .header("ce-subject", "crates/gateway%20tests")
        .header("ce-dataschema", SCHEMA)
        .header("content-type", "application/json")
        .body(r#"{"n": 2}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, problem) = answer(
        door.send(
            "application/cloudevents+json",
            json!({"specversion": "1.0", "id": "bad-schema", "source": "ci",
                   "type": "build.step", "dataschema": "not a uri"})
            .to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "dataschema");

    let expected = [
        ("with-subject", "crates/bus"),
        ("with-subject-binary", "crates/gateway tests"),
    ];
    let check = |lines: &[Value], command: &str| {
        for (id, subject) in expected {
            let line = lines
                .iter()
                .find(|line| line["id"] == id)
                .unwrap_or_else(|| panic!("{command}: no {id} in {lines:?}"));
            assert_eq!(line["subject"], subject, "{command}: {line}");
            assert_eq!(line["dataschema"], SCHEMA, "{command}: {line}");
        }
    };
    let choreo = choreo_local_nats::process::sibling_binary("choreo")
        .expect("the choreo binary, built beside the tests (scripts/test builds it)");
    let replay = tokio::process::Command::new(&choreo)
        .args(["replay", "--json", "--correlation", "run-ce"])
        .env("NATS_URL", bus.server.url())
        .output()
        .await
        .expect("choreo replay runs");
    assert!(replay.status.success(), "{replay:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    check(&lines, "replay");

    let mut tail = tokio::process::Command::new(&choreo)
        .args(["tail", "--json", "--correlation", "run-ce", "--since", "1h"])
        .env("NATS_URL", bus.server.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("choreo tail starts");
    let mut out = tokio::io::BufReader::new(tail.stdout.take().expect("stdout"));
    let mut lines = Vec::new();
    while lines.len() < expected.len() {
        let mut line = String::new();
        tokio::time::timeout(
            choreo_testkit::PATIENCE,
            tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
        )
        .await
        .expect("tail prints the stored events")
        .expect("reads");
        lines.push(serde_json::from_str::<Value>(&line).expect("a JSON line"));
    }
    check(&lines, "tail");
    tail.kill().await.expect("tail stops");
}
