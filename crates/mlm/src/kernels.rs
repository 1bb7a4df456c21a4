//! Fused CPU kernels for the encoder's memory-bound steps, each with its backward pass.
//!
//! candle builds softmax, layer norm, GELU and cross-entropy out of generic tensor ops. On a CPU
//! every such op allocates a fresh tensor, walks memory once, runs on candle's thread pool and
//! records a node for backprop, so these steps cost more than the matrix products around them.
//! Each kernel here makes one pass over each row, spread over rayon's threads, and its backward
//! pass is one more kernel. candle's own fused versions (`candle_nn::ops::softmax_last_dim`,
//! `layer_norm`) cannot be used for training: they have no backward pass at all.
//!
//! Two kernels also do the matrix products around them, calling gemm (candle's own matrix
//! product) directly: a linear layer adds its bias as part of the product, and multi-head
//! attention runs one text per task with each head's scores kept in the cache. Their backward
//! passes are tensor ops. The element-wise loops are compiled for AVX-512 or AVX2 when the CPU
//! has them ([`vectorised`]).
//!
//! The kernels take contiguous f32 tensors on the CPU. Anything else (a GPU, another dtype) runs
//! the same maths from plain ops, which is also what the tests hold the kernels to.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, D,
};
use rayon::prelude::*;

/// e^x to within a few ulp, in plain arithmetic the compiler can vectorise (libm's `expf` is a
/// call per value). Softmax, cross-entropy and GELU spend most of their time here. Cephes'
/// method: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor series to r^7, 2^n from the
/// exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so n ln 2 is exact in its high part.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 x 2^23 rounds to the nearest integer without a call.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HIGH - n * LN2_LOW;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n from the bits of `shifted`, whose low bits hold n (offset by ROUND's): `n as i32`
    // is a saturating conversion that the compiler does one value at a time.
    let scale =
        f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    // Below the clamp the true value is under 1.7e-38: zero, as masked attention needs.
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// Rows handed to one rayon task: enough work to pay for the hand-off.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// Fills `out`, rows of `n` values, across threads: `fill(i, row)` writes row `i`. Work for a
/// single task (one query being embedded, say) runs on the calling thread: handing it to the
/// pool and waiting costs more than it does, and under concurrent requests the pool is busy.
fn fill_rows(out: &mut [f32], n: usize, fill: impl Fn(usize, &mut [f32]) + Sync) {
    let per_task = rows_per_task(n);
    let fill_task = |task: usize, rows: &mut [f32]| {
        vectorised(
            #[inline(always)]
            || {
                for (i, row) in rows.chunks_mut(n).enumerate() {
                    fill(task * per_task + i, row);
                }
            },
        )
    };
    if out.len() <= per_task * n {
        fill_task(0, out);
    } else {
        out.par_chunks_mut(per_task * n).enumerate().for_each(|(task, rows)| fill_task(task, rows));
    }
}

/// Runs `work` compiled for the widest vectors the CPU has ([`crate::cpu::widest`]). The
/// default x86-64 target has only 4-wide SSE vectors; the kernels' loops are written in
/// [`LANES`] lanes so that, compiled for AVX-512 or AVX2, each is one or two vector
/// instructions (the attention softmax took a fifth of the time embedding with
/// all-MiniLM-L6-v2 when it was compiled for SSE). The work is inlined into the function with
/// the wider target, so everything it calls that is marked `#[inline(always)]` is compiled for
/// that target too.
#[inline(always)]
fn vectorised<R>(work: impl FnOnce() -> R) -> R {
    crate::cpu::widest(work)
}

/// Lanes of the kernels' reductions: a sum or maximum kept in 16 running values (one AVX-512
/// register, two AVX2 ones) instead of one, since the compiler may not reorder a float
/// reduction itself.
const LANES: usize = 16;

/// The sum of `term(x)` over `values`, in [`LANES`] lanes.
#[inline(always)]
fn lane_sum(values: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += term(x);
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|&x| term(x)).sum::<f32>()
}

/// The sum of `a[i] * b[i]`, in [`LANES`] lanes.
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (mut a_chunks, mut b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (a_chunk, b_chunk) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(a_chunk).zip(b_chunk) {
            *lane += x * y;
        }
    }
    let rest: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + rest
}

/// The largest of `values` (negative infinity for none), in [`LANES`] lanes.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Row `i` of `values`, rows of `n`.
fn row(values: &[f32], n: usize, i: usize) -> &[f32] {
    &values[i * n..(i + 1) * n]
}

