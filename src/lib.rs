//! propersim: ProPerSim as one Rust program. See ARCHITECTURE.md for the code map.
//!
//! This crate is the top layer: the simulation (user agent, assistant, memory, the engine), the
//! web pages, reports and tracking. The layers below are their own crates, re-exported here under
//! their module names so that `propersim::llm::Llm` and `crate::config::Config` read as before.

pub use propersim_core::{clock, config, storage, suggestion, world};
pub use propersim_llm as llm;
pub use propersim_model as model;
pub use propersim_train as train;

pub mod assets;
pub mod assistant;
pub mod bench_llm;
pub mod memory;
pub mod report;
pub mod sim;
pub mod tracking;
pub mod user;
pub mod web;
