//! Language-model forward passes that inference and training share.

use candle_core::Tensor;
// The base crate under the name the modules use (`crate::config`).
use propersim_core::config;

pub mod llama;
pub mod lora;
pub mod shape;

/// A causal language model that the local inference engine can drive token by token.
pub trait CausalLm: Send {
    /// Feed `tokens` starting at position `pos` (earlier positions are in the model's KV cache)
    /// and return the logits of the last position, shape `[vocab]`, f32.
    fn forward_last(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor>;
    /// Forget the KV cache before a new prompt.
    fn reset(&mut self);
}
