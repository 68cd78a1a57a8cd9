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
    /// `8·Σq`: the same centring for the whole block (the panel kernel's).
    sum8: i32,
}

/// A `[rows, cols]` weight matrix in Q4_1 or Q8_0 blocks, row-major, as in the GGUF file.
pub struct QuantMatrix {
    data: Vec<u8>,
    format: Format,
    rows: usize,
    cols: usize,
    kernel: Kernel,
    /// Q4_1 regrouped for the panel kernel, where the CPU has it (then `data` is empty).
    panels: Option<Panels>,
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
        let panels = match format {
            Format::Q4_1 if rows.is_multiple_of(PANEL) && panel_kernel() => Some(Panels::new(&data, rows, cols)),
            _ => None,
        };
        let data = if panels.is_some() { Vec::new() } else { data };
        Ok(QuantMatrix { data, format, rows, cols, kernel: Kernel::detect(), panels })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether many activation rows at once are cheap here (the panel kernel serves this
    /// matrix): then a prompt pass is faster on these weights than on dequantized f32 ones.
    pub fn takes_many_rows(&self) -> bool {
        self.panels.is_some()
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
    let xq = quantize_rows(x);
    let paneled = mats.iter().filter(|w| w.panels.is_some()).count();
    if paneled == mats.len() {
        panel_matmul(mats, &xq, m, outs);
        return Ok(());
    }
    if paneled > 0 {
        // Two layouts in one list: one dispatch each (not a case the model has).
        for (w, out) in mats.iter().zip(outs.iter_mut()) {
            matmul_many(&[w], x, &mut [out])?;
        }
        return Ok(());
    }
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

/// Blocks quantized per thread at least, when a pass is split between the threads.
const QUANTIZE_CHUNK: usize = 256;

/// [`quantize_block`] over all of `x`'s blocks: on the pool's threads where there are many (a
/// prompt pass's rows; done on the calling thread alone, this was a tenth of a local awake step
/// with the other thread waiting). Each block's bits are the same either way.
fn quantize_rows(x: &[f32]) -> Vec<BlockQ8> {
    let n = x.len() / BLOCK;
    if n < 2 * QUANTIZE_CHUNK {
        return x.chunks_exact(BLOCK).map(quantize_block).collect();
    }
    let mut xq = vec![BlockQ8::default(); n];
    let out = xq.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(QUANTIZE_CHUNK), |chunks| {
        for c in chunks {
            for i in c * QUANTIZE_CHUNK..((c + 1) * QUANTIZE_CHUNK).min(n) {
                // SAFETY: block i is written by this work item alone, and `xq` outlives the
                // dispatch.
                unsafe { *(out as *mut BlockQ8).add(i) = quantize_block(&x[i * BLOCK..(i + 1) * BLOCK]) };
            }
        }
    });
    xq
}

/// `v` rounded to the nearest integer, halves away from zero (`f32::round`), for `|v| < 2^31`:
/// without the libm call `round` compiles to, which kept [`quantize_block`] from vectorizing.
/// The fraction `v - trunc(v)` is exact, so the comparison decides as `round` does.
#[inline(always)]
fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

/// Quantize 32 activations as llama.cpp's `q8_1` does (round to nearest, half away from zero).
fn quantize_block(x: &[f32]) -> BlockQ8 {
    #[cfg(target_arch = "x86_64")]
    if *AVX2_QUANTIZE {
        // SAFETY: the CPU has AVX2; `x` holds a block.
        return unsafe { quantize_block_avx2(x) };
    }
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let mut q = [0i32; BLOCK];
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(x) {
        *q = round_half_away(v * id);
    }
    finish_block(d, &q)
}

#[cfg(target_arch = "x86_64")]
static AVX2_QUANTIZE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| simd_allowed() && is_x86_feature_detected!("avx2"));

/// [`quantize_block`] eight lanes at a time: the same maximum (the order of a maximum does not
/// matter), the same scale, and [`round_half_away`]'s rounding lane by lane, so the same bits
/// (finite activations; a NaN quantizes to -128 here, 0 in the scalar code).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_block_avx2(x: &[f32]) -> BlockQ8 {
    use std::arch::x86_64::*;
    assert!(x.len() >= BLOCK);
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
    let sign = _mm256_set1_ps(-0.0);
    // abs(v) first: where it is NaN, `max` returns the second operand, as `f32::max` skips NaN.
    let m = v.iter().fold(_mm256_setzero_ps(), |m, v| _mm256_max_ps(_mm256_andnot_ps(sign, *v), m));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let amax = lanes.iter().fold(0f32, |a, &v| a.max(v));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let mut q = [0i32; BLOCK];
    for (i, v) in v.iter().enumerate() {
        let s = _mm256_mul_ps(*v, id);
        let t = _mm256_cvttps_epi32(s);
        let frac = _mm256_sub_ps(s, _mm256_cvtepi32_ps(t));
        // The comparisons' masks are -1 where true.
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5)));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, _mm256_set1_ps(-0.5)));
        let r = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
        _mm256_storeu_si256(q.as_mut_ptr().add(8 * i) as *mut __m256i, r);
    }
    finish_block(d, &q)
}

