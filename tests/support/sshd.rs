//! sshd test support.
