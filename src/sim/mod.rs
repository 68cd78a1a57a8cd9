//! The simulation loop and its drivers.

pub mod engine;
pub mod experiment;
pub mod follow;
pub mod headless;
pub mod hooks;
pub mod live;
pub mod provenance;
pub mod setup;
pub mod sweep;
pub mod training;
pub mod turn;

pub use engine::Engine;
