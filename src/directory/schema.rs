//! DDL for `mailctl schema init` and the checks of `mailctl schema check`.