/// A block from its scale and its rounded values (within `i8`'s range).
#[inline(always)]
fn finish_block(d: f32, q: &[i32; BLOCK]) -> BlockQ8 {
    let mut b = BlockQ8 { d, ..Default::default() };
    let mut sum = 0i32;
    for (out, &q) in b.q.iter_mut().zip(q) {
        *out = q.clamp(-128, 127) as i8;
        sum += *out as i32;
    }
    b.s = d * sum as f32;
    b.sum8 = 8 * sum;
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

/// Whether the SIMD kernels may run: `PROPERSIM_Q4_SCALAR` turns all of them off (decode rows and
/// panels alike), leaving the scalar reference.
#[cfg(target_arch = "x86_64")]
fn simd_allowed() -> bool {
    std::env::var_os("PROPERSIM_Q4_SCALAR").is_none()
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if simd_allowed()
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

/// Weight rows per panel: the sixteen f32 lanes of an AVX-512 register.
const PANEL: usize = 16;

/// Q4_1 weights regrouped sixteen rows at a time, so that one AVX-512 VNNI instruction
/// multiplies four weights of each of sixteen rows with the same four activations: the prompt
/// pass's rows then cost about a third of candle's f32 gemm on the dequantized weights, and the
/// nibbles stay packed two to a byte (the same bytes as the file's blocks), which a decode step
/// has to read from memory.
struct Panels {
    /// Per panel and block: four 64-byte vectors; byte `4j + e` of vector `g` holds row `j`'s
    /// nibble of weight `4g + e` (low half) and of weight `4(g + 4) + e` (high half).
    q: Vec<u8>,
    /// Per panel, block and row: the block's `d`.
    d: Vec<f32>,
    /// Per panel, block and row: `m + 8d`, the offset of the centred nibbles (see `dot_scalar`).
    mid: Vec<f32>,
    nb: usize,
}

/// Whether this CPU runs the panel kernel (AVX-512 F/BW and VNNI; [`simd_allowed`] turns it
/// off with the other kernels).
fn panel_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd_allowed()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
    {
        return true;
    }
    false
}

impl Panels {
    fn new(data: &[u8], rows: usize, cols: usize) -> Panels {
        let nb = cols / BLOCK;
        let units = rows / PANEL * nb;
        let (mut q, mut d, mut mid) = (vec![0u8; units * 256], vec![0f32; units * PANEL], vec![0f32; units * PANEL]);
        for row in 0..rows {
            let (p, j) = (row / PANEL, row % PANEL);
            for b in 0..nb {
                let blk = &data[(row * nb + b) * 20..(row * nb + b + 1) * 20];
                let unit = p * nb + b;
                let (bd, bm) = (half_at(blk, 0), half_at(blk, 2));
                d[unit * PANEL + j] = bd;
                mid[unit * PANEL + j] = bm + 8.0 * bd;
                // Weight i of the block: byte i's low nibble, and weight i + 16 its high one.
                let nibble = |i: usize| if i < 16 { blk[4 + i] & 0x0f } else { blk[4 + i - 16] >> 4 };
                for g in 0..4 {
                    for e in 0..4 {
                        q[unit * 256 + g * 64 + 4 * j + e] = nibble(4 * g + e) | nibble(4 * (g + 4) + e) << 4;
                    }
                }
            }
        }
        Panels { q, d, mid, nb }
    }
}

/// [`matmul_many`] on panels: a work item is one panel of one matrix, for every activation row,
/// four rows at a time. Each row's results are the same bits however many rows are beside it
/// (the rows share the weights' loads, never an accumulator) and however the panels are split
/// between the threads.
fn panel_matmul(mats: &[&QuantMatrix], xq: &[BlockQ8], m: usize, outs: &mut [&mut [f32]]) {
    let outs: Vec<(usize, usize)> = outs.iter_mut().zip(mats).map(|(o, w)| (o.as_mut_ptr() as usize, w.rows)).collect();
    let starts: Vec<usize> = mats.iter().scan(0, |at, w| Some(std::mem::replace(at, *at + w.rows / PANEL))).collect();
    let total: usize = mats.iter().map(|w| w.rows / PANEL).sum();
    let work = |range: std::ops::Range<usize>| {
        for i in range {
            let j = starts.partition_point(|&s| s <= i) - 1;
            let (panels, p, (out_ptr, n)) =
                (mats[j].panels.as_ref().expect("every matrix has panels"), i - starts[j], outs[j]);
            let nb = panels.nb;
            let unit = |v: &[f32]| -> *const f32 { v[p * nb * PANEL..].as_ptr() };
            let (q, d, mid) = (panels.q[p * nb * 256..].as_ptr(), unit(&panels.d), unit(&panels.mid));
            // SAFETY: each output holds m·n floats and every (matrix, row, panel) is written by
            // exactly one work item, so no two threads write the same element.
            let put = |r: usize, v: &[f32; PANEL]| unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), (out_ptr as *mut f32).add(r * n + p * PANEL), PANEL)
            };
            let mut r = 0;
            while r < m {
                let rows = if r + 4 <= m { 4 } else { 1 };
                let x = &xq[r * nb..(r + rows) * nb];
                // SAFETY: panels exist only where `panel_kernel` found the CPU features; the
                // pointers cover this panel's `nb` blocks.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    if rows == 4 {
                        panel_rows::<4>(q, d, mid, nb, x).iter().enumerate().for_each(|(i, v)| put(r + i, v));
                    } else {
                        put(r, &panel_rows::<1>(q, d, mid, nb, x)[0]);
                    }
                }
                r += rows;
            }
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(total, work);
}

