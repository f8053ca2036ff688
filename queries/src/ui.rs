//! Queries behind the web UI pages and the SQL console examples.
//!
//! Add a query: write `queries/<name>.sql`, declare it here with `crate::query!`, list it in
//! `ALL`, and pin it with a golden test on a hand-made fixture (see `golden.rs`).

use crate::Query;

pub const ALL: &[Query] = &[];
