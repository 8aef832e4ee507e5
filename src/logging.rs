//! Logging: syslog when called from Exim/Dovecot, stderr when run by hand.
