//! OpenTelemetry traces from a running team, received by a real OTLP/HTTP receiver that decodes
//! the protobuf the exporters send: one review is one trace across every process, its span tree
//! the causation tree, its model call a GenAI span; without the endpoint nothing is sent; and
//! `OTEL_TRACES_SAMPLER=traceidratio` exports whole runs, exactly those its ratio keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::IntoResponse;
use choreo_bus::Event;
use choreo_bus::envelope::TraceParent;
use choreo_local_nats::process::sibling_binary;
use choreo_review::events::{DELIVERED, REQUESTED};
use choreo_review::samples::refunds_request;
use choreo_testkit::cli::{clean_command, stderr};
use choreo_testkit::http::{chat_answer, loopback, serve};
use choreo_testkit::team::{TEAM, Team};
use choreo_testkit::{Bus, wait_until, workspace_root};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: SpanKind,
    attributes: BTreeMap<String, String>,
    /// The status message of a span marked failed.
    failed: Option<String>,
}

#[derive(Debug, Default)]
struct Receiver {
    requests: usize,
    spans: Vec<Received>,
}

type Spans = Arc<Mutex<Receiver>>;

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(x)) => x.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(values: &[KeyValue]) -> BTreeMap<String, String> {
    values
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// `POST /v1/traces`: decodes an OTLP/HTTP protobuf export and keeps its spans.
async fn export(State(spans): State<Spans>, body: axum::body::Bytes) -> axum::response::Response {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(err) => return (axum::http::StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    let mut received = spans.lock().unwrap_or_else(|e| e.into_inner());
    received.requests += 1;
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            received.spans.push(Received {
                service: service.clone(),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                name: span.name.clone(),
                kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                attributes: attributes(&span.attributes),
                failed: span
                    .status
                    .as_ref()
                    .filter(|status| status.code == StatusCode::Error as i32)
                    .map(|status| status.message.clone()),
            });
        }
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn receiver(address: std::net::SocketAddr) -> anyhow::Result<(String, Spans)> {
    let spans = Spans::default();
    let router = axum::Router::new()
        .route("/v1/traces", axum::routing::post(export))
        .with_state(spans.clone());
    let (bound, _task) = serve(address, router).await?;
    Ok((format!("http://{bound}"), spans))
}

/// Requests a review of `diff` (by default the sample change) with the `choreo` binary, as run
/// `id` (the request's own id) or, without one, a run named by the UUIDv7 the CLI generates;
/// gives the run.
async fn review_from_the_cli(
    bus: &Bus,
    id: Option<&str>,
    env: &[(&str, &str)],
    diff: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let diff = diff.map_or_else(
        || workspace_root().join("agents/review/samples/refunds.diff"),
        std::path::Path::to_path_buf,
    );
    let request = refunds_request();
    let mut command = clean_command(&sibling_binary("choreo")?, &bus.server.url());
    command.args(["review", "--repository", &request.repository]);
    if let Some(id) = id {
        command.args(["--id", id]);
    }
    command.arg("--diff").arg(diff).envs(env.iter().copied());
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "choreo review: {}",
        stderr(&output)
    );
    // "review of N file(s) requested: event <id>  run <run>"
    let printed = String::from_utf8_lossy(&output.stdout);
    printed
        .lines()
        .next()
        .and_then(|line| line.rsplit_once(" run "))
        .map(|(_, run)| run.trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("choreo review printed no run: {printed}"))
}

async fn delivered(bus: &Bus, team: &Team, run: &str) -> anyhow::Result<Vec<Event>> {
    let filter = format!("events.{run}.>");
    let outcome = wait_until(&format!("run {run} delivered"), || async {
        Ok(bus
            .events(&filter)
            .await?
            .iter()
            .any(|e| e.r#type == DELIVERED))
    })
    .await;
    if let Err(err) = outcome {
        anyhow::bail!("{err}\n{}", team.logs());
    }
    bus.events(&filter).await
}

const ANSWER: &str = r#"{"findings": []}"#;
/// A change carrying this is refused by the test's model endpoint.
const REFUSED: &str = "REFUSE-THIS-CHANGE";

#[tokio::test]
async fn one_review_is_one_trace_whose_span_tree_is_the_causation_tree() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let quick_export = [("OTEL_BSP_SCHEDULE_DELAY", "100")];

    // Without an endpoint: nothing is sent, not even to the OTLP default (localhost:4318).
    let (_, default_port) = receiver(std::net::SocketAddr::from(([127, 0, 0, 1], 4318))).await?;
    let mut team = Team::new(bus.server.url())?;
    team.start_all(&quick_export)?;
    review_from_the_cli(&bus, Some("run-untraced"), &quick_export, None).await?;
    delivered(&bus, &team, "run-untraced").await?;
    // Stopped, every process has flushed whatever it had to export.
    team.stop().await;
    assert_eq!(
        default_port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests,
        0,
        "nothing is exported without OTEL_EXPORTER_OTLP_ENDPOINT"
    );

    let (endpoint, spans) = receiver(loopback()).await?;
    // Answers every call, but refuses (400: the brain fails the handling at once) a change
    // that carries REFUSED.
    let chat = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|body: String| async move {
            if body.contains(REFUSED) {
                (axum::http::StatusCode::BAD_REQUEST, "refused by the test").into_response()
            } else {
                chat_answer("chatcmpl-otel", "gpt-otel-1", ANSWER).into_response()
            }
        }),
    );
    let (chat_address, _chat) = serve(loopback(), chat).await?;
    let llm_url = format!("http://{chat_address}/v1");
    let traced = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut team = Team::new(bus.server.url())?;
    for binary in TEAM {
        let mut env = traced.to_vec();
        if binary == "choreo-security" {
            env.extend([
                ("CHOREO_LLM_URL", llm_url.as_str()),
                ("CHOREO_LLM_MODEL", "gpt-otel"),
            ]);
        }
        team.start(binary, &env)?;
    }
    review_from_the_cli(&bus, Some("run-traced"), &traced, None).await?;
    let events = delivered(&bus, &team, "run-traced").await?;

    // A handling whose handler failed: its consumer span is marked failed, with the error.
    let refused_diff = tempfile::NamedTempFile::new()?;
    std::fs::write(
        refused_diff.path(),
        std::fs::read_to_string(workspace_root().join("agents/review/samples/refunds.diff"))?
            .replacen("+import os", &format!("+import os  # {REFUSED}"), 1),
    )?;
    review_from_the_cli(
        &bus,
        Some("run-refused"),
        &traced,
        Some(refused_diff.path()),
    )
    .await?;
    let failed_handling = || {
        spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spans
            .iter()
            .find(|s| {
                s.kind == SpanKind::Consumer
                    && s.service == "choreo-security"
                    && s.attributes
                        .get("messaging.message.conversation_id")
                        .map(String::as_str)
                        == Some("run-refused")
                    && s.failed.is_some()
            })
            .cloned()
    };
    let waited = wait_until("security's failed handling exported", || async {
        Ok(failed_handling().is_some())
    })
    .await;
    team.stop().await;
    if let Err(err) = waited {
        anyhow::bail!("{err}\n{}", team.logs());
    }
    let failed = failed_handling().and_then(|span| span.failed);
    assert!(
        failed
            .as_deref()
            .is_some_and(|why| why.contains("refused the request with 400")),
        "the span says why: {failed:?}"
    );

    let root = events
        .iter()
        .find(|e| e.r#type == REQUESTED)
        .expect("the request is in the run");
    let trace_id = hex(&TraceParent::parse(&root.traceparent)
        .expect("traceparent")
        .trace_id);
    let spans: Vec<Received> = spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .spans
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .cloned()
        .collect();
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let mut expected: BTreeSet<String> = events
        .iter()
        .filter(|e| !e.causation_id.is_empty())
        .map(|e| format!("choreo-{}", e.source))
        .collect();
    expected.insert("choreo".to_string());
    for service in &expected {
        assert!(
            services.contains(service.as_str()),
            "spans from {service} in the run's trace; from {services:?}"
        );
    }

    let of_kind = |kind: SpanKind, id: &str| -> Vec<&Received> {
        spans
            .iter()
            .filter(|s| {
                s.kind == kind
                    && s.attributes.get("messaging.message.id").map(String::as_str) == Some(id)
            })
            .collect()
    };
    for event in &events {
        let producers = of_kind(SpanKind::Producer, &event.id);
        assert_eq!(
            producers.len(),
            1,
            "one producer span for {} {}",
            event.r#type,
            event.id
        );
        let producer = producers[0];
        let own = TraceParent::parse(&event.traceparent).expect("traceparent");
        assert_eq!(
            producer.span_id,
            hex(&own.span_id),
            "the producer span is the event's traceparent"
        );
        assert_eq!(producer.name, format!("publish {}", event.r#type));
        assert_eq!(
            producer.attributes.get("messaging.message.conversation_id"),
            Some(&"run-traced".to_string())
        );
        assert_eq!(
            producer.attributes.get("messaging.system"),
            Some(&"nats".to_string())
        );
        for consumer in of_kind(SpanKind::Consumer, &event.id) {
            assert_eq!(
                consumer.parent_span_id, producer.span_id,
                "{}'s handling of {} hangs under its publishing",
                consumer.service, event.r#type
            );
            assert_eq!(
                consumer.attributes.get("messaging.destination.name"),
                Some(&format!("events.run-traced.{}", event.r#type))
            );
        }
        if event.causation_id.is_empty() {
            assert_eq!(producer.service, "choreo", "the CLI published the request");
            assert_eq!(
                producer.parent_span_id, "",
                "the root's publishing starts the trace"
            );
            continue;
        }
        let handling = of_kind(SpanKind::Consumer, &event.causation_id)
            .into_iter()
            .find(|c| c.service == format!("choreo-{}", event.source))
            .unwrap_or_else(|| panic!("{}'s handling of {}", event.source, event.causation_id));
        assert_eq!(
            producer.parent_span_id, handling.span_id,
            "{} was published within {}'s handling of its cause",
            event.r#type, event.source
        );
    }

    let model_calls: Vec<&Received> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client && s.name.starts_with("chat"))
        .collect();
    assert_eq!(model_calls.len(), 1, "one model call: {model_calls:#?}");
    let call = model_calls[0];
    assert_eq!(call.service, "choreo-security");
    assert_eq!(call.name, "chat gpt-otel");
    let attribute = |key: &str| call.attributes.get(key).map(String::as_str);
    assert_eq!(attribute("gen_ai.request.model"), Some("gpt-otel"));
    assert_eq!(attribute("gen_ai.response.model"), Some("gpt-otel-1"));
    assert_eq!(attribute("gen_ai.usage.input_tokens"), Some("100"));
    assert_eq!(attribute("gen_ai.usage.output_tokens"), Some("50"));
    let parent = spans
        .iter()
        .find(|s| s.span_id == call.parent_span_id)
        .expect("the model call's parent is in the trace");
    assert_eq!(
        (parent.kind, parent.service.as_str()),
        (SpanKind::Consumer, "choreo-security"),
        "the call was made within security's handling"
    );
    Ok(())
}

/// Whether `traceidratio` at `ratio` keeps `trace_id`, as the SDK in every process decides.
fn ratio_keeps(ratio: f64, trace_id: [u8; 16]) -> bool {
    use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
    Sampler::TraceIdRatioBased(ratio)
        .should_sample(
            None,
            opentelemetry::trace::TraceId::from_bytes(trace_id),
            "publish",
            &opentelemetry::trace::SpanKind::Producer,
            &[],
            &[],
        )
        .decision
        == SamplingDecision::RecordAndSample
}

#[tokio::test]
async fn a_sampling_ratio_exports_whole_runs_and_only_those() -> anyhow::Result<()> {
    const RATIO: &str = "0.5";
    let bus = Bus::start().await?;
    let (endpoint, spans) = receiver(loopback()).await?;
    let sampled = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", RATIO),
    ];
    let mut team = Team::new(bus.server.url())?;
    team.start_all(&sampled)?;
    let mut runs = Vec::new();
    // Without `--id`: the CLI generates the request's id, a UUIDv7, whose bytes make the trace
    // id, as for every request that comes without an id of its own.
    // Twenty runs: a ratio of one half keeps none of them once in a million.
    for _ in 0..20 {
        let run = review_from_the_cli(&bus, None, &sampled, None).await?;
        let events = delivered(&bus, &team, &run).await?;
        runs.push((run, events));
    }
    // Stopped, every process has flushed whatever it had to export.
    team.stop().await;

    let spans = spans.lock().unwrap_or_else(|e| e.into_inner());
    let mut kept = 0;
    for (run, events) in &runs {
        let root = events
            .iter()
            .find(|e| e.r#type == REQUESTED)
            .expect("the request is in the run");
        let trace = TraceParent::parse(&root.traceparent)
            .expect("traceparent")
            .trace_id;
        let trace_id = hex(&trace);
        let published: BTreeSet<&str> = spans
            .spans
            .iter()
            .filter(|s| s.trace_id == trace_id && s.kind == SpanKind::Producer)
            .filter_map(|s| s.attributes.get("messaging.message.id"))
            .map(String::as_str)
            .collect();
        if ratio_keeps(RATIO.parse()?, trace) {
            kept += 1;
            for event in events {
                assert!(
                    published.contains(event.id.as_str()),
                    "{run} is kept, so is its {} {}",
                    event.r#type,
                    event.id
                );
            }
        } else {
            assert!(
                spans.spans.iter().all(|s| s.trace_id != trace_id),
                "{run} is not kept, yet spans of it were exported: {published:?}"
            );
        }
    }
    // With the UUID's variant bits in the trace id's low bytes, a ratio of one half kept none.
    assert!(
        kept > 0,
        "a ratio of {RATIO} kept none of {} runs",
        runs.len()
    );
    Ok(())
}