fn fused(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// The values of a contiguous f32 tensor (callers make inputs contiguous first).
fn values<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    slice(storage, layout)
}

/// The elements of a contiguous tensor of any type.
fn slice<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused kernel called on a non-contiguous tensor"),
    }
}

fn last_dim(layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => candle_core::bail!("fused kernel needs a non-empty last dimension"),
    }
}

// ---------------------------------------------------------------------------------------------
// Attention probabilities: softmax(scores * scale + bias) over keys.

/// `softmax(scores * scale + bias)` over the last dimension, where `scores` is
/// `[batch, heads, queries, keys]` and `bias` (`[batch, 1, 1, keys]`, no gradient) masks padding.
/// Scaling, masking and normalising in one pass saves two passes over the largest activation
/// of the layer, forward and backward.
pub(crate) fn attention_probabilities(
    scores: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    if !fused(scores) {
        return plain::softmax_last_dim(&(scores * scale)?.broadcast_add(bias)?);
    }
    let (batch, _, _, keys) = scores.dims4()?;
    if bias.dims() != [batch, 1, 1, keys] {
        candle_core::bail!(
            "attention bias has shape {:?}, expected [{batch}, 1, 1, {keys}]",
            bias.dims()
        );
    }
    scores.contiguous()?.apply_op2(&bias.contiguous()?, AttentionSoftmax { scale: scale as f32 })
}

struct AttentionSoftmax {
    scale: f32,
}

impl CustomOp2 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "attention-softmax"
    }

    fn cpu_fwd(
        &self,
        scores: &CpuStorage,
        scores_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (scores_values, bias_values) =
            (values(scores, scores_layout)?, values(bias, bias_layout)?);
        let (_, heads, queries, keys) = scores_layout.shape().dims4()?;
        let rows_per_batch = heads * queries;
        let mut out = vec![0f32; scores_values.len()];
        fill_rows(
            &mut out,
            keys,
            #[inline(always)]
            |i, out_row| {
                for (o, &s) in out_row.iter_mut().zip(row(scores_values, keys, i)) {
                    *o = s * self.scale;
                }
                softmax_with_bias(out_row, row(bias_values, keys, i / rows_per_batch));
            },
        );
        Ok((CpuStorage::F32(out), scores_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _bias: &Tensor,
        probabilities: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = probabilities
            .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward { scale: self.scale })?;
        Ok((Some(grad), None))
    }
}

/// One row of attention weights from its scaled scores: adds the padding mask's `bias`, then
/// normalises.
#[inline(always)]
fn softmax_with_bias(row: &mut [f32], bias: &[f32]) {
    for (score, &b) in row.iter_mut().zip(bias) {
        *score += b;
    }
    let max = lane_max(row);
    normalise_exp(row, max);
}

/// Replaces each value by `exp(value - max)`, then divides by their sum.
#[inline(always)]
fn normalise_exp(row: &mut [f32], max: f32) {
    for value in row.iter_mut() {
        *value = exp(*value - max);
    }
    let inverse = 1.0 / lane_sum(row, |x| x);
    for value in row.iter_mut() {
        *value *= inverse;
    }
}

