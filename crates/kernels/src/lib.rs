//! CPU kernels of the local engine, on plain slices: [`qmatmul`] multiplies by GGUF Q4_1/Q8_0
//! weights as the file stores them (decode steps), [`attention`] attends one query row at a
//! time (prompt passes and decode steps), [`decode`] holds the rest of a decode step's
//! arithmetic (norm, rotary embedding, SwiGLU).
//!
//! A crate of its own so that it is compiled optimised in test builds too (workspace members are
//! not, see the workspace's `[profile.dev]`): unoptimised, these loops made the SmolLM2 tests
//! many times slower.

pub mod attention;
pub mod decode;
pub mod qmatmul;

/// Test inputs shared by the modules' tests.
#[cfg(test)]
mod testing {
    /// `n` values in [-1, 1) from a fixed seed (an LCG: reproducible, no dependency).
    pub fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }
}
