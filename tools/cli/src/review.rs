//! `choreo review`: submits a change to the review team. Reads a unified diff from a file or
//! standard input, checks that it is one, and publishes `review.requested`.

use choreo_bus::{Publisher, RootEvent};
use choreo_review::Diff;
use choreo_review::events::{REQUESTED, ReviewRequested};

use crate::Failure;
use crate::connection::Connection;

#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// The diff: a file, or `-` for standard input (`git diff main | choreo review`).
    #[arg(long, default_value = "-", value_name = "FILE")]
    diff: String,
    /// The repository, e.g. `acme/shop`.
    #[arg(long, default_value = "")]
    repository: String,
    #[arg(long, default_value = "")]
    title: String,
    #[arg(long, default_value = "")]
    author: String,
    /// Where a person can see the change (a pull request).
    #[arg(long, default_value = "")]
    url: String,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: ReviewArgs) -> Result<(), Failure> {
    let diff = crate::publish::read_input(&args.diff)?;
    let files = Diff::parse(&diff)
        .map_err(|err| Failure::data(format!("{}: {err}", args.diff)))?
        .files
        .len();
    let request = ReviewRequested {
        diff,
        repository: args.repository,
        title: args.title,
        author: args.author,
        url: args.url,
    };
    let emit = choreo_review::emit_json(REQUESTED, &request).map_err(Failure::data)?;
    let publisher = Publisher::new(
        args.connection.jetstream().await?,
        args.connection.namespace()?,
    );
    let published = publisher
        .publish_root(RootEvent::new(emit, "cli"))
        .await
        .map_err(Failure::publish)?;
    println!(
        "review of {files} file(s) requested: event {}  run {}",
        published.event_id, published.correlation_id
    );
    println!("follow it with: choreo trace {}", published.correlation_id);
    Ok(())
}
