//! Bearer tokens from configuration, each allowed a set of event types.
//!
//! Written `NAME=TOKEN:TYPES`, entries separated by `;` or new lines, types by `,`:
//! `ci=0123456789abcdef:review.requested;ops=fedcba9876543210:*`. A type ending in `.*` allows
//! every type under it (`review.*` allows `review.requested` and `review.x.y`); `*` allows all.
//! The name is the `source` of the events the token publishes and appears in logs; the token
//! itself never does.
//!
//! A token's events carry its name as their `source`, or a source it is configured to use
//! ([`Tokens::with_sources`], `CHOREO_GATEWAY_SOURCES`): `NAME=SOURCE,SOURCE;…`, where a source
//! ending in `*` allows every source that starts with the rest (`https://ci.example.com/*`)
//! and `*` allows any. A CloudEvent claiming any other source is refused: a token cannot
//! speak for a system, or an agent, it was not given.
//!
//! Tokens are kept as SHA-256 digests and looked up by the digest of what a request presents,
//! so finding one takes the same time however much of a guess matches.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use choreo_bus::ValidationError;
use choreo_bus::names::{validate_label, validate_type};
use sha2::{Digest, Sha256};

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// A client the gateway knows by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    allowed: Vec<Pattern>,
    /// Sources it may claim besides its name.
    sources: Vec<Pattern>,
}

impl Client {
    /// Whether this client may publish events of `event_type`.
    pub fn may_publish(&self, event_type: &str) -> bool {
        self.allowed
            .iter()
            .any(|pattern| pattern.matches(event_type))
    }

    /// Whether this client's events may carry `source`: its own name, or one it is configured
    /// to use.
    pub fn may_claim(&self, source: &str) -> bool {
        source == self.name || self.sources.iter().any(|pattern| pattern.matches(source))
    }