/// The gradient of a softmax's input from its output `y` and the output's gradient `g`:
/// `scale * y * (g - sum(g * y))`, row by row.
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        y_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y_values, g_values) = (values(y, y_layout)?, values(g, g_layout)?);
        let n = last_dim(y_layout)?;
        let mut out = vec![0f32; y_values.len()];
        fill_rows(
            &mut out,
            n,
            #[inline(always)]
            |i, out_row| {
                let (y_row, g_row) = (row(y_values, n, i), row(g_values, n, i));
                let dot = lane_dot(y_row, g_row);
                for ((o, &y), &g) in out_row.iter_mut().zip(y_row).zip(g_row) {
                    *o = self.scale * y * (g - dot);
                }
            },
        );
        Ok((CpuStorage::F32(out), y_layout.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-head attention, fused.

/// Multi-head attention's context, `softmax(q kᵀ * scale + bias) v` for each head:
/// `query`, `key` and `value` are `[batch, length, hidden]` (the heads side by side in each
/// row, as the projections give them), `bias` is `[batch, 1, 1, length]`, 0 for a key
/// attended and a large negative value for padding; the result is `[batch, length, hidden]`.
///
/// Done with tensor ops this is two batched matrix products that candle runs one small head
/// at a time, each handing its work to the thread pool, with a `[batch, heads, length,
/// length]` score tensor (100 MB for a batch of 32 texts of 256 tokens) written, zeroed and
/// read between them, and the heads copied apart and back together. Here each text is one
/// task: for each head its scores are computed into a buffer that stays in the cache,
/// normalised, and multiplied by the values straight into the head's columns of the result.
/// Keys after the last one attended (a text's padding) are left out, since their weights
/// are exactly 0.
pub(crate) fn attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    bias: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (batch, length, hidden) = query.dims3()?;
    if key.dims() != query.dims() || value.dims() != query.dims() {
        candle_core::bail!(
            "attention needs query, key and value of one shape, got {:?}, {:?}, {:?}",
            query.dims(),
            key.dims(),
            value.dims()
        );
    }
    if heads == 0 || hidden % heads != 0 {
        candle_core::bail!("{hidden} values per token do not split into {heads} heads");
    }
    if bias.dims() != [batch, 1, 1, length] {
        candle_core::bail!(
            "attention bias has shape {:?}, expected [{batch}, 1, 1, {length}]",
            bias.dims()
        );
    }
    if !fused(query) {
        return unfused_attention(query, key, value, bias, heads, Ok);
    }
    let op = FusedAttention {
        key_bias: bias.flatten_all()?.to_vec1::<f32>()?,
        bias: bias.clone(),
        heads,
        scale: attention_scale(hidden, heads) as f32,
    };
    query.contiguous()?.apply_op3(&key.contiguous()?, &value.contiguous()?, op)
}

/// [`attention`] from tensor ops, with `on_probabilities` applied to the attention weights
/// before they weigh the values (dropout, in training).
pub(crate) fn unfused_attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    bias: &Tensor,
    heads: usize,
    on_probabilities: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (batch, length, hidden) = query.dims3()?;
    let scale = attention_scale(hidden, heads);
    let (query, key, value) =
        (split_heads(query, heads)?, split_heads(key, heads)?, split_heads(value, heads)?);
    let probabilities = attention_probabilities(&query.matmul(&key.t()?)?, bias, scale)?;
    let probabilities = on_probabilities(probabilities)?;
    probabilities.matmul(&value)?.transpose(1, 2)?.reshape((batch, length, hidden))
}

/// What scores are scaled by: one over the square root of a head's width.
fn attention_scale(hidden: usize, heads: usize) -> f64 {
    1.0 / ((hidden / heads) as f64).sqrt()
}

/// `[batch, length, hidden]` to `[batch, heads, length, hidden / heads]`.
fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, length, hidden) = xs.dims3()?;
    xs.reshape((batch, length, heads, hidden / heads))?.transpose(1, 2)?.contiguous()
}

/// `[batch, heads, length, hidden / heads]` back to `[batch, length, hidden]`.
fn merge_heads(xs: &Tensor) -> Result<Tensor> {
    let (batch, heads, length, size) = xs.dims4()?;
    xs.transpose(1, 2)?.reshape((batch, length, heads * size))
}

struct FusedAttention {
    /// `bias` as values, one row of keys per text.
    key_bias: Vec<f32>,
    bias: Tensor,
    heads: usize,
    scale: f32,
}

/// A matrix inside a slice: element `(i, j)` at `offset + i * row_stride + j * column_stride`.
#[derive(Clone, Copy)]
struct Strided {
    offset: usize,
    row_stride: usize,
    column_stride: usize,
}

impl Strided {
    fn rows(offset: usize, row_stride: usize) -> Strided {
        Strided { offset, row_stride, column_stride: 1 }
    }

    /// Whether a `rows x columns` matrix laid out so fits in `len` values.
    fn fits(self, rows: usize, columns: usize, len: usize) -> bool {
        rows == 0
            || columns == 0
            || self.offset + (rows - 1) * self.row_stride + (columns - 1) * self.column_stride < len
    }
}

/// Whether a matrix product overwrites its destination or adds to it.
#[derive(Clone, Copy, PartialEq)]
enum Accumulate {
    Overwrite,
    Add,
}

