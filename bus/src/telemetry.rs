//! Log output and OpenTelemetry traces for binaries, chosen by environment.
//!
//! Logs:
//! - `CHOREO_LOG_FORMAT`: `human` (default) or `json` (one JSON object per line, with the
//!   current span's fields: agent, event id, type, correlation and causation ids).
//! - `RUST_LOG`: the usual filter, default `info`.
//!
//! The runtime opens one span, `handle`, per handled event; everything logged while handling
//! carries its fields.
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set,
//! spans are exported by OTLP over HTTP (protobuf), batched on a thread of their own; the other
//! standard variables apply (`OTEL_SERVICE_NAME`, default the binary's name;
//! `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_TRACES_SAMPLER` and `_ARG`; `OTEL_EXPORTER_OTLP_HEADERS`;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off). Unset: no exporter is
//! built and nothing on the event path does any tracing work beyond one flag read.
//!
//! The spans of one run form one trace whose tree is the causation tree:
//! - a **producer** span per event published, `publish <type>`, whose span id is the one in
//!   the event's own `traceparent` (so whatever handles the event hangs under it), child of
//!   the handling that emitted it;
//! - a **consumer** span per handling, `process <type>`, whose parent is the event's
//!   `traceparent`, marked failed when the handler failed or timed out;
//! - a **client** span per model call, `chat <model>`, with the GenAI attributes, under the
//!   handling that made it.
//!
//! Messaging attributes follow the OpenTelemetry messaging conventions: `messaging.system`
//! `nats`, the subject as `messaging.destination.name`, the event id as
//! `messaging.message.id`, the run as `messaging.message.conversation_id`.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use choreo_proto::v1::Event;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::envelope::TraceParent;

/// The variables above, for the end of a binary's `--help`.
pub const ENV_HELP: &str = "Logs (environment): CHOREO_LOG_FORMAT=human|json [default: human], \
                            RUST_LOG=FILTER [default: info]. Traces: OTEL_EXPORTER_OTLP_ENDPOINT=URL \
                            (OTLP over HTTP) and the other standard OTEL_* variables [default: off]";

/// The name of the runtime's span around each handling, in the logs; the traces have their
/// own consumer span for it ([`consumer_span`]).
pub(crate) const HANDLE_SPAN: &str = "handle";

/// How long the spans not yet exported get at exit.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

/// Why telemetry could not be set up: bad configuration, named.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("CHOREO_LOG_FORMAT={0:?}: use human or json")]
    LogFormat(String),
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL={0:?}: only http/protobuf is built in; point it at an \
         OTLP/HTTP endpoint (a collector's port 4318) or unset it"
    )]
    Protocol(String),
    #[error("cannot build the OTLP exporter: {0} (check OTEL_EXPORTER_OTLP_ENDPOINT)")]
    Exporter(String),
}

/// What [`init`] set up. Keep it for the life of the process: [`Telemetry::shutdown`] (or
/// dropping it) exports the spans still waiting, within a few seconds.
#[must_use = "dropping it at once stops the trace export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is waiting and stops the exporter.
    pub fn shutdown(mut self) {
        self.flush_and_stop();
    }

    fn flush_and_stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown_with_timeout(FLUSH_AT_EXIT)
        {
            eprintln!("could not export the last spans: {err}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush_and_stop();
    }
}

static EXPORTING: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether this process exports spans: every span-making path asks this first, so without an
/// exporter they cost one load.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Installs the global subscriber (logs, and traces when configured) for the binary `service`
/// (the default `service.name`). Calling it twice is harmless: the first set-up stays.
pub fn init(service: &str) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("CHOREO_LOG_FORMAT").unwrap_or_default();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let logs = match format.as_str() {
        "" | "human" => fmt.boxed(),
        "json" => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        other => return Err(TelemetryError::LogFormat(other.to_string())),
    };
    install(service, Some(logs.with_filter(filter).boxed()))
}

/// Traces only, when configured, for a command-line tool that prints its own output and
/// keeps the library's log lines to itself.
pub fn init_traces(service: &str) -> Result<Telemetry, TelemetryError> {
    install(service, None)
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn install(service: &str, logs: Option<BoxedLayer>) -> Result<Telemetry, TelemetryError> {
    let provider = otlp_provider(service)?;
    if logs.is_none() && provider.is_none() {
        return Ok(Telemetry::default());
    }
    let traces = provider.as_ref().map(|provider| {
        let tracer = provider.tracer("choreo");
        let _ = TRACER.set(tracer.clone());
        // Only spans: the log lines go to the logs, not into the trace as events; and not the
        // runtime's `handle` span, whose consumer span `consumer_span` makes. The layer does no
        // work per span that nothing reads: no source location, thread or target attributes,
        // no busy/idle clocks on every poll, and no OpenTelemetry context made current on
        // every poll (a span made inside a handling finds it as the current context, which the
        // runtime sets).
        tracing_opentelemetry::layer()
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.name() != HANDLE_SPAN
            }))
            .boxed()
    });
    let layers: Vec<BoxedLayer> = logs.into_iter().chain(traces).collect();
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry {
        provider: provider.filter(|_| installed),
    })
}

