//! Backend health checks (IMAP/POP3/SMTP greetings), shared with mailctl node list.