/// `out = scale * lhs rhs` (or `out += ...`, with [`Accumulate::Add`]) for an `m x k` `lhs`
/// and a `k x n` `rhs`, with gemm, the matrix product candle itself uses. gemm splits it
/// across rayon's threads, except when it is called from one of them: then the work was split
/// already (attention, one text per task).
#[allow(clippy::too_many_arguments)]
fn multiply(
    out: &mut [f32],
    out_at: Strided,
    accumulate: Accumulate,
    lhs: &[f32],
    lhs_at: Strided,
    rhs: &[f32],
    rhs_at: Strided,
    (m, k, n): (usize, usize, usize),
    scale: f32,
) {
    assert!(
        out_at.fits(m, n, out.len())
            && lhs_at.fits(m, k, lhs.len())
            && rhs_at.fits(k, n, rhs.len()),
        "matrix product outside its buffers"
    );
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && rayon::current_thread_index().is_none() {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let add = accumulate == Accumulate::Add;
    // SAFETY: every element read or written is inside its slice (checked above), and `out`
    // is borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr().add(out_at.offset),
            out_at.column_stride as isize,
            out_at.row_stride as isize,
            add,
            lhs.as_ptr().add(lhs_at.offset),
            lhs_at.column_stride as isize,
            lhs_at.row_stride as isize,
            rhs.as_ptr().add(rhs_at.offset),
            rhs_at.column_stride as isize,
            rhs_at.row_stride as isize,
            if add { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

thread_local! {
    /// One head's attention scores, reused from text to text on each thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q_values, k_values, v_values) =
            (values(q, q_layout)?, values(k, k_layout)?, values(v, v_layout)?);
        let (_, length, hidden) = q_layout.shape().dims3()?;
        let size = hidden / self.heads;
        let text = length * hidden;
        let mut out = vec![0f32; q_values.len()];
        let attend = |(b, out): (usize, &mut [f32])| {
            let key_bias = &self.key_bias[b * length..(b + 1) * length];
            // Weights after the last key attended are exactly 0: leave those keys out.
            let keys = match key_bias.iter().rposition(|&bias| bias > f32::MIN / 2.0) {
                Some(last) => last + 1,
                None => length,
            };
            let (q, k, v) = (
                &q_values[b * text..(b + 1) * text],
                &k_values[b * text..(b + 1) * text],
                &v_values[b * text..(b + 1) * text],
            );
            SCORES.with_borrow_mut(|scores| {
                scores.resize(length * keys, 0.0);
                for head in 0..self.heads {
                    let columns = head * size;
                    // q kᵀ: kᵀ's element (i, j) is k's (j, i).
                    let key_transposed =
                        Strided { offset: columns, row_stride: 1, column_stride: hidden };
                    multiply(
                        scores,
                        Strided::rows(0, keys),
                        Accumulate::Overwrite,
                        q,
                        Strided::rows(columns, hidden),
                        k,
                        key_transposed,
                        (length, size, keys),
                        self.scale,
                    );
                    vectorised(
                        #[inline(always)]
                        || {
                            for row in scores.chunks_exact_mut(keys) {
                                softmax_with_bias(row, key_bias);
                            }
                        },
                    );
                    multiply(
                        out,
                        Strided::rows(columns, hidden),
                        Accumulate::Overwrite,
                        scores,
                        Strided::rows(0, keys),
                        v,
                        Strided::rows(columns, hidden),
                        (length, keys, size),
                        1.0,
                    );
                }
            });
        };
        if text > 0 {
            out.par_chunks_mut(text).enumerate().for_each(attend);
        }
        Ok((CpuStorage::F32(out), q_layout.shape().clone()))
    }

    /// The gradients from tensor ops, recomputing the attention weights: training keeps
    /// attention dropout on and so takes [`unfused_attention`]; this serves the rest (a
    /// model fine-tuned without dropout, the tests).
    fn bwd(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        _context: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (query, key, value) = (
            split_heads(query, self.heads)?,
            split_heads(key, self.heads)?,
            split_heads(value, self.heads)?,
        );
        let grad = split_heads(grad, self.heads)?;
        let scale = f64::from(self.scale);
        let probabilities = attention_probabilities(&query.matmul(&key.t()?)?, &self.bias, scale)?;
        let grad_value = probabilities.t()?.matmul(&grad)?;
        let grad_probabilities = grad.matmul(&value.t()?)?;
        let grad_scores = probabilities.apply_op2_no_bwd(
            &grad_probabilities.contiguous()?,
            &SoftmaxBackward { scale: self.scale },
        )?;
        let grad_query = grad_scores.matmul(&key)?;
        let grad_key = grad_scores.t()?.matmul(&query)?;
        Ok((
            Some(merge_heads(&grad_query)?),
            Some(merge_heads(&grad_key)?),
            Some(merge_heads(&grad_value)?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layers: a matrix product and a bias in one pass.

/// `xs weightᵀ + bias`, for `xs` `[rows, inputs]`, `weight` `[outputs, inputs]` (as PyTorch
/// stores it) and `bias` `[outputs]`. The result starts as copies of the bias, and the matrix
/// product adds itself to it; as tensor ops the product would be written (into memory zeroed
/// first) and then read again to add the bias, and those passes over the largest activations
/// of a layer cost a fifth of embedding with all-MiniLM-L6-v2. The bias's gradient is a sum of
/// contiguous rows across threads; candle's broadcast add takes it with a strided sum on one
/// thread.
pub(crate) fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, inputs) = xs.dims2()?;
    let (outputs, weight_inputs) = weight.dims2()?;
    if weight_inputs != inputs || bias.dims() != [outputs] {
        candle_core::bail!(
            "linear layer of weight {:?} and bias {:?} applied to rows of width {inputs}",
            weight.dims(),
            bias.dims()
        );
    }
    if !fused(xs) {
        return xs.matmul(&weight.t()?)?.broadcast_add(bias);
    }
    xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x_values, w_values, b_values) =
            (values(x, x_layout)?, values(w, w_layout)?, values(b, b_layout)?);
        let (rows, inputs) = x_layout.shape().dims2()?;
        let outputs = b_values.len();
        let mut out = Vec::with_capacity(rows * outputs);
        for _ in 0..rows {
            out.extend_from_slice(b_values);
        }
        // weightᵀ's element (i, j) is the weight's (j, i).
        let weight_transposed = Strided { offset: 0, row_stride: 1, column_stride: inputs };
        multiply(
            &mut out,
            Strided::rows(0, outputs),
            Accumulate::Add,
            x_values,
            Strided::rows(0, inputs),
            w_values,
            weight_transposed,
            (rows, inputs, outputs),
            1.0,
        );
        Ok((CpuStorage::F32(out), Shape::from((rows, outputs))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_xs = grad.matmul(weight)?;
        let grad_weight = grad.t()?.matmul(xs)?;
        let grad_bias = grad.contiguous()?.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(grad_xs), Some(grad_weight), Some(grad_bias)))
    }
}

/// The sum of all rows (`[..., n]` to `[n]`).
struct ColumnSum;

/// Adds each row of `rows` into `sums`.
fn add_rows(mut sums: Vec<f32>, rows: &[f32]) -> Vec<f32> {
    for row in rows.chunks(sums.len()) {
        sums.iter_mut().zip(row).for_each(|(s, x)| *s += x);
    }
    sums
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x_values = values(x, layout)?;
        let n = last_dim(layout)?;
        let sums = x_values
            .par_chunks(rows_per_task(n) * n)
            .fold(|| vec![0f32; n], add_rows)
            .reduce(|| vec![0f32; n], |a, b| add_rows(a, &b));
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

// ---------------------------------------------------------------------------------------------
// Layer norm.

/// Layer normalisation over the last dimension, with learned `weight` and `bias`.
pub(crate) fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused(xs) {
        return plain::layer_norm(xs, weight, bias, eps);
    }
    let n = xs.dim(D::Minus1)?;
    if weight.dims() != [n] || bias.dims() != [n] {
        candle_core::bail!(
            "layer norm of width {n} got weight {:?} and bias {:?}",
            weight.dims(),
            bias.dims()
        );
    }
    xs.contiguous()?.apply_op3(weight, bias, LayerNormOp { eps: eps as f32 })
}

struct LayerNormOp {
    eps: f32,
}

/// A row's mean and reciprocal standard deviation.
#[inline(always)]
fn row_moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |x| x) / n;
    let variance = lane_sum(row, |x| (x - mean) * (x - mean)) / n;
    (mean, 1.0 / (variance + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-trainable"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x_values, w_values, b_values) =
            (values(x, x_layout)?, values(w, w_layout)?, values(b, b_layout)?);
        let n = last_dim(x_layout)?;
        let mut out = vec![0f32; x_values.len()];
        fill_rows(
            &mut out,
            n,
            #[inline(always)]
            |i, out_row| {
                let x_row = row(x_values, n, i);
                let (mean, rstd) = row_moments(x_row, self.eps);
                for (((o, &x), &w), &b) in out_row.iter_mut().zip(x_row).zip(w_values).zip(b_values)
                {
                    *o = (x - mean) * rstd * w + b;
                }
            },
        );
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One kernel writes the input's gradient and, as two extra rows, the weight's and the
        // bias's: they need the same normalised values.
        let n = weight.dim(0)?;
        let rows = x.elem_count() / n;
        let all =
            x.apply_op3_no_bwd(weight, &grad.contiguous()?, &LayerNormBackward { eps: self.eps })?;
        let grad_x = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let grad_weight = all.narrow(0, rows, 1)?.reshape(n)?;
        let grad_bias = all.narrow(0, rows + 1, 1)?.reshape(n)?;
        Ok((Some(grad_x), Some(grad_weight), Some(grad_bias)))
    }
}

/// Layer norm's backward: `[rows + 2, n]`, the input's gradient, then the weight's, then the
/// bias's.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x_values, w_values, g_values) =
            (values(x, x_layout)?, values(w, w_layout)?, values(g, g_layout)?);
        let n = last_dim(x_layout)?;
        let rows = x_values.len() / n;
        let mut out = vec![0f32; x_values.len() + 2 * n];
        let (grad_x, _) = out.split_at_mut(x_values.len());
        let chunk = rows_per_task(n) * n;
        let (grad_w, grad_b) = grad_x
            .par_chunks_mut(chunk)
            .zip(x_values.par_chunks(chunk).zip(g_values.par_chunks(chunk)))
            .map(|(out_rows, (x_rows, g_rows))| {
                let (mut grad_w, mut grad_b) = (vec![0f32; n], vec![0f32; n]);
                let mut normed = vec![0f32; n];
                for ((out_row, x_row), g_row) in
                    out_rows.chunks_mut(n).zip(x_rows.chunks(n)).zip(g_rows.chunks(n))
                {
                    let (mean, rstd) = row_moments(x_row, self.eps);
                    let (mut sum_gw, mut sum_gw_normed) = (0f32, 0f32);
                    for i in 0..n {
                        normed[i] = (x_row[i] - mean) * rstd;
                        let gw = g_row[i] * w_values[i];
                        sum_gw += gw;
                        sum_gw_normed += gw * normed[i];
                        grad_w[i] += g_row[i] * normed[i];
                        grad_b[i] += g_row[i];
                    }
                    let (mean_gw, mean_gw_normed) = (sum_gw / n as f32, sum_gw_normed / n as f32);
                    for i in 0..n {
                        out_row[i] =
                            rstd * (g_row[i] * w_values[i] - mean_gw - normed[i] * mean_gw_normed);
                    }
                }
                (grad_w, grad_b)
            })
            .reduce(
                || (vec![0f32; n], vec![0f32; n]),
                |(w1, b1), (w2, b2)| (add_rows(w1, &w2), add_rows(b1, &b2)),
            );
        out[rows * n..(rows + 1) * n].copy_from_slice(&grad_w);
        out[(rows + 1) * n..].copy_from_slice(&grad_b);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, n))))
    }
}

