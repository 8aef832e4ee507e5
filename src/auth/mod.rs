//! mailauth: password schemes, Dovecot checkpassword, the auth daemon (nginx auth_http,
//! Dovecot Lua/checkpassword JSON API), throttling and backend health checks.

pub mod api;
pub mod authenticator;
pub mod checkpassword;
pub mod health;
pub mod http;
pub mod iterate;
pub mod locks;
pub mod scheme;
pub mod throttle;
