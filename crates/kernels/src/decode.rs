//! The pieces of a decode step that are neither matmuls nor attention (RMS norm, rotary
//! embedding, SwiGLU), on plain slices.
//!
//! Why not candle ops: a decode step of SmolLM2-135M is ~20 small tensor ops per layer, and at
//! one token each op's allocation and dispatch cost as much as the arithmetic; with them, the
//! matmuls were only half of a decode step and a second thread barely helped. Each function
//! works on one row at a time, so a row's result never depends on the rows beside it (the
//! batch invariance the engine promises).

/// `out = x / sqrt(mean(x²) + eps) · w` for each row of `x` (rows of `w.len()` values), as
/// candle's `rms_norm`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let sum2: f32 = row.iter().map(|v| v * v).sum();
        let scale = (sum2 / dim as f32 + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
            *o = v / scale * w;
        }
    }
}

/// Rotate each of the `heads` heads of one row in place by its position's `cos`/`sin`
/// (`head_dim / 2` values each): pairs `(2i, 2i+1)` as llama's GGUF layout has them, or
/// `(i, i + head_dim/2)` for `neox` (qwen2).
pub fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], neox: bool) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// `gate = silu(gate) · up`, elementwise.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random;
    use candle_core::{Device, Tensor};

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn rms_norm_matches_candle() {
        let (x, w) = (random(3 * 40, 1), random(40, 2));
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-5, &mut out);
        let t = Tensor::from_vec(x, (3, 40), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(w, 40, &Device::Cpu).unwrap();
        let want = candle_nn::ops::rms_norm(&t, &wt, 1e-5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        close(&out, &want, 1e-6);
    }

    #[test]
    fn rope_matches_candle_in_both_layouts() {
        let (heads, hd) = (3, 16);
        let x = random(heads * hd, 3);
        let (cos, sin) = (random(hd / 2, 4), random(hd / 2, 5));
        for neox in [false, true] {
            let mut got = x.clone();
            rope(&mut got, hd, &cos, &sin, neox);
            let t = Tensor::from_vec(x.clone(), (1, heads, 1, hd), &Device::Cpu).unwrap();
            let c = Tensor::from_vec(cos.clone(), (1, hd / 2), &Device::Cpu).unwrap();
            let s = Tensor::from_vec(sin.clone(), (1, hd / 2), &Device::Cpu).unwrap();
            let want =
                if neox { candle_nn::rotary_emb::rope(&t, &c, &s) } else { candle_nn::rotary_emb::rope_i(&t, &c, &s) };
            close(&got, &want.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), 1e-6);
        }
    }

    #[test]
    fn swiglu_is_silu_times_up() {
        let (mut g, u) = (vec![-2.0f32, 0.0, 1.5], vec![3.0f32, 1.0, -1.0]);
        swiglu(&mut g, &u);
        let silu = |x: f32| x / (1.0 + (-x).exp());
        close(&g, &[silu(-2.0) * 3.0, 0.0, -silu(1.5)], 1e-7);
    }
}
