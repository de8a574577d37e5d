//! What every page shares: the shell (navigation, the NATS banner, styles and script), the
//! pages for what is not there or not answering, small pieces of markup, and the server-sent
//! event streams that keep a page current.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use choreo_bus::projection::run_board::RunStatus;
use futures::Stream;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use time::OffsetDateTime;

use super::Console;
use super::live::Board;
use crate::Failure;

/// Events sent at most this often on a busy log: a page is redrawn, not animated.
const LIVE_PACE: Duration = Duration::from_millis(300);

/// A page's frame.
#[derive(Debug)]
pub struct Layout<'a> {
    title: String,
    console: &'a Console,
    /// The event stream that keeps the page current.
    live: Option<String>,
    /// What the stream's `version` events are compared with: the page reloads on another.
    version: Option<String>,
    /// A message at the top (what an action did).
    notice: Option<String>,
    /// No navigation (the log-in form).
    plain: bool,
}

impl<'a> Layout<'a> {
    pub fn new(title: impl Into<String>, console: &'a Console) -> Self {
        Layout {
            title: title.into(),
            console,
            // Pages that change by themselves ask for a stream; the others show the state of
            // NATS as it was when they were drawn, and hold no connection.
            live: None,
            version: None,
            notice: None,
            plain: false,
        }
    }

    pub fn live(mut self, source: impl Into<String>) -> Self {
        self.live = Some(source.into());
        self
    }

    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    pub fn notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice;
        self
    }

    pub fn plain(mut self) -> Self {
        self.plain = true;
        self.live = None;
        self
    }

    pub fn render(self, body: Markup) -> Markup {
        let console = self.console;
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · choreo console" }
                    link rel="stylesheet" href="/console.css";
                    script src="/console.js" defer {}
                }
                body data-live=[self.live.as_deref()] data-version=[self.version.as_deref()] {
                    @if !self.plain {
                        header.top {
                            a.brand href="/" { "choreo" }
                            nav {
                                a href="/" { "Runs" }
                                a href="/agents" { "Agents" }
                                a href="/dead-letters" { "Dead letters" }
                                a href="/compare" { "Compare" }
                            }
                            span.where { "namespace " b { (console.namespace) } " · NATS " (console.nats_url) }
                        }
                    }
                    div #status { (status_banner(&console.live.board())) }
                    @if let Some(notice) = &self.notice {
                        div.banner.done { (notice) }
                    }
                    main { (body) }
                }
            }
        }
    }
}

/// The banner that says NATS or the log is not answering; empty when all is well.
pub fn status_banner(board: &Board) -> Markup {
    html! {
        @if let Some((title, problem)) = board.problem() {
            div.banner.down {
                strong { (title) } " since " (clock(problem.since)) ": " (problem.what) ". "
                "What is shown is what the console had then; it catches up by itself."
            }
        } @else if !board.loaded {
            div.banner.wait { "Reading the log…" }
        } @else {
            // Never empty: a browser does not dispatch a server-sent event without data, and
            // the banner must go when NATS is back.
            span.all-well {}
        }
    }
}

/// `/live/status`: the banner, for pages with nothing else live.
pub async fn live_status(State(console): State<Console>) -> impl IntoResponse {
    events(&console, None, move || async { Vec::new() })
}

