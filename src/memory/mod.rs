//! Structured daily memory of interactions, shared by the evaluator (the user's view) and the
//! assistant: the last few recommendations in full, the current hour's events, hourly summaries
//! and 4-hourly summaries made by the `summarizer` role.

pub mod scripted;
pub mod structured;
pub mod summarize;

pub use structured::{Interaction, StructuredMemory};
