//! The user agent (the persona living its day) and its evaluator.

pub mod agent;
pub mod day;
pub mod eval_store;
pub mod evaluator;
pub mod memory;
pub mod plan_tasks;
pub mod profile;
pub mod scripted;

pub use agent::{UserAgent, UserState, UserStep};