// ---------------------------------------------------------------------------------------------
// GELU (the exact, erf form BERT uses).

/// `x * Φ(x)`, with Φ the standard normal distribution function.
pub(crate) fn gelu(xs: &Tensor) -> Result<Tensor> {
    if !fused(xs) {
        return xs.gelu_erf();
    }
    xs.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// erf(x) to within 1.5e-7 (Abramowitz and Stegun 7.1.26) plus f32 rounding, cheaper than
/// libm's.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let magnitude = 1.0 - poly * exp(-x * x);
    if x < 0.0 {
        -magnitude
    } else {
        magnitude
    }
}

#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * SQRT_HALF))
}

/// d/dx of x Φ(x): Φ(x) + x φ(x).
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1.0 + erf(x * SQRT_HALF)) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-trainable"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x_values = values(x, layout)?;
        let n = last_dim(layout)?;
        let mut out = vec![0f32; x_values.len()];
        fill_rows(
            &mut out,
            n,
            #[inline(always)]
            |i, out_row| {
                for (o, &x) in out_row.iter_mut().zip(row(x_values, n, i)) {
                    *o = gelu_value(x);
                }
            },
        );
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?))
    }
}

struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x_values, g_values) = (values(x, x_layout)?, values(g, g_layout)?);
        let n = last_dim(x_layout)?;
        let mut out = vec![0f32; x_values.len()];
        fill_rows(
            &mut out,
            n,
            #[inline(always)]
            |i, out_row| {
                for ((o, &x), &g) in
                    out_row.iter_mut().zip(row(x_values, n, i)).zip(row(g_values, n, i))
                {
                    *o = g * gelu_slope(x);
                }
            },
        );
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy.