/// One panel's sixteen outputs for `R` activation rows (`x`: `R` rows of `nb` blocks). Per row
/// and block: the exact integer dot product of the centred nibbles with the activations (four
/// at a time per lane), scaled by `d·d_x` into the row's accumulator, and the offset `(m + 8d)·s_x`
/// into a second one; the two are added at the end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn panel_rows<const R: usize>(
    q: *const u8,
    d: *const f32,
    mid: *const f32,
    nb: usize,
    x: &[BlockQ8],
) -> [[f32; PANEL]; R] {
    use std::arch::x86_64::*;
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut off = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let mut w = [_mm512_setzero_si512(); 8];
        for g in 0..4 {
            let v = _mm512_loadu_si512(q.add(b * 256 + g * 64) as *const _);
            w[g] = _mm512_and_si512(v, low);
            w[g + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        let (dw, mw) = (_mm512_loadu_ps(d.add(b * PANEL)), _mm512_loadu_ps(mid.add(b * PANEL)));
        for r in 0..R {
            let xb = &x[r * nb + b];
            let xw = xb.q.as_ptr() as *const i32;
            let mut sum = _mm512_setzero_si512();
            for (g, w) in w.iter().enumerate() {
                sum = _mm512_dpbusd_epi32(sum, *w, _mm512_set1_epi32(xw.add(g).read_unaligned()));
            }
            let sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(xb.sum8));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(xb.d)), acc[r]);
            off[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xb.s), off[r]);
        }
    }
    let mut out = [[0f32; PANEL]; R];
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), _mm512_add_ps(acc[r], off[r]));
    }
    out
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

    /// Row counts that take the panel kernel (a multiple of [`PANEL`]) where the CPU has it,
    /// and that do not.
    const ROW_COUNTS: [usize; 2] = [96, 70];

    #[test]
    fn matches_the_dequantized_product_within_activation_rounding() {
        let (cols, m) = (192, 6);
        for ((format, dtype), rows) in FORMATS.into_iter().flat_map(|f| ROW_COUNTS.map(|r| (f, r))) {
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
        let cols = 256;
        for ((format, dtype), rows) in FORMATS.into_iter().flat_map(|f| [101, 96].map(|r| (f, r))) {
            let (q, _) = matrix(format, dtype, rows, cols);
            // Two groups of four rows (the panel kernel's) and one row alone.
            let x = random(9 * cols, 3);
            let mut all = vec![0f32; 9 * rows];
            q.matmul(&x, &mut all).unwrap();
            for r in 0..9 {
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
        assert_eq!((&ya, &yb), (&ra, &rb));
        // Panels (where the CPU has their kernel), alone and beside rows.
        let (c, _) = matrix(Format::Q4_1, GgmlDType::Q4_1, 48, cols);
        let (d, _) = matrix(Format::Q4_1, GgmlDType::Q4_1, 32, cols);
        let (mut yc, mut yd, mut ya2) = (vec![0f32; 3 * 48], vec![0f32; 3 * 32], vec![0f32; 3 * 70]);
        matmul_many(&[&c, &d, &a], &x, &mut [&mut yc, &mut yd, &mut ya2]).unwrap();
        let (mut rc, mut rd) = (vec![0f32; 3 * 48], vec![0f32; 3 * 32]);
        c.matmul(&x, &mut rc).unwrap();
        d.matmul(&x, &mut rd).unwrap();
        assert_eq!((yc, yd, ya2), (rc, rd, ra));
        // A matrix of another width, or an output of the wrong size, is an error.
        let (c, _) = matrix(Format::Q4_1, GgmlDType::Q4_1, 4, 64);
        assert!(matmul_many(&[&a, &c], &x, &mut [&mut [0f32; 210], &mut [0f32; 12]]).is_err());
        assert!(matmul_many(&[&a], &x, &mut [&mut [0f32; 209]]).is_err());
    }

    #[test]
    fn rounding_is_f32_round_at_halves_and_beside_them() {
        let mut vs = vec![0.0f32, -0.0, 126.99999, -127.0, 127.0];
        for i in -300..=300 {
            let half = i as f32 * 0.5;
            vs.extend([half, f32::from_bits(half.to_bits() + 1), f32::from_bits(half.to_bits().max(1) - 1)]);
        }
        vs.extend(random(4000, 9).iter().map(|v| v * 127.0));
        for v in vs {
            assert_eq!(round_half_away(v), v.round() as i32, "{v:e}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn blocks_quantize_the_same_with_avx2_as_in_scalar_code() {
        if !*AVX2_QUANTIZE {
            return;
        }
        // Random blocks, blocks of halves (ties at every scale), a zero block, one huge value.
        let mut blocks: Vec<Vec<f32>> = random(BLOCK * 200, 13).chunks(BLOCK).map(<[f32]>::to_vec).collect();
        blocks.push((0..BLOCK).map(|i| (i as f32 - 16.0) * 0.5).collect());
        blocks.push((0..BLOCK).map(|i| if i == 3 { 127.0 } else { (i as f32 - 16.0) * 0.5 }).collect());
        blocks.push(vec![0.0; BLOCK]);
        blocks.push((0..BLOCK).map(|i| if i == 9 { -3e30 } else { i as f32 }).collect());
        for (i, x) in blocks.iter().enumerate() {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let want: Vec<i8> = x.iter().map(|v| (v * id).round() as i8).collect();
            // SAFETY: the CPU has AVX2.
            let got = unsafe { quantize_block_avx2(x) };
            assert_eq!(got.d, d, "block {i}");
            assert_eq!(got.q.to_vec(), want, "block {i}");
            assert_eq!(got.sum8, 8 * want.iter().map(|&q| q as i32).sum::<i32>(), "block {i}");
        }
    }

    #[test]
    fn rows_quantize_the_same_on_the_pool_as_one_by_one() {
        // Enough blocks to take the pool, and a ragged last chunk.
        let x = random(BLOCK * (3 * QUANTIZE_CHUNK + 7), 12);
        let pooled = quantize_rows(&x);
        for (i, (p, b)) in pooled.iter().zip(x.chunks_exact(BLOCK).map(quantize_block)).enumerate() {
            assert!(p.d == b.d && p.s == b.s && p.q == b.q && p.sum8 == b.sum8 && p.centring == b.centring, "{i}");
        }
        assert_eq!(pooled.len(), x.len() / BLOCK);
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
    fn the_panel_kernel_computes_the_centred_block_sums_exactly_in_its_order() {
        if !panel_kernel() {
            println!("no AVX-512 VNNI here: the panel kernel is not used");
            return;
        }
        let (rows, cols, m) = (32, 160, 5);
        let w = Tensor::from_vec(random(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
        let raw = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap().data().unwrap().into_owned();
        let q = QuantMatrix::new(raw.clone(), Format::Q4_1, rows, cols).unwrap();
        assert!(q.panels.is_some());
        let x = random(m * cols, 5);
        let mut got = vec![0f32; m * rows];
        q.matmul(&x, &mut got).unwrap();
        // The same maths one lane at a time: per block the exact integer sum of (nibble − 8)
        // times the activations, then the two fused multiply-adds, in block order.
        let nb = cols / BLOCK;
        for (r, xr) in x.chunks_exact(cols).enumerate() {
            let xq: Vec<BlockQ8> = xr.chunks_exact(BLOCK).map(quantize_block).collect();
            for o in 0..rows {
                let (mut acc, mut off) = (0f32, 0f32);
                for (b, xb) in xq.iter().enumerate() {
                    let blk = &raw[(o * nb + b) * 20..(o * nb + b + 1) * 20];
                    let (d, mm) = (half_at(blk, 0), half_at(blk, 2));
                    let sum: i32 = (0..16)
                        .map(|j| {
                            ((blk[4 + j] & 0x0f) as i32 - 8) * xb.q[j] as i32
                                + ((blk[4 + j] >> 4) as i32 - 8) * xb.q[j + 16] as i32
                        })
                        .sum();
                    acc = (sum as f32).mul_add(d * xb.d, acc);
                    off = (mm + 8.0 * d).mul_add(xb.s, off);
                }
                assert_eq!(got[r * rows + o].to_bits(), (acc + off).to_bits(), "row {r} col {o}");
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
