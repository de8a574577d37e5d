//! `tests`: code changed with no test changed alongside it, and new functions that the
//! change's tests never call.

use std::sync::LazyLock;

use choreo_review::diff::{Diff, FileChange, FileKind};
use choreo_review::{Finding, Severity, Specialty};
use regex::Regex;

/// The tests specialist.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tests;

impl Specialty for Tests {
    const NAME: &'static str = "tests";
    const RULES_VERSION: &'static str = "tests-rules-v1";
    const FOCUS: &'static str = "Look at test coverage: code whose behaviour changes with no test \
        added or changed, new functions or branches no test exercises, and tests that cannot \
        fail.";

    fn review(&self, diff: &Diff) -> Vec<Finding> {
        let code: Vec<&FileChange> = diff
            .changed_files()
            .filter(|f| f.kind() == FileKind::Code && !f.added.is_empty())
            .collect();
        let tests: Vec<&FileChange> = diff
            .changed_files()
            .filter(|f| f.kind() == FileKind::Test)
            .collect();
        if tests.is_empty() {
            return code
                .into_iter()
                .map(|file| Finding {
                    file: file.path.clone(),
                    line: file.added.first().map_or(0, |l| l.number),
                    severity: Severity::Medium,
                    rule: "untested-change".to_string(),
                    message: format!(
                        "`{}` changes ({} lines added) and no test changes with it",
                        file.path,
                        file.added.len()
                    ),
                    suggestion: Some(format!(
                        "Add a test in `{}` that fails without this change and passes with it.",
                        test_path_for(&file.path)
                    )),
                })
                .collect();
        }
        let test_text: String = tests
            .iter()
            .flat_map(|f| f.added.iter().map(|l| l.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        let mut findings = Vec::new();
        for file in code {
            for line in &file.added {
                let Some(name) = FUNCTION.captures(&line.text).and_then(|c| c.get(1)) else {
                    continue;
                };
                let name = name.as_str();
                if name.starts_with('_') || test_text.contains(name) {
                    continue;
                }
                findings.push(Finding {
                    file: file.path.clone(),
                    line: line.number,
                    severity: Severity::Low,
                    rule: "untested-function".to_string(),
                    message: format!("new function `{name}` is not called by the change's tests"),
                    suggestion: Some(format!(
                        "Add a test that calls `{name}` with a typical input and an edge case."
                    )),
                });
            }
        }
        findings
    }
}

#[allow(clippy::expect_used)] // A constant pattern; a bad one fails every test.
static FUNCTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:def|fn|func|function)\s+([A-Za-z_][A-Za-z0-9_]*)")
        .expect("valid pattern")
});

/// Where a test for `path` would usually live, by the language's conventions.
pub fn test_path_for(path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let (stem, extension) = name.rsplit_once('.').unwrap_or((name, ""));
    match extension {
        "py" => format!("tests/test_{stem}.py"),
        "go" => join(dir, &format!("{stem}_test.go")),
        "js" | "jsx" | "ts" | "tsx" => join(dir, &format!("{stem}.test.{extension}")),
        "rs" => format!("{path} (a #[cfg(test)] module) or tests/{stem}.rs"),
        "java" | "kt" => format!("src/test/.../{stem}Test.{extension}"),
        "rb" => format!("spec/{stem}_spec.rb"),
        _ => format!("tests/ (a test for {name})"),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, added: &[&str]) -> String {
        choreo_review::testing::diff_text_adding(path, added)
    }

    #[test]
    fn code_with_no_test_gets_one_finding_per_file() {
        let diff = file(
            "app/pay.py",
            &["def refund(order):", "    return order.total"],
        );
        let findings = Tests.review(&Diff::parse(&diff).expect("diff"));
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].rule, "untested-change");
        assert!(
            findings[0]
                .suggestion
                .as_deref()
                .is_some_and(|s| s.contains("tests/test_pay.py")),
            "{:?}",
            findings[0].suggestion
        );
    }

    #[test]
    fn with_tests_only_functions_they_never_call_are_named() {
        let diff = file("app/pay.py", &["def refund(order):", "def void(order):"])
            + &file(
                "tests/test_pay.py",
                &["def test_refund():", "    assert refund(o) == 3"],
            );
        let findings = Tests.review(&Diff::parse(&diff).expect("diff"));
        let named: Vec<_> = findings.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(
            named,
            vec!["new function `void` is not called by the change's tests"]
        );
    }

    #[test]
    fn docs_only_changes_need_no_tests() {
        let diff = file("README.md", &["# Title"]);
        assert!(Tests.review(&Diff::parse(&diff).expect("diff")).is_empty());
    }

    #[test]
    fn test_paths_follow_each_language() {
        assert_eq!(test_path_for("web/cart.ts"), "web/cart.test.ts");
        assert_eq!(test_path_for("pkg/pay.go"), "pkg/pay_test.go");
    }
}