/// The tracer provider the `OTEL_*` variables describe, or `None` when no endpoint is set.
fn otlp_provider(service: &str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if set("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .is_none()
        || set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = set(variable)
            && protocol != "http/protobuf"
        {
            return Err(TelemetryError::Protocol(protocol));
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|err| TelemetryError::Exporter(err.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_by_environment = set("OTEL_SERVICE_NAME").is_some()
        || set("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named_by_environment {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .with_id_generator(EventSpanIds::default())
            .build(),
    ))
}

thread_local! {
    /// The ids the next span built on this thread takes: see [`EventSpanIds`].
    static CHOSEN_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for a producer span, which takes the ids of its event's `traceparent`:
/// the SDK has no other way to give a span a chosen id, and that id is what every handling of
/// the event names as its parent.
#[derive(Debug, Default)]
struct EventSpanIds {
    random: RandomIdGenerator,
}

impl IdGenerator for EventSpanIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN_IDS
            .get()
            .map_or_else(|| self.random.new_trace_id(), |(trace, _)| trace)
    }

    fn new_span_id(&self) -> SpanId {
        CHOSEN_IDS
            .get()
            .map_or_else(|| self.random.new_span_id(), |(_, span)| span)
    }
}

/// The remote context an event's `traceparent` names, for parenting its handling.
fn remote_context(traceparent: &TraceParent) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(traceparent.trace_id),
        SpanId::from_bytes(traceparent.span_id),
        // The caller's decision, where a caller sent a traceparent of its own; the envelope's
        // own are sampled.
        TraceFlags::new(traceparent.flags),
        true,
        TraceState::default(),
    ))
}

/// Whether `traceparent`'s span is `event`'s own (as the envelope derives it), rather than a
/// caller's that the event continues.
fn names_event(traceparent: &TraceParent, event: &Event) -> bool {
    if event.causation_id.is_empty() {
        let from_uuid = uuid::Uuid::parse_str(&event.id)
            .ok()
            .map(|uuid| TraceParent::root_from_uuid(&uuid).span_id);
        from_uuid == Some(traceparent.span_id)
            || TraceParent::root_for(&event.id).span_id == traceparent.span_id
    } else {
        traceparent.child_for(&event.id).span_id == traceparent.span_id
    }
}

