//! The JSON API (passdb / userdb / users) used by checkpassword and the Dovecot Lua script.
