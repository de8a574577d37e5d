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
    /// The request's event id, which also names the run; a fresh UUIDv7 if not given. Running
    /// the command again with the same id after a failure stores the request once.
    #[arg(long)]
    id: Option<String>,
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
    let mut root = RootEvent::new(emit, "cli");
    if let Some(id) = args.id {
        root = root.with_id(id);
    }
    let event = root.into_event().map_err(Failure::data)?;
    async { publisher.send_event(&event).await?.confirmed().await }
        .await
        .map_err(|err| {
            let failure = Failure::publish(err);
            if failure.code == Failure::UNAVAILABLE {
                // The request may have been stored after all: the same id stores it once.
                failure.hint(format!(
                    "run the same command again with --id {} to request the review once",
                    event.id
                ))
            } else {
                failure
            }
        })?;
    println!(
        "review of {files} file(s) requested: event {}  run {}",
        event.id, event.correlation_id
    );
    println!("follow it with: choreo trace {}", event.correlation_id);
    Ok(())
}