/// A page's event stream: the NATS banner as `status`, and whatever `render` makes, sent when
/// the board changes or, with `every`, at that pace too. An event goes out again only when what
/// it carries changed, at most every [`LIVE_PACE`].
pub fn events<F, Fut>(
    console: &Console,
    every: Option<Duration>,
    render: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<F, Fut>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Vec<(&'static str, String)>> + Send,
{
    use futures::StreamExt as _;
    let feed = Feed {
        changes: console.live.subscribe(),
        live: console.live.clone(),
        sent: Vec::new(),
        first: true,
        every,
        render,
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if !feed.first {
                match feed.every {
                    Some(every) => {
                        tokio::select! {
                            changed = feed.changes.changed() => changed.ok()?,
                            () = tokio::time::sleep(every) => {}
                        }
                    }
                    None => feed.changes.changed().await.ok()?,
                }
                tokio::time::sleep(LIVE_PACE).await;
            }
            feed.first = false;
            feed.changes.borrow_and_update();
            let status = status_banner(&feed.live.board()).into_string();
            let mut drawn = vec![("status", status)];
            drawn.extend((feed.render)().await);
            let mut fresh = Vec::new();
            for (name, data) in drawn {
                match feed.sent.iter_mut().find(|(sent, _)| *sent == name) {
                    Some((_, before)) if *before == data => continue,
                    Some((_, before)) => *before = data.clone(),
                    None => feed.sent.push((name, data.clone())),
                }
                fresh.push(Ok(Event::default().event(name).data(data)));
            }
            if !fresh.is_empty() {
                return Some((futures::stream::iter(fresh), feed));
            }
        }
    });
    Sse::new(stream.flatten()).keep_alive(KeepAlive::default())
}

struct Feed<F> {
    changes: tokio::sync::watch::Receiver<u64>,
    live: std::sync::Arc<super::live::Live>,
    /// The last data sent, by event name.
    sent: Vec<(&'static str, String)>,
    first: bool,
    every: Option<Duration>,
    render: F,
}

/// A page that says what went wrong, with the status that fits: 404 for what is not there,
/// 503 (and a page that tries again by itself) while NATS is not answering.
pub fn failure(console: &Console, failure: &Failure) -> Response {
    match failure.code {
        66 => not_found(console, "Not found", &failure.message),
        64 | 65 => problem_page(
            console,
            StatusCode::BAD_REQUEST,
            "That does not work",
            &failure.message,
        ),
        Failure::UNAVAILABLE => unavailable(console, &failure.message),
        _ => problem_page(
            console,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something failed",
            &failure.message,
        ),
    }
}

pub fn not_found(console: &Console, title: &str, message: &str) -> Response {
    let body = html! {
        div.notfound {
            h1 { (title) }
            p.big { (message) }
            p { a href="/" { "Back to the runs" } " · " a href="/dead-letters" { "Dead letters" } }
        }
    };
    (
        StatusCode::NOT_FOUND,
        Layout::new(title.to_string(), console).render(body),
    )
        .into_response()
}

/// NATS not answering: the page says so and loads itself again every few seconds.
pub fn unavailable(console: &Console, message: &str) -> Response {
    let body = html! {
        meta http-equiv="refresh" content="3";
        h1 { "NATS is unavailable" }
        p.big { (message) }
        p { "This page tries again every 3 seconds and shows itself once NATS answers (" (console.nats_url) ")." }
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "3")],
        Layout::new("NATS is unavailable", console).render(body),
    )
        .into_response()
}

fn problem_page(console: &Console, status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p.big { (message) }
    };
    (status, Layout::new(title.to_string(), console).render(body)).into_response()
}

/// Any page the console does not have.
pub async fn no_such_page(State(console): State<Console>, uri: Uri) -> Response {
    not_found(
        &console,
        "No such page",
        &format!("The console has no page {}.", uri.path()),
    )
}

/// NATS not answering now: no page waits on a request that cannot be answered.
pub fn nats_away(console: &Console) -> Option<Response> {
    (console.client.connection_state() != async_nats::connection::State::Connected).then(|| {
        unavailable(
            console,
            &format!("The console cannot reach NATS at {}.", console.nats_url),
        )
    })
}

/// `path` when it is a path of this site (not another site's address): where a form may send
/// a person back to.
pub fn local_path(path: &str) -> Option<&str> {
    (path.starts_with('/') && !path.starts_with("//") && !path.contains('\\')).then_some(path)
}

/// `path` with `name=value` added to its query.
pub fn with_param(path: &str, name: &str, value: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{name}={}", encode(value))
}

