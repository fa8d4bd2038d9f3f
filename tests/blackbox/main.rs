//! Black-box tests of Flotilla: real `flotilla` processes on loopback, driven through the `flo`
//! CLI, the Rust SDK and raw gRPC. Every test starts its own cluster (see `flotilla_tests`).
//!
//! Build first: `cargo build --release --workspace --all-targets`, then
//! `cargo test --release --workspace --test blackbox` (`make test` does both).

mod bad_input;
mod cluster_formation;
mod failover;
mod forwarding;
mod fuzz;
mod groups;
mod move_replica;
mod partial_produce;
mod produce_consume;
mod producer;
mod retention;
mod wiped_disk;
