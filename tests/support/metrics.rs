//! A process's Prometheus text read the way Prometheus reads it (a text-format parser), for
//! the tests of the agents' and the gateway's `/metrics`.

pub use prometheus_parse::Scrape;
use prometheus_parse::Value;

/// `GET url` (a `/metrics` endpoint): the text, and it parsed.
pub async fn scrape(url: &str) -> anyhow::Result<(String, Scrape)> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_string())))?;
    Ok((text, scrape))
}

/// The sum of `metric`'s samples whose labels include every pair of `labels`.
///
/// # Panics
///
/// When a matching sample is not a single number (a histogram or summary): a test asking for
/// one is asking the wrong question.
#[allow(clippy::panic, reason = "a test's wrong question says so at once")]
pub fn total(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)))
        .map(|sample| match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{metric} is not a single number: {other:?}"),
        })
        .sum()
}
