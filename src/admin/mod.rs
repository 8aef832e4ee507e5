//! mailctl: administering every node's database at once (issue 7).
