//! The decode-step matmul over GGUF Q4_1 and Q8_0 weights, kept as the file has them.
//!
//! Why our own: candle 0.11 multiplies Q4_1 with a scalar kernel, so the dual model used to
//! re-quantize every Q4_1 matrix to Q8_0 for its decode steps. Decode reads every weight once per
//! token and is bound by memory traffic, and Q8_0 is 34 bytes per 32 weights against Q4_1's 20:
//! SmolLM2-135M's decode read 143 MB per token instead of llama.cpp's 96 MB. Candle's Q8_0 kernel
//! (SmolLM2's tied output layer) converts each block's f16 scale with a function call; with it,
//! the output layer took 58% as long as all 30 Q4_1 layers though it has a quarter of the blocks.
//!
//! The maths is llama.cpp's `q4_1 × q8_1` and `q8_0 × q8_0` dot products: each row of
//! activations is quantized to 8 bits per block of 32 (`d`, and `s = d·Σq` for Q4_1's offset),
//! the block's integer sum is exact, and it is scaled by `d_w·d_x` (and offset by `m_w·s_x`,
//! with Q4_1's nibbles centred, see `dot_scalar`).
//!
//! **Batch invariance.** Every (weight row, activation row) dot product runs the same
//! instructions in the same order whatever the batch holds and however the rows are split
//! between threads, so a sequence's logits do not depend on what it is decoded with. Each weight
//! row is read from memory once per batch (its blocks stay in L1 while every activation row uses
//! them).

use anyhow::{bail, Result};

/// Weights per block.
const BLOCK: usize = 32;

/// A block format of the weights.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    /// `d` and `m` as f16, then 16 bytes of nibbles: `w = d·q + m`, `q` in 0..16.
    Q4_1,
    /// `d` as f16, then 32 signed bytes: `w = d·q`.
    Q8_0,
}

impl Format {
    fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }
}

/// One block of activations quantized to 8 bits: `x ≈ d·q`, and `s = d·Σq`.
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
struct BlockQ8 {
    d: f32,
    s: f32,
    q: [i8; BLOCK],
    /// `8·Σ q[4i..4i+4]` for each i: what centring Q4_1's nibbles (`q − 8`) takes from each of
    /// the eight partial sums of the AVX2 kernel, computed once per activation row.
    centring: [i32; 8],
}

/// A `[rows, cols]` weight matrix in Q4_1 or Q8_0 blocks, row-major, as in the GGUF file.
pub struct QuantMatrix {
    data: Vec<u8>,
    format: Format,
    rows: usize,
    cols: usize,
    kernel: Kernel,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl QuantMatrix {
    /// Wrap the raw blocks of a `[rows, cols]` matrix (`cols` a multiple of 32).
    pub fn new(data: Vec<u8>, format: Format, rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK) {
            bail!("a {format:?} matrix needs a multiple of {BLOCK} columns, not {cols}");
        }
        let want = rows * cols / BLOCK * format.block_bytes();
        if data.len() != want {
            bail!("{} bytes for a [{rows}, {cols}] {format:?} matrix, expected {want}", data.len());
        }
        Ok(QuantMatrix { data, format, rows, cols, kernel: Kernel::detect() })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `out[r][o] = Σ_c x[r][c] · W[o][c]` for each of the `x.len() / cols` rows of `x`.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        matmul_many(&[self], x, &mut [out])
    }
}

