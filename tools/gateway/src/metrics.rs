//! What the gateway tells a scraper at `GET /metrics` (Prometheus text), on the API's own
//! listener and, like `/healthz` and `/readyz`, without a token:
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `choreo_gateway_requests_total` | counter | `route`, `status` | requests answered, by route (`events`, `github`) and HTTP status |
//! | `choreo_gateway_request_duration_seconds` | histogram | `route` | from the request to the answer, the stream's acknowledgement included |
//! | `choreo_gateway_events_published_total` | counter | | events the stream stored (duplicates of a retried request included) |

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

/// Answer times from half a millisecond to about 16 s, doubling.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The gateway's metrics; clones share them.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    requests: Family<Answered, Counter>,
    duration: Family<Route, Histogram, fn() -> Histogram>,
    published: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Answered, Counter>::default();
        let duration =
            Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(request_buckets);
        let published = Counter::default();
        registry.register(
            "choreo_gateway_requests",
            "Requests answered, by route and HTTP status",
            requests.clone(),
        );
        registry.register_with_unit(
            "choreo_gateway_request_duration",
            "From the request to the answer, the stream's acknowledgement included",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "choreo_gateway_events_published",
            "Events the stream stored",
            published.clone(),
        );
        GatewayMetrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                duration,
                published,
            }),
        }
    }
}

impl GatewayMetrics {
    /// A request on `route` was answered with `status` after `took`.
    pub(crate) fn answered(&self, route: &'static str, status: u16, took: Duration) {
        self.inner
            .requests
            .get_or_create(&Answered { route, status })
            .inc();
        self.inner
            .duration
            .get_or_create(&Route { route })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn published(&self, events: usize) {
        self.inner
            .published
            .inc_by(u64::try_from(events).unwrap_or(u64::MAX));
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }
}
