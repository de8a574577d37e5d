//! `security`: hard-coded secrets, SQL built from strings, shell and `eval` injection, and
//! unsafe deserialization, in the lines a change adds.
//!
//! The rules are regular expressions over added lines: they see one line at a time, so they
//! are quick and predictable, and they miss what spans lines. Each finding carries a
//! suggestion built from the line itself (the variable to read from the environment, the call
//! to use instead).

use std::sync::LazyLock;

use choreo_review::diff::{Diff, FileKind};
use choreo_review::{Finding, Severity, Specialty};
use regex::Regex;

/// The security specialist.
#[derive(Debug, Clone, Copy, Default)]
pub struct Security;

impl Specialty for Security {
    const NAME: &'static str = "security";
    const RULES_VERSION: &'static str = "security-rules-v1";
    const FOCUS: &'static str = "Look for security flaws: hard-coded secrets, SQL built by string \
        concatenation or formatting, shell or eval injection, unsafe deserialization of \
        untrusted data, and missing authorization checks.";

    fn review(&self, diff: &Diff) -> Vec<Finding> {
        let mut findings = Vec::new();
        for file in diff.changed_files() {
            if matches!(file.kind(), FileKind::Docs | FileKind::Other) {
                continue;
            }
            for line in &file.added {
                let at = |severity, rule: &str, message: String, suggestion: String| {
                    Finding::on_line(file, line, severity, rule, message, suggestion)
                };
                if let Some(finding) = secret(&line.text) {
                    findings.push(at(
                        Severity::Critical,
                        "hardcoded-secret",
                        finding.0,
                        finding.1,
                    ));
                }
                if let Some((message, suggestion)) = sql_from_strings(&line.text) {
                    findings.push(at(Severity::High, "sql-injection", message, suggestion));
                }
                if let Some((message, suggestion)) = command_injection(&line.text) {
                    findings.push(at(Severity::High, "command-injection", message, suggestion));
                }
                if let Some((message, suggestion)) = unsafe_deserialization(&line.text) {
                    findings.push(at(
                        Severity::High,
                        "unsafe-deserialization",
                        message,
                        suggestion,
                    ));
                }
            }
        }
        findings
    }
}

#[allow(clippy::expect_used)] // The patterns are constants; a bad one fails every test.
fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid pattern")
}

/// `name = "value"` where the name says secret and the value is not a placeholder.
static SECRET_ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r#"(?i)\b([A-Za-z_]*(?:password|passwd|pwd|secret|api_?key|apikey|access_?key|auth_?token|token|private_?key)[A-Za-z_]*)\b["']?\s*[:=]\s*["']([^"']{8,})["']"#,
    )
});
/// Credentials with a recognisable shape, wherever they appear.
static SECRET_SHAPES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    vec![
        (regex(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key id"),
        (regex(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), "a GitHub token"),
        (regex(r"\bxox[abpr]-[A-Za-z0-9-]{10,}"), "a Slack token"),
        (regex(r"\bsk-[A-Za-z0-9]{20,}"), "an API secret key"),
        (
            regex(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
            "a private key",
        ),
    ]
});
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "example",
    "placeholder",
    "xxxx",
    "your_",
    "your-",
    "<",
    "${",
    "{{",
    "dummy",
    "redacted",
    "****",
];

fn secret(text: &str) -> Option<(String, String)> {
    for (shape, what) in SECRET_SHAPES.iter() {
        if shape.is_match(text) {
            return Some((
                format!("{what} is committed in the source"),
                "Revoke it now, remove it from the code and its history, and load it at run \
                 time from the environment or a secret store."
                    .to_string(),
            ));
        }
    }
    let captures = SECRET_ASSIGNMENT.captures(text)?;
    let name = captures.get(1)?.as_str();
    let value = captures.get(2)?.as_str().to_ascii_lowercase();
    if PLACEHOLDERS.iter().any(|p| value.contains(p)) {
        return None;
    }
    let env_name = name.to_ascii_uppercase();
    Some((
        format!("`{name}` is assigned a literal secret"),
        format!(
            "Read it from the environment instead, e.g. `{name} = os.environ[\"{env_name}\"]` \
             (or your secret store), and rotate the committed value."
        ),
    ))
}

