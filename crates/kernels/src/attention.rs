//! Causal attention of the query heads that share a key/value head, for one row, against a
//! sequence's cached keys and values.
//!
//! Every query row of every pass goes through [`attend_group`] on its own, prompt rows as well as
//! decode rows, and each query head in it is computed in the same order whatever heads are beside
//! it: a row's result depends only on its queries and the keys and values before it, not on how
//! many rows were computed beside it. That is what lets a prompt reuse a cached prefix of any
//! length and still get the bits of the same prompt computed cold, and lets requests share passes
//! without changing each other's answers. A matmul over a block of rows does not have that
//! property (its reduction order depends on the block's shape).
//!
//! The keys are stored transposed in tiles of [`KEY_TILE`] positions (`[capacity / KEY_TILE,
//! head_dim, KEY_TILE]`, see [`key_index`]): the scores of eight keys are then one vector, each
//! key vector loaded serves every query head of the group (three in SmolLM2), and a tile is one
//! contiguous stretch of memory. That keeps the kernel on arithmetic rather than on reading the
//! cache.

/// Positions per tile of the transposed keys; a key buffer's capacity is a multiple of it.
pub const KEY_TILE: usize = 16;

/// Where the value of dimension `d` of the key at position `pos` lies in a key head of
/// `head_dim` dimensions.
#[inline]
pub fn key_index(pos: usize, d: usize, head_dim: usize) -> usize {
    (pos / KEY_TILE * head_dim + d) * KEY_TILE + pos % KEY_TILE
}

/// Attention of the query heads that share one key/value head, for one row at position
/// `len - 1`. `q` holds their queries (`[heads, head_dim]`, rotated), `keys` the key head in
/// tiles (see [`key_index`]), `values` the value head (`[cap, head_dim]`), the row's own
/// position already written. Writes `[heads, head_dim]` to `out`; `scratch` is reused between
/// calls.
///
/// The arithmetic for a given machine and `head_dim` is fixed: the 64-wide heads of SmolLM2 and
/// Qwen2 take an AVX2/FMA path where the CPU has one, other shapes a portable loop.
#[allow(clippy::too_many_arguments)]
pub fn attend_group(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    cap: usize,
    len: usize,
    hd: usize,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    assert!(
        hd > 0
            && q.len().is_multiple_of(hd)
            && out.len() == q.len()
            && (1..=cap).contains(&len)
            && keys.len() >= len.div_ceil(KEY_TILE) * KEY_TILE * hd
            && values.len() >= len * hd
    );
    #[cfg(target_arch = "x86_64")]
    if hd == avx2::HD && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        for (q, out) in q.chunks(avx2::TILE * hd).zip(out.chunks_mut(avx2::TILE * hd)) {
            // SAFETY: the CPU has AVX2 and FMA, and the lengths were checked above.
            unsafe { avx2::attend_tile(q, keys, values, len, out, scratch) };
        }
        return;
    }
    for (q, out) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        attend_any(q, keys, values, len, out, scratch);
    }
}

/// One query head, portably.
fn attend_any(q: &[f32], keys: &[f32], values: &[f32], len: usize, out: &mut [f32], scores: &mut Vec<f32>) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    scores.extend(
        (0..len).map(|j| q.iter().enumerate().map(|(d, q)| q * keys[key_index(j, d, hd)]).sum::<f32>() * scale),
    );
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    out.fill(0.0);
    let inv = 1.0 / total;
    for (&p, v) in scores.iter().zip(values[..len * hd].chunks_exact(hd)) {
        let p = p * inv;
        for (o, v) in out.iter_mut().zip(v) {
            *o += p * v;
        }
    }
}

