//! Dovecot password schemes: verify and generate stored forms.
