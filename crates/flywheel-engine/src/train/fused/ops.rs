//! The row-wise pieces of a Llama layer, forward and backward, on plain `f32` slices: RMSNorm,
//! rotary embeddings, SwiGLU, applying LoRA dropout masks. Rows are independent, so each kernel splits its
//! rows across the rayon pool; weight gradients (the norms') are summed over rows afterwards.

use rayon::prelude::*;

use crate::model::arch::Activation;
use crate::model::rope::RopeTables;
use crate::sample::kernels::GELU_C;

/// Rows handed to one rayon task at least: below this, splitting costs more than it saves.
const MIN_ROWS: usize = 8;

/// `v` resized to `n` elements, keeping its allocation. The contents are whatever the buffer
/// held before (zeros where it grew): for outputs that are overwritten whole.
pub(super) fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    v
}

/// `v` resized to `n` zeros, keeping its allocation: for outputs that are accumulated into.
pub(super) fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

/// RMSNorm of every row of `x` (rows of `w.len()`): `out = x · rstd · w` with `rstd = 1 /
/// sqrt(mean(x²) + eps)`, kept per row for the backward pass.
pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d).zip(rstd.par_iter_mut()).zip(x.par_chunks(d)).with_min_len(MIN_ROWS).for_each(
        |((o, r), x)| {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
            *r = 1.0 / (ms + eps).sqrt();
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * *r * w;
            }
        },
    );
}

/// The backward pass of [`rms_norm`]: with `n = x · rstd` and `dn = dout · w`,
/// `dx = rstd · (dn − n · mean(dn · n))`, added to `dx`; `dw += Σ_rows dout · n` when given.
pub(super) fn rms_norm_backward(
    dout: &[f32],
    x: &[f32],
    rstd: &[f32],
    w: &[f32],
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(dout.par_chunks(d))
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter())
        .with_min_len(MIN_ROWS)
        .for_each(|(((dx, g), x), &r)| {
            let dot: f32 = g.iter().zip(x).zip(w).map(|((g, x), w)| g * w * x * r).sum::<f32>() / d as f32;
            for (((dx, &g), &x), &w) in dx.iter_mut().zip(g).zip(x).zip(w) {
                *dx += r * (g * w - x * r * dot);
            }
        });
    if let Some(dw) = dw {
        for ((g, x), &r) in dout.chunks_exact(d).zip(x.chunks_exact(d)).zip(rstd) {
            for ((dw, &g), &x) in dw.iter_mut().zip(g).zip(x) {
                *dw += g * x * r;
            }
        }
    }
}

/// Rotates every head (width `2 · tables.half`) of every row of `x` (rows `width` wide) by its
/// token's position, HF Llama's "rotate half" convention. `inverse` rotates the other way: the
/// backward pass of a rotation is its transpose.
pub(super) fn rope(x: &mut [f32], width: usize, positions: &[u32], tables: &RopeTables, inverse: bool) {
    let half = tables.half;
    let sign = if inverse { -1.0 } else { 1.0 };
    x.par_chunks_mut(width).zip(positions.par_iter()).with_min_len(MIN_ROWS).for_each(|(row, &p)| {
        let cos = &tables.cos[p as usize * half..][..half];
        let sin = &tables.sin[p as usize * half..][..half];
        for head in row.chunks_exact_mut(2 * half) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2, s) = (a[i], b[i], sign * sin[i]);
                a[i] = x1 * cos[i] - x2 * s;
                b[i] = x2 * cos[i] + x1 * s;
            }
        }
    });
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The gate activation and its derivative at `g`.
#[inline(always)]
fn activation(act: Activation, g: f32) -> (f32, f32) {
    match act {
        Activation::Silu => {
            // silu'(g) = σ(g) (1 + g (1 − σ(g)))
            let s = sigmoid(g);
            (g * s, s * (1.0 + g * (1.0 - s)))
        }
        Activation::GeluTanh => {
            // gelu(g) = g/2 (1 + tanh u), u = c (g + 0.044715 g³)
            let u = GELU_C * (g + 0.044_715 * g * g * g);
            let t = u.tanh();
            let du = GELU_C * (1.0 + 3.0 * 0.044_715 * g * g);
            (0.5 * g * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * du)
        }
    }
}

/// The gated MLP's product: `out = act(gate) · up` (SwiGLU, or GeGLU).
pub(super) fn gated(gate: &[f32], up: &[f32], out: &mut [f32], act: Activation) {
    out.par_chunks_mut(4096).zip(gate.par_chunks(4096)).zip(up.par_chunks(4096)).for_each(|((o, g), u)| {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = activation(act, g).0 * u;
        }
    });
}

