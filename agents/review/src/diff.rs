//! A unified diff (`git diff`, `diff -u`), parsed into files and the lines each adds.
//!
//! Reviewers look at added lines with their line numbers on the new side; removed lines only
//! count. Anything before the first file header (a commit message, say) is ignored. A text
//! with no file header at all is not a diff.

use std::path::Path;

/// A parsed diff.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diff {
    pub files: Vec<FileChange>,
}

/// One file's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The path on the new side (the old one for a deleted file), without `a/` or `b/`.
    pub path: String,
    pub deleted: bool,
    pub added: Vec<Line>,
    pub removed: usize,
}

/// An added line and its number in the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: u32,
    pub text: String,
}

/// What kind of file a path is, for deciding who reviews it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Code,
    Test,
    Docs,
    Config,
    Other,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Code => "code",
            FileKind::Test => "test",
            FileKind::Docs => "docs",
            FileKind::Config => "config",
            FileKind::Other => "other",
        }
    }
}

const CODE_EXTENSIONS: &[&str] = &[
    "py", "rs", "js", "jsx", "ts", "tsx", "go", "java", "kt", "rb", "php", "c", "h", "cc", "cpp",
    "hpp", "cs", "swift", "scala", "sh", "bash", "sql", "lua", "ex", "exs", "clj", "m", "mm",
];
const DOC_EXTENSIONS: &[&str] = &["md", "markdown", "rst", "txt", "adoc", "org"];
const CONFIG_EXTENSIONS: &[&str] = &[
    "yaml",
    "yml",
    "toml",
    "json",
    "ini",
    "cfg",
    "conf",
    "env",
    "properties",
    "xml",
    "tf",
];

impl FileChange {
    pub fn kind(&self) -> FileKind {
        kind_of(&self.path)
    }

    /// The path's extension, lower-cased.
    pub fn extension(&self) -> String {
        extension_of(&self.path)
    }
}

fn extension_of(path: &str) -> String {
    Path::new(path)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The kind of file `path` names, by its folders, name and extension.
pub fn kind_of(path: &str) -> FileKind {
    let lower = path.to_ascii_lowercase();
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    let extension = extension_of(&lower);
    let in_folder = |folder: &str| {
        lower.starts_with(&format!("{folder}/")) || lower.contains(&format!("/{folder}/"))
    };
    if CODE_EXTENSIONS.contains(&extension.as_str())
        && (in_folder("tests")
            || in_folder("test")
            || in_folder("spec")
            || in_folder("__tests__")
            || name.starts_with("test_")
            || name.contains("_test.")
            || name.contains(".test.")
            || name.contains(".spec."))
    {
        return FileKind::Test;
    }
    if CODE_EXTENSIONS.contains(&extension.as_str()) {
        return FileKind::Code;
    }
    if DOC_EXTENSIONS.contains(&extension.as_str()) || in_folder("docs") || name == "license" {
        return FileKind::Docs;
    }
    if CONFIG_EXTENSIONS.contains(&extension.as_str())
        || name == "dockerfile"
        || name.starts_with(".env")
        || name == "makefile"
    {
        return FileKind::Config;
    }
    FileKind::Other
}

/// Why a text is not a diff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("the diff is empty")]
    Empty,
    #[error(
        "no file header (`--- a/path` and `+++ b/path`) found: send a unified diff, \
         as `git diff` prints it"
    )]
    NoFiles,
    #[error("line {line}: hunk header {header:?} is not `@@ -a,b +c,d @@`")]
    BadHunk { line: usize, header: String },
}

impl Diff {
    /// Parses a unified diff.
    pub fn parse(text: &str) -> Result<Diff, DiffError> {
        if text.trim().is_empty() {
            return Err(DiffError::Empty);
        }
        let mut files: Vec<FileChange> = Vec::new();
        let mut old_path: Option<String> = None;
        // Inside a hunk: the next new-side line number and the lines still to come on each
        // side. Counting them is what tells a removed `--- x` line from a file header.
        let mut hunk: Option<Hunk> = None;
        for (index, line) in text.lines().enumerate() {
            if let (Some(current), Some(file)) = (hunk.as_mut(), files.last_mut()) {
                let is_content = match line.chars().next() {
                    Some('+') => {
                        file.added.push(Line {
                            number: current.next_line,
                            text: line[1..].to_string(),
                        });
                        current.added();
                        true
                    }
                    Some('-') => {
                        file.removed += 1;
                        current.removed();
                        true
                    }
                    // An empty line is a context line whose space was trimmed.
                    Some(' ') | None => {
                        current.context();
                        true
                    }
                    Some('\\') => true, // "\ No newline at end of file"
                    Some(_) => false,
                };
                if is_content {
                    if current.done() {
                        hunk = None;
                    }
                    continue;
                }
                // Not hunk content (a short hunk, a hand-edited diff): read it as a header.
                hunk = None;
            }
            if let Some(path) = line.strip_prefix("--- ") {
                old_path = Some(strip_side(path));
            } else if let Some(path) = line.strip_prefix("+++ ")
                && let Some(old) = old_path.take()
            {
                let new = strip_side(path);
                let deleted = new == "/dev/null";
                files.push(FileChange {
                    path: if deleted { old } else { new },
                    deleted,
                    added: Vec::new(),
                    removed: 0,
                });
            } else if line.starts_with("@@") && !files.is_empty() {
                hunk = Some(Hunk::parse(line).ok_or_else(|| DiffError::BadHunk {
                    line: index + 1,
                    header: line.to_string(),
                })?);
            }
        }
        if files.is_empty() {
            return Err(DiffError::NoFiles);
        }
        Ok(Diff { files })
    }