/// A query string of the pairs whose value is not empty.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={}", encode(value)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A run's status as a coloured word.
pub fn badge(status: &RunStatus) -> Markup {
    let name = status.name();
    html! { span class={ "badge " (name) } data-status=(name) { (name) } }
}

/// A time of day in UTC, with the date when it is not today.
pub fn clock(time: OffsetDateTime) -> String {
    let now = OffsetDateTime::now_utc();
    let time = time.to_offset(time::UtcOffset::UTC);
    if time.date() == now.date() {
        format!(
            "{:02}:{:02}:{:02}",
            time.hour(),
            time.minute(),
            time.second()
        )
    } else {
        format!("{} {:02}:{:02}", time.date(), time.hour(), time.minute())
    }
}

/// How long ago, in whole units.
pub fn ago(time: OffsetDateTime) -> String {
    let seconds = (OffsetDateTime::now_utc() - time).whole_seconds().max(0);
    match seconds {
        0..5 => "just now".to_string(),
        5..60 => format!("{seconds} s ago"),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86_400 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

/// A duration in milliseconds, in the unit that reads best.
pub fn span(ms: f64) -> String {
    match ms {
        ms if ms < 1000.0 => format!("{ms:.0} ms"),
        ms if ms < 60_000.0 => format!("{:.1} s", ms / 1000.0),
        ms if ms < 3_600_000.0 => format!("{:.0} min", ms / 60_000.0),
        ms if ms < 86_400_000.0 => format!("{:.1} h", ms / 3_600_000.0),
        ms => format!("{:.1} d", ms / 86_400_000.0),
    }
}

/// Millionths of the price's unit, as money.
pub fn cost(micros: u64) -> String {
    if micros == 0 {
        "–".to_string()
    } else {
        format!("{:.4}", micros as f64 / 1e6)
    }
}

/// A payload as text: pretty JSON when it is JSON, else the bytes as stored when they are
/// text, else what they are.
pub fn payload_text(event: &choreo_bus::Event) -> String {
    if let Some(value) = choreo_bus::cloudevents::data_as_json(event)
        && !value.is_string()
        && let Ok(pretty) = serde_json::to_string_pretty(&value)
    {
        return pretty;
    }
    match std::str::from_utf8(&event.data) {
        Ok(text) => text.to_string(),
        Err(_) => format!(
            "({} bytes of {}, not text)",
            event.data.len(),
            if event.content_type.is_empty() {
                "no content type"
            } else {
                &event.content_type
            }
        ),
    }
}

pub async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

/// Raw markup made by a function that escapes what it draws (the trace's SVG).
pub fn trusted(markup: String) -> PreEscaped<String> {
    PreEscaped(markup)
}

const STYLESHEET: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_sends_back_only_to_this_site() {
        assert_eq!(local_path("/runs/r1?ns=lab"), Some("/runs/r1?ns=lab"));
        for elsewhere in [
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "runs",
        ] {
            assert_eq!(local_path(elsewhere), None, "{elsewhere}");
        }
    }

    #[test]
    fn query_values_are_encoded_and_empty_ones_left_out() {
        assert_eq!(
            query(&[("a", "events/r 1&x"), ("b", "")]),
            "?a=events/r%201%26x"
        );
        assert_eq!(query(&[("b", "")]), "");
        assert_eq!(
            with_param("/runs/r1?ns=lab", "done", "ok."),
            "/runs/r1?ns=lab&done=ok."
        );
        assert_eq!(
            with_param("/dead-letters", "done", "a b"),
            "/dead-letters?done=a%20b"
        );
    }

    #[test]
    fn times_ago_read_in_whole_units() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(ago(now), "just now");
        assert_eq!(ago(now - time::Duration::seconds(42)), "42 s ago");
        assert_eq!(ago(now - time::Duration::minutes(90)), "1 h ago");
        assert_eq!(span(250.0), "250 ms");
        assert_eq!(span(1500.0), "1.5 s");
    }
}