/// The backward pass of [`gated`]: `dgate = dout · up · act'(gate)`, `dup = dout · act(gate)`.
pub(super) fn gated_backward(
    dout: &[f32],
    gate: &[f32],
    up: &[f32],
    dgate: &mut [f32],
    dup: &mut [f32],
    act: Activation,
) {
    dgate.par_chunks_mut(4096).zip(dup.par_chunks_mut(4096)).enumerate().for_each(|(c, (dg, du))| {
        let at = c * 4096;
        for (i, (dg, du)) in dg.iter_mut().zip(du).enumerate() {
            let (g, u, d) = (gate[at + i], up[at + i], dout[at + i]);
            let (a, da) = activation(act, g);
            *dg = d * u * da;
            *du = d * a;
        }
    });
}

/// Adds `bias` to every row of `x` (rows of `bias.len()`).
pub(super) fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (x, b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

/// The backward pass of [`add_bias`] for the bias: `db += Σ_rows dy`.
pub(super) fn bias_backward(dy: &[f32], db: &mut [f32]) {
    for row in dy.chunks_exact(db.len()) {
        for (g, d) in db.iter_mut().zip(row) {
            *g += d;
        }
    }
}

/// `out[i] = x[i] · mask[i]`.
pub(super) fn masked(x: &[f32], mask: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(x.iter().zip(mask).map(|(x, m)| x * m));
}

/// `dst[i] += src[i] · mask[i]`.
pub(super) fn add_masked(dst: &mut [f32], src: &[f32], mask: &[f32]) {
    for ((d, s), m) in dst.iter_mut().zip(src).zip(mask) {
        *d += s * m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central finite difference of `f` at `x` along coordinate `i`.
    fn numeric(f: &dyn Fn(&[f32]) -> f64, x: &[f32], i: usize) -> f64 {
        let (mut a, mut b) = (x.to_vec(), x.to_vec());
        a[i] += 1e-2;
        b[i] -= 1e-2;
        (f(&a) - f(&b)) / 2e-2
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let d = 6;
        let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.7).sin() + 0.1).collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.1).collect();
        let g: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 1.3).cos()).collect();
        // loss = Σ out · g
        let loss = |x: &[f32]| {
            let (mut out, mut r) = (vec![0.0; 2 * d], vec![0.0; 2]);
            rms_norm(x, &w, 1e-5, &mut out, &mut r);
            out.iter().zip(&g).map(|(o, g)| (o * g) as f64).sum::<f64>()
        };
        let (mut out, mut r) = (vec![0.0; 2 * d], vec![0.0; 2]);
        rms_norm(&x, &w, 1e-5, &mut out, &mut r);
        let (mut dx, mut dw) = (vec![0.0; 2 * d], vec![0.0; d]);
        rms_norm_backward(&g, &x, &r, &w, &mut dx, Some(&mut dw));
        for (i, &g) in dx.iter().enumerate() {
            assert!((g as f64 - numeric(&loss, &x, i)).abs() < 2e-3, "dx[{i}]");
        }
        let wloss = |w: &[f32]| {
            let (mut out, mut r) = (vec![0.0; 2 * d], vec![0.0; 2]);
            rms_norm(&x, w, 1e-5, &mut out, &mut r);
            out.iter().zip(&g).map(|(o, g)| (o * g) as f64).sum::<f64>()
        };
        for (i, &g) in dw.iter().enumerate() {
            assert!((g as f64 - numeric(&wloss, &w, i)).abs() < 2e-3, "dw[{i}]");
        }
    }

    #[test]
    fn inverse_rope_undoes_rope_and_gated_backward_matches_finite_differences() {
        let tables = RopeTables::new(4, 10000.0, 16, None);
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 1.0).collect();
        let mut y = x.clone();
        rope(&mut y, 8, &[3, 11], &tables, false);
        assert!(y.iter().zip(&x).any(|(a, b)| (a - b).abs() > 1e-3));
        rope(&mut y, 8, &[3, 11], &tables, true);
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5));

        for act in [Activation::Silu, Activation::GeluTanh] {
            let (g, u) = (vec![-1.5f32, 0.2, 2.0], vec![0.7f32, -1.1, 0.4]);
            let dout = [0.3f32, -0.8, 1.1];
            let (mut dg, mut du) = (vec![0.0; 3], vec![0.0; 3]);
            gated_backward(&dout, &g, &u, &mut dg, &mut du, act);
            let loss = |g: &[f32], u: &[f32]| {
                let mut o = vec![0.0; 3];
                gated(g, u, &mut o, act);
                o.iter().zip(&dout).map(|(o, d)| (o * d) as f64).sum::<f64>()
            };
            for i in 0..3 {
                assert!((dg[i] as f64 - numeric(&|g| loss(g, &u), &g, i)).abs() < 1e-3, "{act:?} dgate[{i}]");
                assert!((du[i] as f64 - numeric(&|u| loss(&g, u), &u, i)).abs() < 1e-3, "{act:?} dup[{i}]");
            }
        }
    }
}