/// [`QuantMatrix::matmul`] of the same rows `x` by several matrices with as many columns (a
/// layer's query, key and value projections), in one parallel dispatch: on two cores a decode
/// step's ~240 dispatches, each waking the pool's worker, cost as much as a row of arithmetic.
pub fn matmul_many(mats: &[&QuantMatrix], x: &[f32], outs: &mut [&mut [f32]]) -> Result<()> {
    let Some(k) = mats.first().map(|m| m.cols) else { return Ok(()) };
    let m = x.len() / k;
    for (w, out) in mats.iter().zip(outs.iter()) {
        if w.cols != k || !x.len().is_multiple_of(k) || out.len() != m * w.rows {
            bail!(
                "{:?} matmul: {} inputs and {} outputs do not fit a [{}, {}] matrix",
                w.format,
                x.len(),
                out.len(),
                w.rows,
                w.cols
            );
        }
    }
    if mats.len() != outs.len() {
        bail!("{} matrices for {} outputs", mats.len(), outs.len());
    }
    let nb = k / BLOCK;
    let xq: Vec<BlockQ8> = x.chunks_exact(BLOCK).map(quantize_block).collect();
    let outs: Vec<(usize, usize)> = outs.iter_mut().zip(mats).map(|(o, w)| (o.as_mut_ptr() as usize, w.rows)).collect();
    // Work item i is row i of the matrices' rows laid end to end.
    let starts: Vec<usize> = mats.iter().scan(0, |at, w| Some(std::mem::replace(at, *at + w.rows))).collect();
    let total: usize = mats.iter().map(|w| w.rows).sum();
    let work = |range: std::ops::Range<usize>| {
        for i in range {
            let j = starts.partition_point(|&s| s <= i) - 1;
            let (w, o, (out_ptr, n)) = (mats[j], i - starts[j], outs[j]);
            let row_bytes = nb * w.format.block_bytes();
            let wrow = &w.data[o * row_bytes..(o + 1) * row_bytes];
            for r in 0..m {
                let v = w.kernel.dot(w.format, wrow, &xq[r * nb..(r + 1) * nb]);
                // SAFETY: each output holds m·n floats and every (matrix, r, o) is written by
                // exactly one work item, so no two threads write the same element.
                unsafe { *(out_ptr as *mut f32).add(r * n + o) = v };
            }
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(total, work);
    Ok(())
}

/// Quantize 32 activations as llama.cpp's `q8_1` does (round to nearest, half away from zero).
fn quantize_block(x: &[f32]) -> BlockQ8 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ8 { d, ..Default::default() };
    let mut sum = 0i32;
    for (q, v) in b.q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    b.s = d * sum as f32;
    for (c, q) in b.centring.iter_mut().zip(b.q.chunks_exact(4)) {
        *c = 8 * q.iter().map(|&q| q as i32).sum::<i32>();
    }
    b
}

/// IEEE half to f32 (the blocks' `d` and `m`; subnormals included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            let v = man as f32 * f32::powi(2.0, -24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("PROPERSIM_Q4_SCALAR").is_none()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }

    /// Dot product of one weight row (`nb` blocks) with one quantized activation row.
    #[inline]
    fn dot(self, format: Format, w: &[u8], x: &[BlockQ8]) -> f32 {
        match (self, format) {
            (Kernel::Scalar, _) => dot_scalar(format, w, x),
            // SAFETY: `detect` chose this kernel only where the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, Format::Q4_1) => unsafe { dot_q4_1_avx2(w, x) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, Format::Q8_0) => unsafe { dot_q8_0_avx2(w, x) },
        }
    }
}

fn dot_scalar(format: Format, w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in w.chunks_exact(format.block_bytes()).zip(x) {
        let mut sumi = 0i32;
        match format {
            Format::Q4_1 => {
                // Centred nibbles: w = d·q + m = d·(q − 8) + (m + 8d). The offset term then
                // holds the block's mid-point, near zero, instead of its minimum: summed apart
                // from the scaled products, two large terms of opposite sign lost enough
                // precision to move the activations of later layers across 8-bit rounding
                // boundaries.
                for j in 0..16 {
                    let (lo, hi) = ((b[4 + j] & 0x0f) as i32 - 8, (b[4 + j] >> 4) as i32 - 8);
                    sumi += lo * xb.q[j] as i32 + hi * xb.q[j + 16] as i32;
                }
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                acc += d * xb.d * sumi as f32 + (m + 8.0 * d) * xb.s;
            }
            Format::Q8_0 => {
                for j in 0..32 {
                    sumi += b[2 + j] as i8 as i32 * xb.q[j] as i32;
                }
                acc += half_at(b, 0) * xb.d * sumi as f32;
            }
        }
    }
    acc
}

