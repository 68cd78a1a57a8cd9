//! propersim's base layer: what every other crate shares and none of them owns.
//!
//! - [`config`]: `propersim.toml` and its settings;
//! - [`storage`]: the only code that knows the layout of `storage/<sim>/` (sim codes, step files,
//!   checkpoints, atomic writes);
//! - [`clock`]: simulated time, and the original's time formats;
//! - [`world`]: the map (maze, paths, spatial memory);
//! - [`suggestion`]: the assistant's proposals, as both sides see them.
//!
//! Nothing here knows about models, training, the simulation loop or the web.

pub mod clock;
pub mod config;
pub mod storage;
pub mod suggestion;
pub mod world;
