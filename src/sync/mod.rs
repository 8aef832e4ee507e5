//! mailsync: the Maildir replicator.