/// The eight lanes of `acc`, summed (a fixed order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hsum(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    _mm_cvtss_f32(h)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_avx2(w: &[u8], x: &[BlockQ8]) -> f32 {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for (b, xb) in w.chunks_exact(34).zip(x) {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([b[0], b[1]]) as i32)));
        let wq = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        let xq = _mm256_loadu_si256(xb.q.as_ptr() as *const __m256i);
        // maddubs takes unsigned × signed: |w| times x with w's sign (exact, as llama.cpp).
        let prod = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
        let sums = _mm256_madd_epi16(prod, ones);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d * xb.d), acc);
    }
    hsum(acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1_avx2(w: &[u8], x: &[BlockQ8]) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut offset = 0f32;
    for (b, xb) in w.chunks_exact(20).zip(x) {
        // `d` and `m`, f16 to f32 (exact, as `half_at`).
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((b.as_ptr() as *const i32).read_unaligned()));
        let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
        // Nibbles j (low) and j + 16 (high) of byte j: weights 0..16 then 16..32, as the
        // activations are laid out.
        let packed = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
        let wq = _mm256_and_si256(both, low);
        let xq = _mm256_loadu_si256(xb.q.as_ptr() as *const __m256i);
        // Unsigned weights (0..=15) times signed activations, pairs summed into i16 (at most
        // 2·15·127, no saturation), then into eight exact i32 sums (lane i: weights 4i..4i+4),
        // centred (see `dot_scalar`) by taking 8·Σx of the same weights.
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xq), ones);
        let sums = _mm256_sub_epi32(sums, _mm256_loadu_si256(xb.centring.as_ptr() as *const __m256i));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d * xb.d), acc);
        offset += (m + 8.0 * d) * xb.s;
    }
    hsum(acc) + offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    const FORMATS: [(Format, GgmlDType); 2] = [(Format::Q4_1, GgmlDType::Q4_1), (Format::Q8_0, GgmlDType::Q8_0)];

    /// A matrix made by candle's quantizer, and its dequantized f32 values.
    fn matrix(format: Format, dtype: GgmlDType, rows: usize, cols: usize) -> (QuantMatrix, Vec<f32>) {
        let w = Tensor::from_vec(random(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (QuantMatrix::new(q.data().unwrap().into_owned(), format, rows, cols).unwrap(), dense)
    }

    #[test]
    fn matches_the_dequantized_product_within_activation_rounding() {
        let (rows, cols, m) = (70, 192, 3);
        for (format, dtype) in FORMATS {
            let (q, dense) = matrix(format, dtype, rows, cols);
            let x = random(m * cols, 11);
            let mut out = vec![0f32; m * rows];
            q.matmul(&x, &mut out).unwrap();
            for r in 0..m {
                for o in 0..rows {
                    let exact: f32 = (0..cols).map(|c| x[r * cols + c] * dense[o * cols + c]).sum();
                    // Activations carry at most half a step of d = amax/127 each.
                    let bound: f32 = (0..cols).map(|c| dense[o * cols + c].abs()).sum::<f32>() / 254.0 + 1e-4;
                    let got = out[r * rows + o];
                    assert!((got - exact).abs() <= bound, "{format:?} row {r} col {o}: {got} vs {exact}");
                }
            }
        }
    }

    #[test]
    fn every_row_is_the_same_alone_and_in_a_batch() {
        let (rows, cols) = (101, 256);
        for (format, dtype) in FORMATS {
            let (q, _) = matrix(format, dtype, rows, cols);
            let x = random(5 * cols, 3);
            let mut all = vec![0f32; 5 * rows];
            q.matmul(&x, &mut all).unwrap();
            for r in 0..5 {
                let mut one = vec![0f32; rows];
                q.matmul(&x[r * cols..(r + 1) * cols], &mut one).unwrap();
                assert_eq!(one, all[r * rows..(r + 1) * rows], "{format:?} row {r}");
            }
        }
    }

    #[test]
    fn several_matrices_in_one_dispatch_give_the_bits_of_one_at_a_time() {
        let cols = 128;
        let (a, _) = matrix(Format::Q4_1, GgmlDType::Q4_1, 70, cols);
        let (b, _) = matrix(Format::Q8_0, GgmlDType::Q8_0, 33, cols);
        let x = random(3 * cols, 9);
        let (mut ya, mut yb) = (vec![0f32; 3 * 70], vec![0f32; 3 * 33]);
        matmul_many(&[&a, &b], &x, &mut [&mut ya, &mut yb]).unwrap();
        let (mut ra, mut rb) = (vec![0f32; 3 * 70], vec![0f32; 3 * 33]);
        a.matmul(&x, &mut ra).unwrap();
        b.matmul(&x, &mut rb).unwrap();
        assert_eq!((ya, yb), (ra, rb));
        // A matrix of another width, or an output of the wrong size, is an error.
        let (c, _) = matrix(Format::Q4_1, GgmlDType::Q4_1, 4, 64);
        assert!(matmul_many(&[&a, &c], &x, &mut [&mut [0f32; 210], &mut [0f32; 12]]).is_err());
        assert!(matmul_many(&[&a], &x, &mut [&mut [0f32; 209]]).is_err());
    }

    #[test]
    fn the_simd_kernel_equals_the_scalar_one() {
        for (format, dtype) in FORMATS {
            let (q, _) = matrix(format, dtype, 9, 160);
            let xq: Vec<BlockQ8> = random(160, 5).chunks_exact(BLOCK).map(quantize_block).collect();
            let row = 5 * format.block_bytes();
            for o in 0..9 {
                let w = &q.data[o * row..(o + 1) * row];
                let (a, b) = (Kernel::detect().dot(format, w, &xq), Kernel::Scalar.dot(format, w, &xq));
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{format:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn halves_convert_exactly() {
        for (h, f) in [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x0001, 5.960_464_5e-8), (0x7bff, 65504.0), (0, 0.0)] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert!(QuantMatrix::new(vec![0; 20], Format::Q4_1, 1, 16).is_err());
        assert!(QuantMatrix::new(vec![0; 19], Format::Q4_1, 1, 32).is_err());
        assert!(QuantMatrix::new(vec![0; 20], Format::Q8_0, 1, 32).is_err());
        let q = QuantMatrix::new(vec![0; 40], Format::Q4_1, 2, 32).unwrap();
        assert!(q.matmul(&[0.0; 31], &mut [0.0; 2]).is_err());
    }
}
