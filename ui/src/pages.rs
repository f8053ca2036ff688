//! One module per page: a handler that reads the page's queries and composes components.

pub mod network;
pub mod nodes;
pub mod overview;
pub mod policies;
pub mod recommendations;
pub mod settings;
pub mod sign_in;
pub mod sql;
pub mod workload;
pub mod workloads;
