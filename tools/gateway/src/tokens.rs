//! Bearer tokens from configuration, each allowed a set of event types.
//!
//! Written `NAME=TOKEN:TYPES`, entries separated by `;` or new lines, types by `,`:
//! `ci=0123456789abcdef:review.requested;ops=fedcba9876543210:*`. A type ending in `.*` allows
//! every type under it (`review.*` allows `review.requested` and `review.x.y`); `*` allows all.
//! The name is the `source` of the events the token publishes and appears in logs; the token
//! itself never does.
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
    allowed: Vec<TypePattern>,
}

impl Client {
    /// Whether this client may publish events of `event_type`.
    pub fn may_publish(&self, event_type: &str) -> bool {
        self.allowed
            .iter()
            .any(|pattern| pattern.matches(event_type))
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum TypePattern {
    Any,
    Exactly(String),
    /// `prefix.*`: the prefix with its dot.
    Under(String),
}

impl TypePattern {
    fn matches(&self, event_type: &str) -> bool {
        match self {
            TypePattern::Any => true,
            TypePattern::Exactly(exact) => exact == event_type,
            TypePattern::Under(prefix) => event_type.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypePattern::Any => write!(f, "*"),
            TypePattern::Exactly(exact) => write!(f, "{exact}"),
            TypePattern::Under(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl FromStr for TypePattern {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text == "*" {
            return Ok(TypePattern::Any);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            validate_type(prefix).map_err(|err| ValidationError::new("tokens", err.reason))?;
            return Ok(TypePattern::Under(format!("{prefix}.")));
        }
        validate_type(text).map_err(|err| ValidationError::new("tokens", err.reason))?;
        Ok(TypePattern::Exactly(text.to_string()))
    }
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
            .map(|client| format!("{}:{}", client.name, client.allowed()))
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
        for (index, entry) in text
            .split([';', '\n'])
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
        {
            let invalid = |why: String| {
                ValidationError::new(
                    "tokens",
                    format!(
                        "entry {} {why}; write NAME=TOKEN:TYPE,TYPE (entries separated by ;)",
                        index + 1
                    ),
                )
            };
            let (name, rest) = entry
                .split_once('=')
                .ok_or_else(|| invalid("has no '='".into()))?;
            let (token, types) = rest
                .rsplit_once(':')
                .ok_or_else(|| invalid("has no ':' before its event types".into()))?;
            let name = name.trim();
            validate_label("tokens", name)
                .map_err(|err| invalid(format!("name {}", err.reason)))?;
            if names.contains(&name) {
                return Err(invalid(format!("repeats the name {name}")));
            }
            let token = token.trim();
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid(format!(
                    "({name}) has a token of {} characters; use at least {MIN_TOKEN_LEN}, e.g. \
                     from `openssl rand -hex 16`",
                    token.len()
                )));
            }
            let allowed = types
                .split(',')
                .filter(|t| !t.trim().is_empty())
                .map(TypePattern::from_str)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| invalid(format!("({name}) allows a bad type: {}", err.reason)))?;
            if allowed.is_empty() {
                return Err(invalid(format!(
                    "({name}) allows no event types; name some, or * for all"
                )));
            }
            let client = Arc::new(Client {
                name: name.to_string(),
                allowed,
            });
            if tokens.by_digest.insert(digest(token), client).is_some() {
                return Err(invalid(format!("({name}) reuses another entry's token")));
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