/// The mean over rows of `-log softmax(logits)[label]`: `logits` `[n, classes]`, `labels` `[n]`
/// (u32). The vocabulary-wide softmax is the widest activation of masked language modelling.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    if !fused(logits) || labels.dtype() != DType::U32 {
        return candle_nn::loss::cross_entropy(logits, labels);
    }
    let (rows, _) = logits.dims2()?;
    if labels.dims() != [rows] {
        candle_core::bail!("cross-entropy of {rows} rows got labels of shape {:?}", labels.dims());
    }
    logits.contiguous()?.apply_op2(&labels.contiguous()?, CrossEntropy)
}

struct CrossEntropy;

/// A row's maximum and `log(sum(exp(row - max)))`.
#[inline(always)]
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = lane_max(row);
    (max, lane_sum(row, |x| exp(x - max)).ln())
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        labels: &CpuStorage,
        labels_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (logit_values, label_values) =
            (values(logits, logits_layout)?, slice::<u32>(labels, labels_layout)?);
        let classes = last_dim(logits_layout)?;
        // Checked here, where the labels are at hand; the backward pass reads the same ones.
        if let Some(&label) = label_values.iter().find(|&&l| l as usize >= classes) {
            candle_core::bail!("label {label} is not below the number of classes ({classes})");
        }
        let total: f64 = logit_values
            .par_chunks(classes)
            .zip(label_values.par_iter())
            .map(|(row, &label)| {
                let (max, log_sum) = vectorised(
                    #[inline(always)]
                    || log_sum_exp(row),
                );
                f64::from(max + log_sum - row[label as usize])
            })
            .sum();
        let mean = (total / label_values.len().max(1) as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = logits.apply_op3_no_bwd(labels, &grad.reshape(1)?, &CrossEntropyBackward)?;
        Ok((Some(grad), None))
    }
}

