//! Dovecot checkpassword (passdb + userdb), 2.3 dialect.
