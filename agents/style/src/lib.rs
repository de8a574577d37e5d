//! `style`: long lines, TODOs with no reference to follow them up, and snake_case mixed with
//! camelCase in one file, in the lines a change adds.

use std::sync::LazyLock;

use choreo_review::diff::{Diff, FileChange, FileKind, Line};
use choreo_review::{Finding, Severity, Specialty};
use regex::Regex;

/// Lines longer than this are flagged in code and configuration.
pub const MAX_LINE_CHARS: usize = 100;

/// The style specialist.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style;

impl Specialty for Style {
    const NAME: &'static str = "style";
    const RULES_VERSION: &'static str = "style-rules-v1";
    const FOCUS: &'static str = "Look for readability and consistency problems: overly long \
        lines, TODO or FIXME notes without an issue reference, inconsistent naming, unclear \
        names, and dead or commented-out code.";

    fn review(&self, diff: &Diff) -> Vec<Finding> {
        let mut findings = Vec::new();
        for file in diff.changed_files() {
            let kind = file.kind();
            for line in &file.added {
                let length = line.text.chars().count();
                if length > MAX_LINE_CHARS
                    && matches!(kind, FileKind::Code | FileKind::Test | FileKind::Config)
                {
                    findings.push(at(
                        file,
                        line,
                        "long-line",
                        format!("line is {length} characters long (limit {MAX_LINE_CHARS})"),
                        "Break it after an operator or a comma, or name a sub-expression \
                         with a variable, so it fits in 100 characters."
                            .to_string(),
                    ));
                }
                if let Some(note) = TODO.captures(&line.text).and_then(|c| c.get(1))
                    && !REFERENCE.is_match(&line.text)
                {
                    findings.push(at(
                        file,
                        line,
                        "todo-without-reference",
                        format!("`{}` with no issue to follow it up", note.as_str()),
                        format!(
                            "Open an issue and name it in the note, e.g. `{}(#123): …`, or do \
                             the work in this change.",
                            note.as_str()
                        ),
                    ));
                }
            }
            if matches!(kind, FileKind::Code | FileKind::Test) {
                findings.extend(mixed_naming(file));
            }
        }
        findings
    }
}

/// Style findings are all low: none of them blocks a change.
fn at(file: &FileChange, line: &Line, rule: &str, message: String, suggestion: String) -> Finding {
    Finding::on_line(file, line, Severity::Low, rule, message, suggestion)
}

#[allow(clippy::expect_used)] // The patterns are constants; a bad one fails every test.
fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid pattern")
}

static TODO: LazyLock<Regex> = LazyLock::new(|| regex(r"\b(TODO|FIXME|XXX|HACK)\b"));
/// `TODO(#12)`, `TODO(alice)`, `#123`, `JIRA-42`, or a link.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(\b(TODO|FIXME|XXX|HACK)\([^)]+\)|#\d+|\b[A-Z][A-Z0-9]+-\d+\b|https?://)")
});
/// Names being defined: functions, variables and parameters-by-assignment.
static DEFINITION: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?:\b(?:def|fn|func|function|let|const|var)\s+(?:mut\s+)?([A-Za-z_][A-Za-z0-9_]*)|^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=[^=])",
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Snake,
    Camel,
}

fn case_of(name: &str) -> Option<Case> {
    let has_lower = name.chars().any(|c| c.is_ascii_lowercase());
    let inner_upper = name.chars().skip(1).any(|c| c.is_ascii_uppercase());
    let starts_lower = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if name.contains('_') && has_lower && !inner_upper && !name.starts_with('_') {
        Some(Case::Snake)
    } else if starts_lower && inner_upper && !name.contains('_') {
        Some(Case::Camel)
    } else {
        None
    }
}

/// `fooBar` → `foo_bar`.
fn to_snake(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

/// `foo_bar` → `fooBar`.
fn to_camel(name: &str) -> String {
    let mut parts = name.split('_');
    let mut camel = parts.next().unwrap_or_default().to_string();
    for part in parts {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            camel.push(first.to_ascii_uppercase());
            camel.extend(chars);
        }
    }
    camel
}

/// One finding per name in the file's minority style, when both styles are defined.
fn mixed_naming(file: &FileChange) -> Vec<Finding> {
    let mut named: Vec<(&Line, String, Case)> = Vec::new();
    for line in &file.added {
        for captures in DEFINITION.captures_iter(&line.text) {
            let Some(name) = captures.get(1).or_else(|| captures.get(2)) else {
                continue;
            };
            if let Some(case) = case_of(name.as_str()) {
                named.push((line, name.as_str().to_string(), case));
            }
        }
    }
    let snake = named.iter().filter(|(_, _, c)| *c == Case::Snake).count();
    let camel = named.len() - snake;
    if snake == 0 || camel == 0 {
        return Vec::new();
    }
    // Python and Rust name things in snake_case; elsewhere the majority decides.
    let usual = match file.extension().as_str() {
        "py" | "rs" | "rb" => Case::Snake,
        _ if camel > snake => Case::Camel,
        _ => Case::Snake,
    };
    named
        .into_iter()
        .filter(|(_, _, case)| *case != usual)
        .map(|(line, name, _)| {
            let renamed = match usual {
                Case::Snake => to_snake(&name),
                Case::Camel => to_camel(&name),
            };
            at(
                file,
                line,
                "mixed-naming",
                format!("`{name}` is named unlike the rest of this file"),
                format!("Rename `{name}` to `{renamed}` to match the file's other names."),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(path: &str, added: &[&str]) -> Vec<Finding> {
        Style.review(&choreo_review::testing::diff_adding(path, added))
    }

    #[test]
    fn long_lines_and_todos_without_a_reference() {
        let long = format!("x = \"{}\"", "a".repeat(120));
        let findings = review(
            "app/util.py",
            &[
                &long,
                "# TODO: handle retries",
                "# TODO(#42): handle timeouts",
                "# FIXME see JIRA-7",
            ],
        );
        let rules: Vec<_> = findings.iter().map(|f| (f.rule.as_str(), f.line)).collect();
        assert_eq!(rules, vec![("long-line", 1), ("todo-without-reference", 2)]);
    }

    #[test]
    fn camel_case_in_a_snake_case_python_file_gets_its_new_name() {
        let findings = review(
            "app/util.py",
            &[
                "def load_orders(path):",
                "    totalAmount = 0",
                "    order_count = 0",
            ],
        );
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].rule, "mixed-naming");
        assert_eq!(findings[0].line, 2);
        assert!(
            findings[0]
                .suggestion
                .as_deref()
                .is_some_and(|s| s.contains("`total_amount`")),
            "{:?}",
            findings[0].suggestion
        );
    }

    #[test]
    fn one_style_and_documentation_pass() {
        let findings = review(
            "web/cart.js",
            &[
                "const totalAmount = 0;",
                "let itemCount = 1;",
                "function addItem(item) {",
            ],
        );
        assert!(findings.is_empty(), "{findings:#?}");
        let long_doc = "word ".repeat(40);
        assert!(review("docs/guide.md", &[&long_doc]).is_empty());
    }
}