/// `(softmax(logits) - one_hot(label)) * grad / rows`.
struct CrossEntropyBackward;

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        labels: &CpuStorage,
        labels_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (logit_values, label_values) =
            (values(logits, logits_layout)?, slice::<u32>(labels, labels_layout)?);
        let grad = values(grad, grad_layout)?[0] / label_values.len().max(1) as f32;
        let classes = last_dim(logits_layout)?;
        let mut out = vec![0f32; logit_values.len()];
        fill_rows(
            &mut out,
            classes,
            #[inline(always)]
            |i, out_row| {
                let logits_row = row(logit_values, classes, i);
                let (max, log_sum) = log_sum_exp(logits_row);
                let shift = max + log_sum;
                for (o, &x) in out_row.iter_mut().zip(logits_row) {
                    *o = exp(x - shift) * grad;
                }
                out_row[label_values[i] as usize] -= grad;
            },
        );
        Ok((CpuStorage::F32(out), logits_layout.shape().clone()))
    }
}

/// The same maths from plain tensor ops: the fallback off the CPU, and the tests' reference.
pub(crate) mod plain {
    use candle_core::{Result, Tensor, D};

    pub(crate) fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
        // Subtracting the (constant) row maximum keeps exp() finite and changes no gradient.
        let max = xs.max_keepdim(D::Minus1)?.detach();
        let exp = xs.broadcast_sub(&max)?.exp()?;
        exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
    }

    pub(crate) fn layer_norm(
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let mean = xs.mean_keepdim(D::Minus1)?;
        let centered = xs.broadcast_sub(&mean)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(variance + eps)?.sqrt()?)?;
        normed.broadcast_mul(weight)?.broadcast_add(bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| rng.random::<f32>() * 6.0 - 3.0).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Runs `f` on fresh variables made from `inputs`, weighting the output by a fixed random
    /// tensor so every output element matters, and returns the output and each input's gradient.
    fn forward_and_gradients(
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors).unwrap();
        let weights = random(out.dims(), 99);
        let grads = (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let grads = tensors.iter().map(|t| grads.get(t).expect("a gradient").clone()).collect();
        (out, grads)
    }

    fn assert_same(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        plain: impl Fn(&[Tensor]) -> Result<Tensor>,
        tolerance: f32,
    ) {
        let (out_fused, grads_fused) = forward_and_gradients(inputs, fused);
        let (out_plain, grads_plain) = forward_and_gradients(inputs, plain);
        assert!(max_difference(&out_fused, &out_plain) < tolerance, "outputs differ");
        for (i, (a, b)) in grads_fused.iter().zip(&grads_plain).enumerate() {
            let difference = max_difference(a, b);
            assert!(difference < tolerance, "gradient of input {i} differs by {difference}");
            let size: f32 = b.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(size > 0.0, "gradient of input {i} is zero");
        }
    }

    // Each kernel is tested on a small shape (one task, run on the calling thread) and a large
    // one (split across the pool).

    #[test]
    fn attention_softmax_matches_plain_ops_forward_and_backward() {
        for (batch, heads, queries, keys) in [(2, 3, 5, 7), (2, 4, 300, 64)] {
            let scores = random(&[batch, heads, queries, keys], 1);
            // The last sequence has two padded keys.
            let mask: Vec<f32> = (0..batch * keys)
                .map(|i| if i >= batch * keys - 2 { f32::MIN } else { 0.0 })
                .collect();
            let bias = Tensor::from_vec(mask, (batch, 1, 1, keys), &Device::Cpu).unwrap();
            let scale = 0.37;
            assert_same(
                &[scores],
                |t| attention_probabilities(&t[0], &bias, scale),
                |t| plain::softmax_last_dim(&(&t[0] * scale)?.broadcast_add(&bias)?),
                1e-6,
            );
        }
    }

    #[test]
    fn fused_attention_matches_plain_ops_forward_and_backward() {
        for (batch, length, heads, size) in [(2, 5, 3, 4), (3, 70, 4, 16)] {
            let hidden = heads * size;
            let inputs = [
                random(&[batch, length, hidden], 11),
                random(&[batch, length, hidden], 12),
                random(&[batch, length, hidden], 13),
            ];
            // The second text has three padded keys at its end and the last one a masked key
            // in its middle, which is attended around, not left out.
            let mask: Vec<f32> = (0..batch * length)
                .map(|i| {
                    let (text, position) = (i / length, i % length);
                    let padded = (text == 1 && position >= length - 3)
                        || (text == batch - 1 && position == length / 2);
                    if padded {
                        f32::MIN
                    } else {
                        0.0
                    }
                })
                .collect();
            let bias = Tensor::from_vec(mask, (batch, 1, 1, length), &Device::Cpu).unwrap();
            assert_same(
                &inputs,
                |t| attention(&t[0], &t[1], &t[2], &bias, heads),
                |t| unfused_attention(&t[0], &t[1], &t[2], &bias, heads, Ok),
                1e-5,
            );
        }
    }

    #[test]
    fn layer_norm_matches_plain_ops_forward_and_backward() {
        for rows in [12, 3000] {
            let inputs = [random(&[rows, 33], 2), random(&[33], 3), random(&[33], 4)];
            assert_same(
                &inputs,
                |t| layer_norm(&t[0], &t[1], &t[2], 1e-12),
                |t| plain::layer_norm(&t[0], &t[1], &t[2], 1e-12),
                1e-3,
            );
        }
    }

    #[test]
    fn linear_matches_matmul_and_broadcast_add_forward_and_backward() {
        for rows in [10, 3000] {
            assert_same(
                &[random(&[rows, 70], 8), random(&[17, 70], 9), random(&[17], 10)],
                |t| linear(&t[0], &t[1], &t[2]),
                |t| t[0].matmul(&t[1].t()?)?.broadcast_add(&t[2]),
                1e-3,
            );
        }
    }

    #[test]
    fn gelu_matches_candle_forward_and_backward() {
        for columns in [1000, 20_000] {
            assert_same(&[random(&[3, columns], 5)], |t| gelu(&t[0]), |t| t[0].gelu_erf(), 2e-6);
        }
    }

    #[test]
    fn cross_entropy_matches_candle_forward_and_backward() {
        let labels = Tensor::new(&[3u32, 0, 9, 9, 4], &Device::Cpu).unwrap();
        assert_same(
            &[random(&[5, 10], 6)],
            |t| cross_entropy(&t[0], &labels),
            |t| candle_nn::loss::cross_entropy(&t[0], &labels),
            1e-6,
        );
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_libm_and_zero_far_below() {
        for i in -8_700..8_800 {
            let x = i as f32 / 100.0;
            let (ours, libm) = (exp(x), x.exp());
            assert!((ours - libm).abs() <= 4e-7 * libm, "exp({x}) = {ours}, libm {libm}");
        }
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(-100.0), 0.0);
    }

    #[test]
    fn cross_entropy_refuses_a_label_outside_the_classes() {
        let labels = Tensor::new(&[10u32], &Device::Cpu).unwrap();
        let error = cross_entropy(&random(&[1, 10], 7), &labels).unwrap_err().to_string();
        assert!(error.contains("label 10"), "{error}");
    }
}