    /// Files that are not deleted.
    pub fn changed_files(&self) -> impl Iterator<Item = &FileChange> {
        self.files.iter().filter(|f| !f.deleted)
    }

    /// Whether a file of `kind` is changed (deleted files do not count).
    pub fn has_kind(&self, kind: FileKind) -> bool {
        self.changed_files().any(|f| f.kind() == kind)
    }
}

/// `a/src/x.py` → `src/x.py`; drops a trailing tab and timestamp (`diff -u` writes them).
fn strip_side(path: &str) -> String {
    let path = path.split('\t').next().unwrap_or(path).trim();
    path.strip_prefix("a/")
        .or_else(|| path.strip_prefix("b/"))
        .unwrap_or(path)
        .to_string()
}

/// Where a hunk stands: its next new-side line and what is left of it on each side.
#[derive(Debug, Clone, Copy)]
struct Hunk {
    next_line: u32,
    old_left: u32,
    new_left: u32,
}

impl Hunk {
    /// From `@@ -a,b +c,d @@` (a missing count means 1).
    fn parse(header: &str) -> Option<Hunk> {
        let mut parts = header.split_whitespace().skip(1);
        let range = |part: &str, sign: char| -> Option<(u32, u32)> {
            let mut numbers = part.strip_prefix(sign)?.split(',');
            let start = numbers.next()?.parse().ok()?;
            let count = numbers.next().map_or(Some(1), |n| n.parse().ok())?;
            Some((start, count))
        };
        let (_, old_left) = range(parts.next()?, '-')?;
        let (next_line, new_left) = range(parts.next()?, '+')?;
        Some(Hunk {
            next_line,
            old_left,
            new_left,
        })
    }

    fn added(&mut self) {
        self.next_line += 1;
        self.new_left = self.new_left.saturating_sub(1);
    }

    fn removed(&mut self) {
        self.old_left = self.old_left.saturating_sub(1);
    }

    fn context(&mut self) {
        self.next_line += 1;
        self.old_left = self.old_left.saturating_sub(1);
        self.new_left = self.new_left.saturating_sub(1);
    }

    fn done(&self) -> bool {
        self.old_left == 0 && self.new_left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
commit message line
diff --git a/app/db.py b/app/db.py
index 1111111..2222222 100644
--- a/app/db.py
+++ b/app/db.py
@@ -10,3 +10,4 @@ def find(user_id):
 context one
-removed line
+added eleven
+added twelve
 context thirteen
diff --git a/README.md b/README.md
new file mode 100644
--- /dev/null
+++ b/README.md
@@ -0,0 +1,2 @@
+# Title
+text
diff --git a/old.py b/old.py
deleted file mode 100644
--- a/old.py
+++ /dev/null
@@ -1 +0,0 @@
-gone
";

    #[test]
    fn files_added_lines_and_numbers() {
        let diff = Diff::parse(SAMPLE).expect("parses");
        assert_eq!(diff.files.len(), 3);
        let db = &diff.files[0];
        assert_eq!(db.path, "app/db.py");
        assert_eq!(db.removed, 1);
        assert_eq!(
            db.added,
            vec![
                Line {
                    number: 11,
                    text: "added eleven".into()
                },
                Line {
                    number: 12,
                    text: "added twelve".into()
                },
            ]
        );
        assert_eq!(diff.files[1].path, "README.md");
        assert_eq!(diff.files[1].added[0].number, 1);
        assert!(diff.files[2].deleted);
        assert_eq!(diff.files[2].path, "old.py");
        assert_eq!(diff.changed_files().count(), 2);
    }

    #[test]
    fn a_removed_line_that_looks_like_a_header_stays_in_its_hunk() {
        let text =
            "--- a/x.sql\n+++ b/x.sql\n@@ -1,2 +1,2 @@\n--- a comment\n+-- new comment\n keep\n";
        let diff = Diff::parse(text).expect("parses");
        assert_eq!(diff.files.len(), 1);
        assert_eq!(diff.files[0].removed, 1);
        assert_eq!(diff.files[0].added[0].text, "-- new comment");
    }

    #[test]
    fn not_a_diff_is_refused_with_what_to_send() {
        assert_eq!(Diff::parse("  \n"), Err(DiffError::Empty));
        let err = Diff::parse("hello\nworld").expect_err("no files");
        assert!(err.to_string().contains("git diff"), "{err}");
        let bad = Diff::parse("--- a/x\n+++ b/x\n@@ nonsense @@\n").expect_err("bad hunk");
        assert!(matches!(bad, DiffError::BadHunk { line: 3, .. }), "{bad:?}");
    }

    #[test]
    fn kinds_by_path() {
        assert_eq!(kind_of("src/pay.py"), FileKind::Code);
        assert_eq!(kind_of("tests/test_pay.py"), FileKind::Test);
        assert_eq!(kind_of("web/pay.test.ts"), FileKind::Test);
        assert_eq!(kind_of("pkg/pay_test.go"), FileKind::Test);
        assert_eq!(kind_of("docs/guide.md"), FileKind::Docs);
        assert_eq!(kind_of("docs/diagram.svg"), FileKind::Docs);
        assert_eq!(kind_of("deploy/app.yaml"), FileKind::Config);
        assert_eq!(kind_of("Dockerfile"), FileKind::Config);
        assert_eq!(kind_of("logo.png"), FileKind::Other);
    }
}
