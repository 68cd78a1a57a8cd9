//! CPU kernels of the local engine's decode step, on plain slices: [`qmatmul`] multiplies by
//! GGUF Q4_1/Q8_0 weights as the file stores them, [`decode`] holds the rest of a step's
//! arithmetic (norm, rotary embedding, attention, SwiGLU).
//!
//! A crate of its own so that it is compiled optimised in test builds too (workspace members are
//! not, see the workspace's `[profile.dev]`): unoptimised, these loops made the SmolLM2 tests
//! many times slower.

pub mod decode;
pub mod qmatmul;
