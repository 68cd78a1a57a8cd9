//! propersim: ProPerSim as one Rust program. See ARCHITECTURE.md for the code map.

pub mod config;
pub mod llm;
pub mod model;
pub mod storage;
pub mod train;
