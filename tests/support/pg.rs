//! pg test support.