/// A span builder for `event` on `subject`, named `<operation> <type>`, of `kind`, with the
/// messaging attributes and `more`: how both the producer and the consumer span start.
fn message_span(
    tracer: &SdkTracer,
    operation: &str,
    kind: SpanKind,
    event: &Event,
    subject: &str,
    more: [KeyValue; 3],
) -> SpanBuilder {
    let mut attributes = Vec::with_capacity(10);
    attributes.extend([
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.destination.name", subject.to_string()),
        KeyValue::new("messaging.message.id", event.id.clone()),
        KeyValue::new(
            "messaging.message.conversation_id",
            event.correlation_id.clone(),
        ),
        KeyValue::new("choreo.event.type", event.r#type.clone()),
        KeyValue::new("choreo.event.source", event.source.clone()),
        KeyValue::new("choreo.event.depth", i64::from(event.depth)),
    ]);
    attributes.extend(more);
    // Pushed into a string of the right size, not formatted: this runs for every handling.
    let mut name = String::with_capacity(operation.len() + 1 + event.r#type.len());
    name.push_str(operation);
    name.push(' ');
    name.push_str(&event.r#type);
    tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
}

/// A producer span for `event`, published on `subject` (`size` bytes), ended when dropped;
/// `None` when not exporting. Its parent is the current span (the handling that emitted the
/// event), or none for a root; its ids are the event's `traceparent`'s, when that continues
/// the current trace or starts one.
pub(crate) fn producer_span(
    event: &Event,
    subject: &str,
    size: usize,
) -> Option<opentelemetry_sdk::trace::Span> {
    if !exporting() {
        return None;
    }
    let tracer = TRACER.get()?;
    // Inside a handling, the handling's consumer span; elsewhere (the gateway, the CLI) the
    // current `tracing` span's.
    let current = Context::current();
    let parent = if current.has_active_span() {
        current
    } else {
        tracing::Span::current().context()
    };
    let traceparent = TraceParent::parse(&event.traceparent);
    // A root whose publisher gave its own traceparent: the publishing hangs under the
    // caller's span, and so do the handlings (they name the caller's span as parent).
    let parent = match traceparent {
        Some(tp) if !names_event(&tp, event) && !parent.span().span_context().is_valid() => {
            remote_context(&tp)
        }
        _ => parent,
    };
    let parent_trace = parent.span().span_context().trace_id();
    let chosen = traceparent.filter(|tp| {
        names_event(tp, event)
            && (parent_trace == TraceId::INVALID
                || parent_trace == TraceId::from_bytes(tp.trace_id))
    });
    let builder = message_span(
        tracer,
        "publish",
        SpanKind::Producer,
        event,
        subject,
        [
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new(
                "messaging.message.body.size",
                i64::try_from(size).unwrap_or(i64::MAX),
            ),
        ],
    );
    CHOSEN_IDS.set(chosen.map(|tp| {
        (
            TraceId::from_bytes(tp.trace_id),
            SpanId::from_bytes(tp.span_id),
        )
    }));
    let span = tracer.build_with_context(builder, &parent);
    CHOSEN_IDS.set(None);
    Some(span)
}

/// The consumer span of one handling of `event` (delivery `delivery`, on `subject`) by
/// `agent`: `process <type>`, child of the event's `traceparent`, as the context to run the
/// handling in ([`opentelemetry::context::FutureExt::with_context`]), so the spans made
/// during it (its children's producer spans, its model calls') hang under it. `None` when
/// not exporting. End it with [`end_consumer_span`].
///
/// Made with the OpenTelemetry API rather than from the runtime's `handle` span, which the
/// trace layer leaves out ([`HANDLE_SPAN`]): converting a `tracing` span (visiting its
/// fields, looking it up on every attribute set, building it at close) costs several times
/// this, on every handling.
pub(crate) fn consumer_span(
    agent: &str,
    event: &Event,
    subject: &str,
    delivery: u64,
) -> Option<Context> {
    if !exporting() {
        return None;
    }
    let tracer = TRACER.get()?;
    let parent = TraceParent::parse(&event.traceparent)
        .map_or_else(Context::new, |traceparent| remote_context(&traceparent));
    let builder = message_span(
        tracer,
        "process",
        SpanKind::Consumer,
        event,
        subject,
        [
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.consumer.group.name", agent.to_string()),
            KeyValue::new(
                "choreo.delivery",
                i64::try_from(delivery).unwrap_or(i64::MAX),
            ),
        ],
    );
    let span = tracer.build_with_context(builder, &parent);
    Some(parent.with_span(span))
}

/// Ends the consumer span in `consumer`; `failure`, the handler's error, marks it failed.
pub(crate) fn end_consumer_span(consumer: &Context, failure: Option<String>) {
    let span = consumer.span();
    if let Some(failure) = failure {
        span.set_status(Status::error(failure));
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Emit, RootEvent, stamp_child};
    use crate::names::{AgentName, EventType};

    fn emit() -> Emit {
        Emit::new(
            EventType::new("a.b").expect("type"),
            "text/plain",
            "x".into(),
        )
    }

    #[test]
    fn an_events_own_span_is_told_from_a_callers() {
        let root = RootEvent::new(emit(), "cli").into_event().expect("valid");
        let own = |event: &Event| {
            names_event(&TraceParent::parse(&event.traceparent).expect("tp"), event)
        };
        assert!(own(&root), "a generated root's traceparent names it");
        let keyed = RootEvent::new(emit(), "cli")
            .with_id("order-7")
            .into_event()
            .expect("valid");
        assert!(own(&keyed), "so does one of a caller's id");
        let child = stamp_child(&root, &AgentName::new("agent").expect("name"), 0, emit());
        assert!(own(&child), "a child's traceparent names the child");
        let continued = RootEvent::new(emit(), "gateway")
            .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .into_event()
            .expect("valid");
        assert!(
            !own(&continued),
            "a caller's traceparent names the caller's span"
        );
    }

    /// `OTEL_TRACES_SAMPLER=traceidratio` decides on the low 8 bytes of the trace id, which
    /// for a generated root are its id's: they must be random there, or a ratio keeps the
    /// wrong share of runs (none at all below one half, with a UUID's fixed variant bits).
    #[test]
    fn a_ratio_sampler_keeps_about_its_ratio_of_generated_runs() {
        use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
        let sampler = Sampler::TraceIdRatioBased(0.1);
        let runs = 4000;
        let kept = (0..runs)
            .filter(|_| {
                let root = RootEvent::new(emit(), "cli").into_event().expect("valid");
                let traceparent = TraceParent::parse(&root.traceparent).expect("tp");
                let decision = sampler
                    .should_sample(
                        None,
                        TraceId::from_bytes(traceparent.trace_id),
                        "publish a.b",
                        &SpanKind::Producer,
                        &[],
                        &[],
                    )
                    .decision;
                decision == SamplingDecision::RecordAndSample
            })
            .count();
        // 400 expected; the bounds are more than six standard deviations (19) away.
        assert!(
            (280..=520).contains(&kept),
            "a 0.1 ratio kept {kept} of {runs} runs"
        );
    }
}