    /// The sources it may claim as written, its name first, for messages.
    pub fn sources(&self) -> String {
        std::iter::once(self.name.clone())
            .chain(self.sources.iter().map(ToString::to_string))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The allowed types as written, for messages.
    pub fn allowed(&self) -> String {
        self.allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What a client may send or claim: anything (`*`), one value exactly, or every value that
/// starts with a prefix. Types and sources are patterns of this one kind; they differ only in
/// how they are written ([`type_pattern`], [`source_pattern`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exactly(String),
    StartingWith(String),
}

impl Pattern {
    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exactly(exact) => exact == value,
            Pattern::StartingWith(prefix) => value.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => write!(f, "*"),
            Pattern::Exactly(exact) => write!(f, "{exact}"),
            Pattern::StartingWith(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// An event type a token may publish: `*`, `prefix.*` (every type under the prefix), or one.
fn type_pattern(text: &str) -> Result<Pattern, ValidationError> {
    let text = text.trim();
    if text == "*" {
        return Ok(Pattern::Any);
    }
    if let Some(prefix) = text.strip_suffix(".*") {
        validate_type(prefix).map_err(|err| ValidationError::new("tokens", err.reason))?;
        return Ok(Pattern::StartingWith(format!("{prefix}.")));
    }
    validate_type(text).map_err(|err| ValidationError::new("tokens", err.reason))?;
    Ok(Pattern::Exactly(text.to_string()))
}

/// A source a client may claim: `*`, a prefix (`https://ci.example.com/*`), or exactly one.
fn source_pattern(text: &str) -> Result<Pattern, ValidationError> {
    let text = text.trim();
    if text == "*" {
        return Ok(Pattern::Any);
    }
    let (pattern, exact) = match text.strip_suffix('*') {
        Some(prefix) => (prefix, false),
        None => (text, true),
    };
    validate_label("sources", pattern)
        .map_err(|err| ValidationError::new("sources", format!("{text:?} {}", err.reason)))?;
    Ok(if exact {
        Pattern::Exactly(pattern.to_string())
    } else {
        Pattern::StartingWith(pattern.to_string())
    })
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Arc<Client>>,
}

impl Tokens {
    /// The client `token` belongs to, if any.
    pub fn client(&self, token: &str) -> Option<Arc<Client>> {
        self.by_digest.get(&digest(token)).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Every client, for setting up their rate limiters.
    pub fn clients(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.by_digest.values()
    }

    /// Gives clients sources they may claim besides their names, written
    /// `NAME=SOURCE,SOURCE;NAME=SOURCE` (entries separated by `;` or new lines). A name that is
    /// no client's is refused: it is a typo, and its sources would go nowhere.
    pub fn with_sources(mut self, text: &str) -> Result<Self, ValidationError> {
        for entry in entries(text, "sources", "NAME=SOURCE,SOURCE") {
            let entry = entry?;
            let name = entry.name;
            let patterns = entry.patterns(entry.value, "source", source_pattern)?;
            if patterns.is_empty() {
                return Err(entry.invalid(format!("({name}) names no source")));
            }
            let client = self
                .by_digest
                .values_mut()
                .find(|client| client.name == name)
                .ok_or_else(|| entry.invalid(format!("names {name}, which is no token's name")))?;
            Arc::make_mut(client).sources.extend(patterns);
        }
        Ok(self)
    }
}

/// One `NAME=VALUE` entry of a setting written `NAME=VALUE;NAME=VALUE` (entries separated by
/// `;` or new lines), with what it takes to refuse it by its place.
struct Entry<'a> {
    number: usize,
    name: &'a str,
    value: &'a str,
    setting: &'static str,
    /// How an entry is written, for the error.
    form: &'static str,
}

impl Entry<'_> {
    fn invalid(&self, why: impl fmt::Display) -> ValidationError {
        ValidationError::new(
            self.setting,
            format!(
                "entry {} {why}; write {} (entries separated by ;)",
                self.number, self.form
            ),
        )
    }

    /// `list`'s comma-separated patterns, each read by `pattern`; `what` names one in the error.
    fn patterns(
        &self,
        list: &str,
        what: &str,
        pattern: fn(&str) -> Result<Pattern, ValidationError>,
    ) -> Result<Vec<Pattern>, ValidationError> {
        list.split(',')
            .filter(|item| !item.trim().is_empty())
            .map(pattern)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| {
                self.invalid(format!(
                    "({}) allows a bad {what}: {}",
                    self.name, err.reason
                ))
            })
    }
}

/// The entries of `text`, a `setting` written `NAME=VALUE;…` as `form` shows.
fn entries<'a>(
    text: &'a str,
    setting: &'static str,
    form: &'static str,
) -> impl Iterator<Item = Result<Entry<'a>, ValidationError>> {
    text.split([';', '\n'])
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(move |(index, entry)| {
            let (name, value, written) = match entry.split_once('=') {
                Some((name, value)) => (name, value, true),
                None => (entry, "", false),
            };
            let entry = Entry {
                number: index + 1,
                name: name.trim(),
                value,
                setting,
                form,
            };
            if written {
                Ok(entry)
            } else {
                Err(entry.invalid("has no '='"))
            }
        })
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Names and allowed types only: the tokens stay secret.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut clients: Vec<_> = self
            .by_digest
            .values()
            .map(|client| {
                format!(
                    "{}:{} as {}",
                    client.name,
                    client.allowed(),
                    client.sources()
                )
            })
            .collect();
        clients.sort();
        f.debug_list().entries(clients).finish()
    }
}

