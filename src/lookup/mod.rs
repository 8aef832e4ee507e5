//! mailmap: the lookups Exim calls, and the socket daemon with its cache.
