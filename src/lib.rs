//! propersim: ProPerSim as one Rust program. See ARCHITECTURE.md for the code map.

pub mod assets;
pub mod assistant;
pub mod bench_llm;
pub mod config;
pub mod llm;
pub mod memory;
pub mod model;
pub mod report;
pub mod sim;
pub mod storage;
pub mod suggestion;
pub mod tracking;
pub mod train;
pub mod user;
pub mod web;
pub mod world;
