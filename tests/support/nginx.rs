//! nginx test support.
