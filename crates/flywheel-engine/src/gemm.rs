//! Matrix products into buffers the caller owns, on the gemm crate's kernels (the ones candle's CPU
//! matmul runs on), with strided views for transposes and per-head column blocks.
//!
//! This is the crate's only `unsafe` code: gemm takes raw pointers and strides. Every call goes
//! through [`matmul`], which checks that each view's last element lies inside its slice and that
//! the shapes agree before handing the pointers over; the borrow checker guarantees that the
//! destination does not overlap the operands (`&mut` against `&`). A product written into a
//! reused buffer costs no allocation, and `accumulate` adds it to what the buffer holds (gradient
//! sums, residual connections, a LoRA update over the base projection) in the same pass.
#![allow(unsafe_code)]

use gemm::Parallelism;

/// Products with fewer multiply-adds than this run on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// A read-only `rows × cols` matrix inside a slice: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// The row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// `rows × cols` elements whose rows start `row_stride` apart (a column block of a wider
    /// row-major matrix, such as one attention head).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// The transpose, as a view of the same elements.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "{what}: {}x{} view ends past its {} elements",
                self.rows,
                self.cols,
                self.data.len()
            );
        }
    }
}

/// A writable `rows × cols` matrix inside a slice, rows `row_stride` apart, columns adjacent.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// The row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols }
    }

    /// `rows × cols` elements whose rows start `row_stride` apart.
    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self { data, rows, cols, row_stride }
    }
}

/// `dst = scale · a b` (or `dst += scale · a b` when `accumulate`). Shapes must agree: `a` is
/// `m × k`, `b` is `k × n`, `dst` is `m × n`. `parallel` lets a large product use every thread of
/// the current rayon pool; pass `false` from inside parallel work.
///
/// Panics when the shapes disagree or a view does not fit its slice: both are bugs of the caller.
pub(crate) fn matmul(dst: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, scale: f32, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions {k} and {}", b.rows);
    assert_eq!((dst.rows, dst.cols), (m, n), "matmul: destination is {}x{}, product {m}x{n}", dst.rows, dst.cols);
    a.check("matmul lhs");
    b.check("matmul rhs");
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.cols <= dst.row_stride || m == 1, "matmul: destination rows overlap");
    assert!((m - 1) * dst.row_stride + n <= dst.data.len(), "matmul: destination ends past its slice");
    if k == 0 {
        if !accumulate {
            for row in dst.data.chunks_mut(dst.row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 && m * n * k >= PARALLEL_WORK {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above put every element gemm reads (`a`, `b`: index `(i, j)` at
    // `i * row_stride + j * col_stride` for `i < rows`, `j < cols`) and writes (`dst`: `i *
    // row_stride + j` for `i < m`, `j < n`) inside the slices, whose borrows outlive the call;
    // `dst` is a unique borrow, so it overlaps neither operand, and distinct rows of `dst` do not
    // overlap one another (`n <= row_stride`). gemm's `alpha` scales the old `dst` (read only
    // when `read_dst`), `beta` the product.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        out
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 + seed * 11) % 23) as f32 / 23.0 - 0.5).collect()
    }

    #[test]
    fn products_transposes_strides_and_accumulation_match_loops() {
        let (m, k, n) = (70, 33, 45);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let want = naive(&a, &b, m, k, n);
        let mut out = vec![f32::NAN; m * n];
        matmul(MatMut::new(&mut out, m, n), MatRef::new(&a, m, k), MatRef::new(&b, k, n), 1.0, false, true);
        assert!(out.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4));
        // (bᵀ)ᵀ = b; accumulate doubles; scale halves.
        let mut bt = vec![0.0; n * k];
        for l in 0..k {
            for j in 0..n {
                bt[j * k + l] = b[l * n + j];
            }
        }
        matmul(MatMut::new(&mut out, m, n), MatRef::new(&a, m, k), MatRef::new(&bt, n, k).t(), 0.5, true, false);
        assert!(out.iter().zip(&want).all(|(x, y)| (x - 1.5 * y).abs() < 1e-4));
        // A column block of a wider matrix, written into a column block of a wider destination.
        let wide = 3 * k;
        let mut aw = vec![9.0; m * wide];
        for i in 0..m {
            aw[i * wide + k..i * wide + 2 * k].copy_from_slice(&a[i * k..(i + 1) * k]);
        }
        let mut dst = vec![7.0; m * (n + 5)];
        let lhs = MatRef::strided(&aw[k..], m, k, wide);
        matmul(MatMut::strided(&mut dst[2..], m, n, n + 5), lhs, MatRef::new(&b, k, n), 1.0, false, true);
        for i in 0..m {
            assert_eq!(&dst[i * (n + 5)..i * (n + 5) + 2], &[7.0, 7.0]);
            for j in 0..n {
                assert!((dst[i * (n + 5) + 2 + j] - want[i * n + j]).abs() < 1e-4);
            }
        }
    }

    #[test]
    #[should_panic(expected = "ends past")]
    fn a_view_past_its_slice_is_refused() {
        let a = vec![0.0; 10];
        let mut out = vec![0.0; 4];
        matmul(MatMut::new(&mut out, 2, 2), MatRef::new(&a, 2, 6), MatRef::new(&a, 6, 2), 1.0, false, false);
    }
}
