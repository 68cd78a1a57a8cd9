//! The assistant (ProPerAssistant): memory, prompts, the suggestion task and its records.

pub mod memory;
pub mod prompt;
pub mod records;
pub mod scripted;
pub mod suggest;

pub use memory::AssistantMemory;
