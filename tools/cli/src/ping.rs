//! `choreo ping`: whether the NATS server answers with JetStream, or whether an HTTP endpoint
//! answers 2xx. The health checks of the images, which have no shell (`compose.yaml`): the
//! NATS service pings its own server, the gateway service its own `/readyz`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Failure;
use crate::connection::Connection;

#[derive(Debug, clap::Args)]
pub struct PingArgs {
    /// Instead of NATS, GET this URL and expect a 2xx answer (the gateway's /readyz).
    #[arg(long, value_name = "URL")]
    http: Option<String>,
    /// How long the answer may take.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    connection: Connection,
}

/// 0 when it answers; 69 when it does not (or not in time), 64 for a URL that is not one.
pub async fn run(args: PingArgs) -> Result<(), Failure> {
    match &args.http {
        Some(url) => http(url, args.timeout).await,
        None => jetstream(&args.connection, args.timeout).await,
    }
}

async fn jetstream(connection: &Connection, timeout: Duration) -> Result<(), Failure> {
    let jetstream = connection.jetstream().await?;
    let answer = tokio::time::timeout(timeout, jetstream.query_account())
        .await
        .map_err(|_| {
            Failure::unavailable(format!(
                "NATS at {} did not answer for JetStream in {timeout:?}",
                connection.nats_url
            ))
        })?
        .map_err(|err| {
            Failure::unavailable(format!(
                "NATS at {} answers, JetStream does not: {err}",
                connection.nats_url
            ))
        })?;
    println!(
        "NATS at {}: JetStream answers ({} streams, {} consumers)",
        connection.nats_url, answer.streams, answer.consumers
    );
    Ok(())
}

/// A plain HTTP/1.1 GET of a local `http://` URL: the one request a health check makes needs no
/// HTTP client beyond the status line.
async fn http(url: &str, timeout: Duration) -> Result<(), Failure> {
    let (authority, path) = url
        .strip_prefix("http://")
        .map(|rest| {
            rest.split_once('/')
                .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")))
        })
        .ok_or_else(|| Failure::usage(format!("{url}: only http:// URLs (a local probe)")))?;
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Failure::unavailable(format!("{url} did not answer in {timeout:?}")))?
        .map_err(|err| Failure::unavailable(format!("{url}: {err}")))?;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    let success = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2') && code.len() == 3);
    if success {
        println!("{url}: {status_line}");
        Ok(())
    } else {
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body.trim());
        Err(Failure::unavailable(format!(
            "{url} answered {status_line:?}: {body}"
        )))
    }
}
