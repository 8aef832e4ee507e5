//! exim test support.
