//! fixtures test support.