static SQL_KEYWORDS: LazyLock<Regex> = LazyLock::new(|| {
    regex(r#"(?i)["'`]\s*(select\b.*\bfrom|insert\s+into|update\s+\w+\s+set|delete\s+from)\b"#)
});
/// String building right next to the SQL: `+ var`, `% var`, f-strings, `.format(`, `${`,
/// `format!(`, `fmt.Sprintf(`.
static STRING_BUILDING: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r#"(?i)(["'`]\s*\+\s*\w|\w\s*\+\s*["'`]|["']\s*%\s*[\w(]|\bf["']|\.format\(|\$\{|format!\(|sprintf\()"#,
    )
});

fn sql_from_strings(text: &str) -> Option<(String, String)> {
    if !SQL_KEYWORDS.is_match(text) || !STRING_BUILDING.is_match(text) {
        return None;
    }
    Some((
        "SQL is built from strings with values in it: an attacker who controls a value \
         controls the query"
            .to_string(),
        "Pass the values as query parameters, e.g. \
         `cursor.execute(\"SELECT * FROM users WHERE id = %s\", (user_id,))`, never by \
         concatenating or formatting them into the SQL."
            .to_string(),
    ))
}

/// Only ever asked `is_match`, so the groups do not capture: a capturing `(^|[^.\w])` made
/// the `eval` rule alone compile to 745 kB on the heap (Unicode classes in a captured group), 60
/// kB without the capture.
static COMMAND_INJECTION: LazyLock<Vec<(Regex, &'static str, &'static str)>> =
    LazyLock::new(|| {
        vec![
            (
                regex(r"\bos\.(?:system|popen)\s*\("),
                "runs a shell command line",
                "Use `subprocess.run([program, arg1, arg2], check=True)` with an argument list, \
             so no shell parses the input.",
            ),
            (
                regex(r"\bsubprocess\.\w+\(.*shell\s*=\s*True"),
                "runs a command through the shell (`shell=True`)",
                "Pass an argument list and drop `shell=True`: \
             `subprocess.run([program, arg], check=True)`.",
            ),
            (
                regex(r"(?:^|[^.\w])(?:eval|exec)\s*\("),
                "evaluates a string as code",
                "Parse the data instead of running it: `json.loads(text)` or \
             `ast.literal_eval(text)` for literals.",
            ),
            (
                regex(r"\bchild_process\.(?:exec|execSync)\s*\("),
                "runs a shell command line",
                "Use `child_process.execFile(program, [args])`, which does not start a shell.",
            ),
            (
                regex(r#"Command::new\(\s*"(?:sh|bash)"\s*\)"#),
                "runs a shell command line",
                "Run the program itself: `Command::new(program).args([arg1, arg2])`, not `sh -c`.",
            ),
        ]
    });

fn command_injection(text: &str) -> Option<(String, String)> {
    COMMAND_INJECTION
        .iter()
        .find(|(pattern, _, _)| pattern.is_match(text))
        .map(|(_, what, suggestion)| {
            (
                format!("{what}: input that reaches it can run anything"),
                (*suggestion).to_string(),
            )
        })
}

static UNSAFE_DESERIALIZATION: LazyLock<Vec<(Regex, &'static str, &'static str)>> =
    LazyLock::new(|| {
        vec![
            (
                regex(r"\b(c?pickle|marshal|shelve)\.loads?\s*\("),
                "unpickles data, which can run arbitrary code",
                "Use a data-only format for anything from outside: `json.loads(data)`.",
            ),
            (
                regex(r"\byaml\.load\s*\((?:[^)]*)\)"),
                "loads YAML with a loader that can build arbitrary objects",
                "Use `yaml.safe_load(data)`.",
            ),
            (
                regex(r"\bnew\s+ObjectInputStream\s*\("),
                "deserializes Java objects from a stream",
                "Read a data format (JSON with a schema) or set an `ObjectInputFilter` allow-list.",
            ),
            (
                regex(r"\bunserialize\s*\("),
                "unserializes PHP objects from input",
                "Use `json_decode($data, true)`.",
            ),
            (
                regex(r"\bMarshal\.load\s*\("),
                "loads Ruby objects from input",
                "Use `JSON.parse(data)`.",
            ),
        ]
    });

fn unsafe_deserialization(text: &str) -> Option<(String, String)> {
    if text.contains("SafeLoader") || text.contains("safe_load") {
        return None;
    }
    UNSAFE_DESERIALIZATION
        .iter()
        .find(|(pattern, _, _)| pattern.is_match(text))
        .map(|(_, what, suggestion)| ((*what).to_string(), (*suggestion).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(path: &str, added: &[&str]) -> Vec<Finding> {
        Security.review(&choreo_review::testing::diff_adding(path, added))
    }

    fn rules(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.rule.as_str()).collect()
    }

    #[test]
    fn finds_each_kind_of_flaw_on_its_line() {
        let findings = review(
            "app/db.py",
            &[
                "API_KEY = \"9f8e7d6c5b4a39281706\"",
                "query = \"SELECT * FROM users WHERE name = '\" + name + \"'\"",
                "os.system(\"convert \" + filename)",
                "config = yaml.load(open(path))",
                "total = eval(request.args[\"expr\"])",
                "data = pickle.loads(blob)",
            ],
        );
        assert_eq!(
            rules(&findings),
            vec![
                "hardcoded-secret",
                "sql-injection",
                "command-injection",
                "unsafe-deserialization",
                "command-injection",
                "unsafe-deserialization",
            ]
        );
        assert_eq!(findings[0].line, 1);
        assert_eq!(findings[0].severity, Severity::Critical);
        assert!(
            findings[0]
                .suggestion
                .as_deref()
                .is_some_and(|s| s.contains("os.environ[\"API_KEY\"]")),
            "{:?}",
            findings[0].suggestion
        );
        assert!(findings.iter().all(Finding::has_concrete_suggestion));
    }

    #[test]
    fn shaped_credentials_are_found_anywhere() {
        let findings = review("deploy/env.yaml", &["aws: AKIAABCDEFGHIJKLMNOP"]);
        assert_eq!(rules(&findings), vec!["hardcoded-secret"]);
    }

    #[test]
    fn safe_code_and_placeholders_pass() {
        let findings = review(
            "app/db.py",
            &[
                "password = os.environ[\"DB_PASSWORD\"]",
                "password = \"changeme-in-production\"",
                "cursor.execute(\"SELECT * FROM users WHERE id = %s\", (user_id,))",
                "config = yaml.safe_load(text)",
                "subprocess.run([\"convert\", filename], check=True)",
                "value = literal_eval(text)",
            ],
        );
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn eval_is_found_at_the_start_of_a_line_and_not_as_a_method() {
        let findings = review(
            "app/run.py",
            &[
                "exec(code)",
                "result = runner.eval(code)",
                "value = literal_eval(text)",
                "    eval (text)",
            ],
        );
        assert_eq!(
            findings.iter().map(|f| f.line).collect::<Vec<_>>(),
            vec![1, 4],
            "{findings:#?}"
        );
        assert_eq!(
            rules(&findings),
            vec!["command-injection", "command-injection"]
        );
    }

    #[test]
    fn documentation_is_not_reviewed() {
        let findings = review("docs/security.md", &["Never write `eval(input)`."]);
        assert!(findings.is_empty());
    }
}
