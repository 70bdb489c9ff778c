//! Strata's consensus layer: every partition is an openraft group whose log
//! is the partition's segment log ([`strata_storage::PartitionLog`]).
//!
//! - [`types`]: the openraft type configuration (what an entry carries, what
//!   applying one answers) and how entries map to record batches: a data
//!   entry *is* the producer's batch, blank and membership entries are
//!   control batches.
//! - [`log_store`]: openraft's `RaftLogStorage` over the segment log (votes
//!   and the committed entry live in RocksDB beside the indices).
//! - [`network`]: Raft messages between nodes over gRPC, every group of a
//!   node pair on one connection; [`coalesce`] holds back commit-only
//!   requests that a following request makes redundant.
//! - [`state_machine`]: openraft's `RaftStateMachine`. Applying an entry
//!   makes it visible to consumers once it is durable on this replica; the
//!   partition's state at entry N is its log up to N.
//!
//! The design and its reasons are in docs/ARCHITECTURE.md ("Replication
//! with Raft").

pub mod coalesce;
pub mod controller;
pub mod group;
pub mod handover;
pub mod liveness;
pub mod log_store;
pub mod network;
pub mod quiesce;
pub mod retention;
pub mod security;
pub mod state_machine;
pub mod trace;
pub mod transfer;
pub mod types;

pub use log_store::LogStore;
pub use network::{GroupId, Groups, Identity, LEADER_HEADER, Peers, RaftService, Written};
pub use state_machine::StateMachine;
pub use types::{NodeId, NodeInfo, Request, Response, TypeConfig};
