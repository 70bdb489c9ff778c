//! Strata's Jepsen-like suite: a real cluster of `strata server` processes,
//! each on a host of its own (a container, or a network namespace, with its
//! own address),
//! concurrent clients, injected faults, a recorded history and a checker.
//! See `README.md` in this folder.

pub mod checker;
pub mod cluster;
pub mod group;
pub mod history;
pub mod image;
pub mod nemesis;
pub mod net;
pub mod workload;