/// The 64-wide heads with AVX2 and FMA, up to [`avx2::TILE`] query heads at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    pub const HD: usize = 64;
    /// Query heads computed together: their accumulators (two per vector of the result, see
    /// [`scores`]) and the operands fill the sixteen vector registers.
    pub const TILE: usize = 3;
    use super::{key_index, KEY_TILE};

    /// `e^x` in each lane, Cephes' single-precision method (range reduction by ln 2, a degree-5
    /// polynomial): about 2 ulp, and 0 in effect below -87 (where the result underflows).
    #[inline(always)]
    pub(super) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.376_26)), _mm256_set1_ps(-87.336_55));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }

    /// The scaled scores of `T` query heads (`q`: `[T, 64]`) for keys `0..len` into `scores`
    /// (`[T, stride]`). Each score is `Σ_d q[d]·k[d]` accumulated with FMA in the order of `d`,
    /// the even and the odd `d` apart (two dependency chains instead of one: the loop is bound by
    /// the FMA's latency otherwise), then added and scaled: the same bits for a key in a vector
    /// step or in the scalar tail, and for a head alone or in a tile.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores<const T: usize>(
        q: &[f32],
        keys: *const f32,
        len: usize,
        scores: &mut [f32],
        stride: usize,
    ) {
        let scale = 1.0 / (HD as f32).sqrt();
        let scalev = _mm256_set1_ps(scale);
        let whole = len / KEY_TILE * KEY_TILE;
        for j in (0..whole).step_by(KEY_TILE) {
            // [head][even/odd d][keys 0..8, 8..16]
            let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; T];
            let tile = keys.add(j * HD);
            for d in (0..HD).step_by(2) {
                for parity in 0..2 {
                    let k = tile.add((d + parity) * KEY_TILE);
                    let (k0, k1) = (_mm256_loadu_ps(k), _mm256_loadu_ps(k.add(8)));
                    for (t, a) in acc.iter_mut().enumerate() {
                        let qd = _mm256_set1_ps(*q.get_unchecked(t * HD + d + parity));
                        let a = &mut a[parity];
                        a[0] = _mm256_fmadd_ps(qd, k0, a[0]);
                        a[1] = _mm256_fmadd_ps(qd, k1, a[1]);
                    }
                }
            }
            for (t, [even, odd]) in acc.iter().enumerate() {
                let s = scores.as_mut_ptr().add(t * stride + j);
                _mm256_storeu_ps(s, _mm256_mul_ps(_mm256_add_ps(even[0], odd[0]), scalev));
                _mm256_storeu_ps(s.add(8), _mm256_mul_ps(_mm256_add_ps(even[1], odd[1]), scalev));
            }
        }
        for j in whole..len {
            for t in 0..T {
                let mut s = [0f32; 2];
                for d in 0..HD {
                    s[d % 2] = q[t * HD + d].mul_add(*keys.add(key_index(j, d, HD)), s[d % 2]);
                }
                scores[t * stride + j] = (s[0] + s[1]) * scale;
            }
        }
    }

    /// Up to [`TILE`] query heads (`q`: `[n, 64]`) of one row: see [`super::attend_group`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend_tile(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        len: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let n = q.len() / HD;
        // Each head's scores, padded to whole vectors with -inf (their exponentials are 0 in
        // effect).
        let stride = len.div_ceil(8) * 8;
        scratch.clear();
        scratch.resize(n * stride, f32::NEG_INFINITY);
        match n {
            1 => scores::<1>(q, keys.as_ptr(), len, scratch, stride),
            2 => scores::<2>(q, keys.as_ptr(), len, scratch, stride),
            _ => scores::<3>(q, keys.as_ptr(), len, scratch, stride),
        }
        // Softmax of each head's row; the probabilities replace the scores.
        for row in scratch.chunks_exact_mut(stride) {
            let max = row[..len].iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let (maxv, mut sum) = (_mm256_set1_ps(max), _mm256_setzero_ps());
            for c in row.chunks_exact_mut(8) {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), maxv));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                sum = _mm256_add_ps(sum, e);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
            let inv = 1.0 / lanes.iter().sum::<f32>();
            row.iter_mut().for_each(|p| *p *= inv);
        }
        match n {
            1 => weigh::<1>(scratch, stride, values.as_ptr(), len, out),
            2 => weigh::<2>(scratch, stride, values.as_ptr(), len, out),
            _ => weigh::<3>(scratch, stride, values.as_ptr(), len, out),
        }
    }

    /// `out[t] = Σ_j p[t][j]·v[j]` for `T` heads, each sum in the order of `j`. The head's eight
    /// vectors go in passes of three, three and two, so that the accumulators and the loaded
    /// values fit the sixteen registers (with more, the compiler spills them).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weigh<const T: usize>(p: &[f32], stride: usize, values: *const f32, len: usize, out: &mut [f32]) {
        weigh_part::<T, 3>(p, stride, values, len, out, 0);
        weigh_part::<T, 3>(p, stride, values, len, out, 24);
        weigh_part::<T, 2>(p, stride, values, len, out, 48);
    }

    /// [`weigh`] for the `C` vectors of the heads' width from `from`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weigh_part<const T: usize, const C: usize>(
        p: &[f32],
        stride: usize,
        values: *const f32,
        len: usize,
        out: &mut [f32],
        from: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; T];
        for j in 0..len {
            let v = values.add(j * HD + from);
            let vs: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(v.add(8 * c)));
            for (t, a) in acc.iter_mut().enumerate() {
                let pj = _mm256_set1_ps(*p.get_unchecked(t * stride + j));
                for (a, v) in a.iter_mut().zip(&vs) {
                    *a = _mm256_fmadd_ps(pj, *v, *a);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            for (c, a) in a.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(t * HD + from + 8 * c), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random;

    /// Softmax attention of one head in f64 (`k` in tiles).
    fn reference(q: &[f32], k: &[f32], v: &[f32], len: usize) -> Vec<f64> {
        let hd = q.len();
        let sc: Vec<f64> = (0..len)
            .map(|j| (0..hd).map(|d| (q[d] * k[key_index(j, d, hd)]) as f64).sum::<f64>() / (hd as f64).sqrt())
            .collect();
        let max = sc.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
        let total: f64 = e.iter().sum();
        (0..hd).map(|d| (0..len).map(|j| e[j] / total * v[j * hd + d] as f64).sum()).collect()
    }

    #[test]
    fn attention_matches_softmax_of_scaled_scores_on_both_paths() {
        for (hd, heads, cap, len) in [(20, 2, 16, 7), (64, 1, 48, 1), (64, 3, 48, 29), (64, 5, 48, 48), (64, 3, 64, 33)]
        {
            // Large scores too, so that the softmax is peaked.
            let q: Vec<f32> = random(heads * hd, 6).iter().map(|x| x * 6.0).collect();
            let (k, v) = (random(cap * hd, 7), random(cap * hd, 8));
            let mut out = vec![0.0; heads * hd];
            attend_group(&q, &k, &v, cap, len, hd, &mut out, &mut Vec::new());
            let mut plain = vec![0.0; heads * hd];
            for (q, o) in q.chunks(hd).zip(plain.chunks_mut(hd)) {
                attend_any(q, &k, &v, len, o, &mut Vec::new());
            }
            for h in 0..heads {
                let want = reference(&q[h * hd..(h + 1) * hd], &k, &v, len);
                for d in 0..hd {
                    let (got, port) = (out[h * hd + d] as f64, plain[h * hd + d] as f64);
                    assert!((got - want[d]).abs() < 1e-5, "hd {hd} len {len} head {h} dim {d}");
                    assert!((port - want[d]).abs() < 1e-5, "hd {hd} len {len} head {h} dim {d}");
                }
            }
        }
    }

    #[test]
    fn a_head_gets_the_same_bits_alone_or_beside_others() {
        let (hd, cap, len) = (64, 64, 45);
        let q = random(5 * hd, 3);
        let (k, v) = (random(cap * hd, 4), random(cap * hd, 5));
        let mut all = vec![0.0; 5 * hd];
        attend_group(&q, &k, &v, cap, len, hd, &mut all, &mut Vec::new());
        for h in 0..5 {
            let mut one = vec![0.0; hd];
            attend_group(&q[h * hd..(h + 1) * hd], &k, &v, cap, len, hd, &mut one, &mut Vec::new());
            assert!(one == all[h * hd..(h + 1) * hd], "head {h}");
        }
    }

    /// A key's score is the same bits whether it falls in a vector step or in the scalar tail, so
    /// a row's keys can fall on either side of that line, depending on its position, without
    /// changing a bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_key_scores_the_same_in_a_vector_step_and_in_the_tail() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let (cap, hd) = (48, 64);
        // Values of very different sizes, where the order of the additions shows.
        let q: Vec<f32> =
            random(3 * hd, 1).iter().enumerate().map(|(i, v)| v * 10f32.powi((i % 7) as i32 - 3)).collect();
        let k = random(cap * hd, 2);
        let (mut short, mut long) = (vec![0f32; 3 * 24], vec![0f32; 3 * 32]);
        // SAFETY: the CPU has AVX2 and FMA; `k` holds `cap` keys.
        unsafe {
            avx2::scores::<3>(&q, k.as_ptr(), 20, &mut short, 24);
            avx2::scores::<3>(&q, k.as_ptr(), 32, &mut long, 32);
        }
        // Keys 16..20 are in the tail of the first call and a vector step of the second.
        for t in 0..3 {
            let (a, b) = (&short[t * 24..t * 24 + 20], &long[t * 32..t * 32 + 20]);
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulp_and_vanishes_below_the_range() {
        use std::arch::x86_64::*;
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run(c: &[f32], got: &mut [f32; 8]) {
            _mm256_storeu_ps(got.as_mut_ptr(), avx2::exp8(_mm256_loadu_ps(c.as_ptr())));
        }
        let xs: Vec<f32> = (0..4000).map(|i| -90.0 + i as f32 * 0.0225).collect();
        for c in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { run(c, &mut got) };
            for (x, g) in c.iter().zip(got) {
                let want = (*x as f64).exp();
                if *x < -87.0 {
                    assert!(g < 1e-37, "exp({x}) = {g}");
                } else {
                    assert!(((g as f64 - want) / want).abs() < 2.5e-7, "exp({x}) = {g}, want {want}");
                }
            }
        }
    }
}
