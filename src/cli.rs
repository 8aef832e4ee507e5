//! Shared command-line plumbing: --config/--db handling, exit-code mapping.
