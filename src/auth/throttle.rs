//! Failure throttling per (user, client IP) and per client IP.