impl FromStr for Tokens {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut tokens = Tokens::default();
        let mut names = Vec::new();
        for entry in entries(text, "tokens", "NAME=TOKEN:TYPE,TYPE") {
            let entry = entry?;
            let name = entry.name;
            let (token, types) = entry
                .value
                .rsplit_once(':')
                .ok_or_else(|| entry.invalid("has no ':' before its event types"))?;
            validate_label("tokens", name)
                .map_err(|err| entry.invalid(format!("name {}", err.reason)))?;
            if names.contains(&name) {
                return Err(entry.invalid(format!("repeats the name {name}")));
            }
            let token = token.trim();
            if token.len() < MIN_TOKEN_LEN {
                return Err(entry.invalid(format!(
                    "({name}) has a token of {} characters; use at least {MIN_TOKEN_LEN}, e.g. \
                     from `openssl rand -hex 16`",
                    token.len()
                )));
            }
            let allowed = entry.patterns(types, "type", type_pattern)?;
            if allowed.is_empty() {
                return Err(entry.invalid(format!(
                    "({name}) allows no event types; name some, or * for all"
                )));
            }
            let client = Arc::new(Client {
                name: name.to_string(),
                allowed,
                sources: Vec::new(),
            });
            if tokens.by_digest.insert(digest(token), client).is_some() {
                return Err(entry.invalid(format!("({name}) reuses another entry's token")));
            }
            names.push(name);
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CI: &str = "ci-token-0123456789";
    const OPS: &str = "ops-token-0123456789";

    #[test]
    fn each_token_names_its_client_and_its_types() {
        let tokens: Tokens = format!("ci={CI}:review.requested,build.*;\n ops = {OPS} : *")
            .parse()
            .expect("valid");
        let ci = tokens.client(CI).expect("ci");
        assert_eq!(ci.name, "ci");
        assert!(ci.may_publish("review.requested"));
        assert!(ci.may_publish("build.started"));
        assert!(ci.may_publish("build.step.done"));
        assert!(!ci.may_publish("build"), "build.* is under build");
        assert!(!ci.may_publish("review.approved"));
        let ops = tokens.client(OPS).expect("ops");
        assert!(ops.may_publish("anything.at.all"));
        assert!(
            tokens.client("ci-token-012345678").is_none(),
            "a prefix is not the token"
        );
        assert!(tokens.client("").is_none());
    }

    #[test]
    fn a_token_claims_its_name_or_the_sources_it_is_given() {
        let tokens: Tokens = format!("ci={CI}:*;ops={OPS}:*").parse().expect("valid");
        let tokens = tokens
            .with_sources("ci = https://ci.example.com/*, buildkite ;\nops=*")
            .expect("valid");
        let ci = tokens.client(CI).expect("ci");
        assert!(ci.may_claim("ci"));
        assert!(ci.may_claim("https://ci.example.com/jobs/7"));
        assert!(ci.may_claim("buildkite"));
        assert!(!ci.may_claim("buildkite-2"), "exactly, without a star");
        assert!(!ci.may_claim("github"));
        assert!(!ci.may_claim("triage"), "nor an agent's name");
        assert_eq!(ci.sources(), "ci, https://ci.example.com/*, buildkite");
        assert!(tokens.client(OPS).expect("ops").may_claim("anything"));

        let plain: Tokens = format!("ci={CI}:*").parse().expect("valid");
        let ci = plain.client(CI).expect("ci");
        assert!(ci.may_claim("ci") && !ci.may_claim("github"));

        for (text, says) in [
            ("ci", "has no '='"),
            ("nobody=x", "no token's name"),
            ("ci=", "names no source"),
            ("ci=a\u{7}b", "control characters"),
        ] {
            let err = format!("ci={CI}:*")
                .parse::<Tokens>()
                .expect("valid")
                .with_sources(text)
                .expect_err(text);
            assert_eq!(err.field, "sources");
            assert!(err.reason.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn debug_shows_names_and_types_but_never_tokens() {
        let tokens: Tokens = format!("ci={CI}:review.*").parse().expect("valid");
        let shown = format!("{tokens:?}");
        assert!(shown.contains("ci:review.*"), "{shown}");
        assert!(!shown.contains(CI), "{shown}");
    }

    #[test]
    fn bad_entries_are_refused_saying_which_and_why() {
        let cases = [
            ("ci", "has no '='"),
            (&format!("ci={CI}"), "has no ':'"),
            ("ci=short:*", "at least 16"),
            (&format!("ci={CI}:"), "allows no event types"),
            (&format!("ci={CI}:a..b"), "bad type"),
            (&format!("ci={CI}:*;ci={OPS}:*"), "repeats the name ci"),
            (
                &format!("ci={CI}:*;ops={CI}:*"),
                "reuses another entry's token",
            ),
        ];
        for (text, says) in cases {
            let err = text.parse::<Tokens>().expect_err(text);
            assert_eq!(err.field, "tokens");
            assert!(err.reason.contains(says), "{text}: {err}");
            assert!(!err.reason.contains(CI), "the token is not echoed: {err}");
        }
        assert!("".parse::<Tokens>().expect("empty is no tokens").is_empty());
    }
}
