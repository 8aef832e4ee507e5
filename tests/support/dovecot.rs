//! dovecot test support.
