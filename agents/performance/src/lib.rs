//! `performance`: nested loops over one collection, queries and remote calls inside loops,
//! and reads with no size limit, in the lines a change adds.
//!
//! Loops are followed by indentation over each run of consecutive added lines: a line belongs
//! to the loops above it that are indented less. That is exact for Python and close enough for
//! brace languages as people format them; a loop split across lines is not seen.

use std::sync::LazyLock;

use choreo_review::diff::{Diff, FileKind, Line};
use choreo_review::{Finding, Severity, Specialty};
use regex::Regex;

/// The performance specialist.
#[derive(Debug, Clone, Copy, Default)]
pub struct Performance;

impl Specialty for Performance {
    const NAME: &'static str = "performance";
    const RULES_VERSION: &'static str = "performance-rules-v1";
    const FOCUS: &'static str = "Look for performance problems: quadratic work such as nested \
        loops over one collection, database queries or remote calls inside loops (N+1), \
        unbounded memory use such as reading a whole input with no limit, and needless \
        copies in hot paths.";

    fn review(&self, diff: &Diff) -> Vec<Finding> {
        let mut findings = Vec::new();
        for file in diff.changed_files() {
            if !matches!(file.kind(), FileKind::Code) {
                continue;
            }
            let finding = |line: &Line, severity, rule: &str, message: String, suggestion| {
                Finding::on_line(file, line, severity, rule, message, suggestion)
            };
            let mut loops: Vec<OpenLoop> = Vec::new();
            let mut previous: Option<u32> = None;
            for line in &file.added {
                if previous.is_some_and(|p| p + 1 != line.number) {
                    loops.clear();
                }
                previous = Some(line.number);
                if line.text.trim().is_empty() {
                    continue;
                }
                let indent = indentation(&line.text);
                loops.retain(|open| open.indent < indent);
                if let Some(collection) = loop_collection(&line.text) {
                    if let Some(outer) = loops.iter().find(|open| open.collection == collection) {
                        findings.push(finding(
                            line,
                            Severity::Medium,
                            "nested-loop",
                            format!(
                                "a loop over `{collection}` inside another loop over it (line \
                                 {}): the work grows with the square of its size",
                                outer.line
                            ),
                            format!(
                                "Index `{collection}` once before the outer loop (e.g. \
                                 `by_key = {{item.key: item for item in {collection}}}`) and look \
                                 items up instead of scanning it again."
                            ),
                        ));
                    }
                    loops.push(OpenLoop {
                        indent,
                        collection,
                        line: line.number,
                    });
                    continue;
                }
                if let Some(outer) = loops.last()
                    && let Some(call) = QUERY_CALL.find(&line.text)
                {
                    findings.push(finding(
                        line,
                        Severity::Medium,
                        "query-in-loop",
                        format!(
                            "`{}` runs once per item of the loop over `{}` (line {}): one \
                             round trip per item (N+1)",
                            call.as_str().trim(),
                            outer.collection,
                            outer.line
                        ),
                        format!(
                            "Fetch what the loop needs in one call before it (e.g. one query \
                             with `WHERE id IN (...)` over `{}`) and look results up in memory.",
                            outer.collection
                        ),
                    ));
                }
                if let Some(read) = UNBOUNDED_READ.find(&line.text) {
                    findings.push(finding(
                        line,
                        Severity::Medium,
                        "unbounded-read",
                        format!(
                            "`{}` reads the whole input into memory, however large it is",
                            read.as_str().trim()
                        ),
                        "Cap the size (e.g. `.read(MAX_BYTES)` and refuse anything longer) or \
                         process the input in chunks."
                            .to_string(),
                    ));
                }
            }
        }
        findings
    }
}

#[derive(Debug)]
struct OpenLoop {
    indent: usize,
    collection: String,
    line: u32,
}

#[allow(clippy::expect_used)] // The patterns are constants; a bad one fails every test.
fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid pattern")
}

