//! mailcluster: the library behind `mailmap`, `mailauth`, `mailsync` and `mailctl`.
//!
//! The binaries parse arguments, call into this library and map its [`Error`] to an exit
//! code; everything else lives here.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod directory;
pub mod error;
pub mod logging;
pub mod lookup;
pub mod names;
pub mod paths;
pub mod sync;

pub use error::{Error, ErrorKind, Result};
