//! The wire contract between Tally's agents and its appliance.
//!
//! Agents (and any Arrow Flight client) write Arrow record batches to the appliance with
//! Flight `DoPut`, naming the table as the descriptor path. This crate defines every table's
//! Arrow schema once; the appliance validates incoming batches against it and the agents
//! build their batches from it.
//!
//! # Stored once
//! A batch is acknowledged ([`IngestAck`]) once it is durable. A sender that may send a batch
//! again (its acknowledgement was lost) puts a [`BatchKey`] in the `app_metadata` of the
//! batch's Flight message; the appliance then acknowledges the resend with `duplicate: true`
//! and does not store it twice, for a day after the sender's last batch ([`key`] has the
//! contract). The agents' [`link::IngestLink`] does this for them. A Flight client that sends
//! no `app_metadata` keeps working as before, without this protection: a batch it sends
//! twice is stored twice.
//!
//! # Recommendations pushed to the operator
//! The appliance streams every finished analysis run's `recommendations` rows to
//! subscribers: Flight `DoGet` with the ticket [`subscribe::subscribe_ticket`] on the same
//! port and mutual TLS, heartbeats every 15 s, newest run only for a slow subscriber.
//! [`subscribe`] has the contract and a client ([`subscribe::RecommendationStream`]); an
//! older appliance answers `Unimplemented`, and subscribers then query instead.
//!
//! # Units (the same in every table)
//! - Time: `Timestamp(Millisecond, "UTC")` in a column named `time`.
//! - CPU: cores as `Float64` (`0.25` is 250 millicores), in columns ending `_cores`.
//! - Memory, storage and traffic: bytes as `Int64`, in columns ending `_bytes`.
//! - Money: US dollars as `Float64`, in columns ending `_usd`.
//! - Labels: a JSON object as `Utf8` (`{"app":"web"}`), so every schema stays flat and any
//!   Flight client can write it without matching nested field names.

mod ack;
pub mod agent;
pub mod bootstrap;
pub mod client;
pub mod key;
pub mod link;
pub mod subscribe;
mod tables;

pub use ack::IngestAck;
pub use client::{ClientError, ClientTls, IngestClient, WriteError, split_for_flight};
pub use key::{BatchKey, KeySource, ProducerId};
pub use tables::{SchemaMismatch, Table, TableDef, UnknownTable, histogram_type, validate_schema};

/// The column every table is partitioned and pruned by.
pub const TIME_COLUMN: &str = "time";