/// Loop headers, capturing the collection: Python, JS/TS, Rust, Go, Java/C#, and
/// `items.forEach(`.
static LOOP_HEADERS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    vec![
        regex(r"^\s*(?:async\s+)?for\s+[\w\s,()]+?\s+in\s+(.+?)\s*:\s*(?:#.*)?$"),
        regex(r"^\s*for\s*\(\s*(?:const|let|var)?\s*[\w\[\]{}\s,]+\s+(?:of|in)\s+(.+?)\s*\)"),
        regex(r"^\s*for\s+[\w\s,()&]+?\s+in\s+(.+?)\s*\{\s*$"),
        regex(r"^\s*for\s+[\w\s,]+:=\s*range\s+(.+?)\s*\{\s*$"),
        regex(r"^\s*for\s*\(\s*[\w<>\[\],\s]+\s+\w+\s*:\s*(.+?)\s*\)"),
        regex(r"^\s*([\w.]+)\.forEach\s*\("),
    ]
});

/// Calls that leave the process: database queries and HTTP requests.
static QUERY_CALL: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(\.(execute|executemany|query|raw|find_one|findOne|findById|findAll)\s*\(|\.objects\.(get|filter|all)\s*\(|\brequests\.(get|post|put|patch|delete)\s*\(|\bfetch\s*\(|\bhttp\.(Get|Post)\s*\(|\bdb\.(Query|QueryRow|Exec)\s*\()",
    )
});

/// Reads with no size limit.
static UNBOUNDED_READ: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(\.read\(\s*\)|\.readlines\(\s*\)|\bread_to_end\s*\(|\bread_to_string\s*\(|\bioutil\.ReadAll\s*\(|\bio\.ReadAll\s*\()",
    )
});

/// The collection a loop header iterates, normalised so `&items`, `items.iter()` and
/// `self.items` compare equal to `items`.
fn loop_collection(text: &str) -> Option<String> {
    let raw = LOOP_HEADERS
        .iter()
        .find_map(|header| header.captures(text))?
        .get(1)?
        .as_str();
    let mut collection = raw
        .trim()
        .trim_start_matches('&')
        .trim_start_matches("mut ");
    for suffix in [
        ".iter()",
        ".iter_mut()",
        ".into_iter()",
        ".items()",
        ".values()",
        ".keys()",
    ] {
        collection = collection.strip_suffix(suffix).unwrap_or(collection);
    }
    for prefix in ["self.", "this."] {
        collection = collection.strip_prefix(prefix).unwrap_or(collection);
    }
    Some(collection.to_string())
}

/// Leading whitespace in columns, a tab counting 4.
fn indentation(text: &str) -> usize {
    text.chars()
        .take_while(|c| c.is_whitespace())
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(path: &str, added: &[&str]) -> Vec<Finding> {
        Performance.review(&choreo_review::testing::diff_adding(path, added))
    }

    #[test]
    fn a_loop_over_a_collection_inside_a_loop_over_it() {
        let findings = review(
            "app/orders.py",
            &[
                "def duplicates(orders):",
                "    for a in orders:",
                "        for b in orders:",
                "            if a.id == b.id and a is not b:",
                "                yield a",
            ],
        );
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].rule, "nested-loop");
        assert_eq!(findings[0].line, 3);
        assert!(findings[0].message.contains("line 2"));
    }

    #[test]
    fn loops_over_different_collections_and_sibling_loops_pass() {
        let findings = review(
            "src/lib.rs",
            &[
                "for order in &self.orders {",
                "    for line in order.lines.iter() {",
                "        total += line.amount;",
                "    }",
                "}",
                "for order in &self.orders {",
                "    print(order);",
                "}",
            ],
        );
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn a_query_inside_a_loop_and_an_unbounded_read() {
        let findings = review(
            "app/report.py",
            &[
                "body = request.stream.read()",
                "for user_id in user_ids:",
                "    row = cursor.execute(\"SELECT * FROM users WHERE id = %s\", (user_id,))",
                "print(row)",
                "cursor.execute(\"SELECT 1\")",
            ],
        );
        let rules: Vec<_> = findings.iter().map(|f| (f.rule.as_str(), f.line)).collect();
        assert_eq!(rules, vec![("unbounded-read", 1), ("query-in-loop", 3)]);
        assert!(
            findings[1].message.contains("user_ids"),
            "{}",
            findings[1].message
        );
    }

    #[test]
    fn go_and_javascript_loops_are_followed() {
        let findings = review(
            "web/match.js",
            &[
                "items.forEach((a) => {",
                "  for (const b of items) {",
                "    fetch(`/api/${b.id}`);",
                "  }",
                "});",
            ],
        );
        let rules: Vec<_> = findings.iter().map(|f| f.rule.as_str()).collect();
        assert_eq!(rules, vec!["nested-loop", "query-in-loop"]);
    }
}
