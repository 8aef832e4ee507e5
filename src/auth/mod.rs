//! mailauth: password schemes, Dovecot checkpassword, the nginx auth_http service.
