//! A sample change to review: a Python module gaining refunds code with a hard-coded key, SQL
//! built by concatenation, a nested loop, queries and posts in a loop, unsafe unpickling, a
//! TODO, a camelCase name and no test; and a README section. `choreo up --demo`, the
//! end-to-end tests and the benchmark review it.

use crate::events::ReviewRequested;

/// `git diff` of the sample change.
pub const REFUNDS_DIFF: &str = include_str!("../samples/refunds.diff");

/// The sample change as a review request.
pub fn refunds_request() -> ReviewRequested {
    ReviewRequested {
        diff: REFUNDS_DIFF.to_string(),
        repository: "acme/shop".to_string(),
        title: "Refunds: find, deduplicate and notify".to_string(),
        author: "ada".to_string(),
        url: "https://github.com/acme/shop/pull/42".to_string(),
    }
}
