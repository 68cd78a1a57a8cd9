//! The seam between the in-process simulation engine and the web server, which consumes it.
//!
//! The server never computes steps itself; it only tells the engine that the page has written an
//! environment file and asks it where the run is, so that reopening `simulator_home` resumes.

/// The in-process simulation as the web server sees it.
///
/// Step contract (the file handshake of the original, made explicit):
/// * the page POSTs `environment/<s>.json`, the server calls [`LiveSim::environment_written`]`(s)`;
/// * the engine computes step `s` and writes `movement/<s>.json`;
/// * [`LiveSim::current_step`] is **the next step the engine will compute**: after `movement/<s>.json`
///   exists it returns `s + 1`. The page loaded at that moment starts at step `current_step()`: if
///   `environment/<current_step>.json` already exists it polls for the movement, otherwise it first
///   posts the environment (the tiles of `movement/<current_step - 1>.json`). So a reload in any phase
///   resumes where the run is, without consuming a handshake file.
/// * The engine computes its starting step on its own when that step's environment already exists
///   (the fork's `environment/<meta.step>.json`); the page then starts by polling for its movement.
pub trait LiveSim: Send + Sync {
    /// The simulation's folder name under `storage/`.
    fn sim_code(&self) -> String;
    /// The next step the engine will compute (see the trait docs).
    fn current_step(&self) -> u64;
    /// `storage/<sim>/environment/<step>.json` has been written; the engine may compute that step.
    fn environment_written(&self, step: u64);
    /// Pause or resume the run (the page's Pause/Play buttons).
    fn set_paused(&self, paused: bool);
    /// Whether the run is paused, so a reloaded page shows the right button state.
    fn paused(&self) -> bool;
}
