//! One decoder layer, forward and backward, with the optional parts of its family
//! (`model/arch.rs`): query/key/value biases, per-head query/key norms before RoPE, norms of
//! attention's and the MLP's outputs, a sliding window, SwiGLU or GeGLU.

use rand::rngs::StdRng;

use super::attention;
use super::ops::{self, sized, zeroed};
use super::params::Grads;
use super::pass::Pass;
use super::{LayerActs, Scratch};
use crate::model::arch::Part;
use crate::model::lora::Proj;
use crate::sample::kernels::add_assign;

impl Pass<'_> {
    /// Decoder layer `l` from `x` to `out`, keeping what its backward pass reads in `acts`.
    pub fn layer_forward(
        &self,
        l: usize,
        x: &[f32],
        out: &mut Vec<f32>,
        acts: &mut LayerActs,
        ws: &mut Scratch,
        rng: &mut Option<StdRng>,
    ) {
        let c = self.config;
        let (t, d, f, hd) = (self.packed.rows(), c.hidden_size, c.intermediate_size, c.head_dim());
        let (qw, kw) = (self.dims(Proj::Q).0, self.dims(Proj::K).0);
        let layer = &self.params.layers[l];
        let act = self.activation;
        let LayerActs {
            rstd1,
            h1,
            q_raw,
            k_raw,
            rstd_q,
            rstd_k,
            q,
            k,
            v,
            o,
            lse,
            o_proj,
            rstd_o,
            x2,
            rstd2,
            h2,
            gate,
            up,
            down,
            rstd_down,
            adapters,
        } = acts;
        let [aq, ak, av, ao, ag, au, ad] = adapters;
        let sc = &mut ws.adapter;
        ops::rms_norm(x, layer.attn_norm.get(), self.eps(), sized(h1, t * d), sized(rstd1, t));
        // Queries and keys: projected (plus bias), then each head normalised where the family does.
        for (p, raw, rstd, normed, norm, a) in
            [(Proj::Q, q_raw, rstd_q, &mut *q, &layer.q_norm, aq), (Proj::K, k_raw, rstd_k, &mut *k, &layer.k_norm, ak)]
        {
            let width = self.dims(p).0;
            let target = if norm.is_some() { &mut *raw } else { &mut *normed };
            self.project(l, p, h1, sized(target, t * width), false, a, sc, rng);
            if let Some(b) = &layer.bias[p as usize] {
                ops::add_bias(target, b.get());
            }
            if let Some(w) = norm {
                ops::rms_norm(raw, w.get(), self.eps(), sized(normed, t * width), sized(rstd, t * width / hd));
            }
        }
        self.project(l, Proj::V, h1, sized(v, t * kw), false, av, sc, rng);
        if let Some(b) = &layer.bias[Proj::V as usize] {
            ops::add_bias(v, b.get());
        }
        ops::rope(q, qw, &self.packed.positions, self.ropes[l], false);
        ops::rope(k, kw, &self.packed.positions, self.ropes[l], false);
        let heads = self.heads[l];
        let (o, lse) = (sized(o, t * qw), sized(lse, t * heads.heads));
        attention::forward(heads, q, k, v, &self.packed.seqs, o, lse, &mut ws.attention);
        x2.clear();
        x2.extend_from_slice(x);
        match &layer.attn_post_norm {
            Some(w) => {
                self.project(l, Proj::O, o, sized(o_proj, t * d), false, ao, sc, rng);
                let normed = sized(&mut ws.act, t * d);
                ops::rms_norm(o_proj, w.get(), self.eps(), normed, sized(rstd_o, t));
                add_assign(x2, normed);
            }
            None => self.project(l, Proj::O, o, x2, true, ao, sc, rng),
        }
        ops::rms_norm(x2, layer.mlp_norm.get(), self.eps(), sized(h2, t * d), sized(rstd2, t));
        self.project(l, Proj::Gate, h2, sized(gate, t * f), false, ag, sc, rng);
        self.project(l, Proj::Up, h2, sized(up, t * f), false, au, sc, rng);
        ops::gated(gate, up, sized(&mut ws.act, t * f), act);
        out.clear();
        out.extend_from_slice(x2);
        match &layer.mlp_post_norm {
            Some(w) => {
                self.project(l, Proj::Down, &ws.act, sized(down, t * d), false, ad, sc, rng);
                let normed = sized(&mut ws.dx2, t * d);
                ops::rms_norm(down, w.get(), self.eps(), normed, sized(rstd_down, t));
                add_assign(out, normed);
            }
            None => self.project(l, Proj::Down, &ws.act, out, true, ad, sc, rng),
        }
    }

    /// The backward pass of layer `l` (input `x`): from `dout`, the gradient of its output, to
    /// `dx` (when `need_dx`; LoRA's first layer has no use for it), adding parameter gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_backward(
        &self,
        l: usize,
        x: &[f32],
        acts: &LayerActs,
        dout: &[f32],
        dx: &mut Vec<f32>,
        need_dx: bool,
        ws: &mut Scratch,
        grads: &mut Grads,
    ) {
        let c = self.config;
        let (t, d, f) = (self.packed.rows(), c.hidden_size, c.intermediate_size);
        let (qw, kw) = (self.dims(Proj::Q).0, self.dims(Proj::K).0);
        let layer = &self.params.layers[l];
        let act = self.activation;
        let [aq, ak, av, ao, ag, au, ad] = &acts.adapters;
        let sc = &mut ws.adapter;

        // MLP: out = x2 + [post-norm](down(act(gate) · up)), gate and up of h2 = norm(x2).
        let dx2 = &mut ws.dx2;
        dx2.clear();
        dx2.extend_from_slice(dout);
        let ddown: &[f32] = match &layer.mlp_post_norm {
            Some(w) => {
                let dpost = zeroed(&mut ws.dpost, t * d);
                ops::rms_norm_backward(
                    dout,
                    &acts.down,
                    &acts.rstd_down,
                    w.get(),
                    dpost,
                    grads.part(l, Part::MlpPostNorm),
                );
                &ws.dpost
            }
            None => dout,
        };
        ops::gated(&acts.gate, &acts.up, sized(&mut ws.act, t * f), act);
        let dact = sized(&mut ws.dact, t * f);
        self.project_backward(l, Proj::Down, ddown, &ws.act, Some((dact, false)), ad, sc, grads);
        let (dgate, dup) = (sized(&mut ws.dgate, t * f), sized(&mut ws.dup, t * f));
        ops::gated_backward(&ws.dact, &acts.gate, &acts.up, dgate, dup, act);
        let dh = sized(&mut ws.dh, t * d);
        self.project_backward(l, Proj::Gate, &ws.dgate, &acts.h2, Some((dh, false)), ag, sc, grads);
        self.project_backward(l, Proj::Up, &ws.dup, &acts.h2, Some((&mut ws.dh, true)), au, sc, grads);
        let w2 = layer.mlp_norm.get();
        ops::rms_norm_backward(&ws.dh, &acts.x2, &acts.rstd2, w2, &mut ws.dx2, grads.part(l, Part::MlpNorm));

        // Attention: x2 = x + [post-norm](o_proj(attention(rope(q), rope(k), v))), q, k, v of
        // h1 = norm(x), each q and k head normalised before RoPE where the family does.
        let dproj: &[f32] = match &layer.attn_post_norm {
            Some(w) => {
                let dpost = zeroed(&mut ws.dpost, t * d);
                let g = grads.part(l, Part::AttnPostNorm);
                ops::rms_norm_backward(&ws.dx2, &acts.o_proj, &acts.rstd_o, w.get(), dpost, g);
                &ws.dpost
            }
            None => &ws.dx2,
        };
        let dattn = sized(&mut ws.dattn, t * qw);
        self.project_backward(l, Proj::O, dproj, &acts.o, Some((dattn, false)), ao, sc, grads);
        let (dq, dk, dv) = (sized(&mut ws.dq, t * qw), sized(&mut ws.dk, t * kw), sized(&mut ws.dv, t * kw));
        let saved = attention::Saved { q: &acts.q, k: &acts.k, v: &acts.v, o: &acts.o, lse: &acts.lse };
        attention::backward(self.heads[l], saved, &ws.dattn, &self.packed.seqs, dq, dk, dv, &mut ws.attention);
        ops::rope(dq, qw, &self.packed.positions, self.ropes[l], true);
        ops::rope(dk, kw, &self.packed.positions, self.ropes[l], true);
        for (part, norm, dy, draw, raw, rstd) in [
            (Part::QNorm, &layer.q_norm, &mut ws.dq, &mut ws.dq_raw, &acts.q_raw, &acts.rstd_q),
            (Part::KNorm, &layer.k_norm, &mut ws.dk, &mut ws.dk_raw, &acts.k_raw, &acts.rstd_k),
        ] {
            if let Some(w) = norm {
                let n = dy.len();
                ops::rms_norm_backward(dy, raw, rstd, w.get(), zeroed(draw, n), grads.part(l, part));
                std::mem::swap(dy, draw);
            }
        }
        for (p, dy) in [(Proj::Q, &ws.dq), (Proj::K, &ws.dk), (Proj::V, &ws.dv)] {
            if let Some(db) = grads.part(l, Part::Bias(p)) {
                ops::bias_backward(dy, db);
            }
        }
        let dh = sized(&mut ws.dh, t * d);
        self.project_backward(l, Proj::Q, &ws.dq, &acts.h1, need_dx.then_some((dh, false)), aq, sc, grads);
        self.project_backward(l, Proj::K, &ws.dk, &acts.h1, need_dx.then_some((&mut ws.dh, true)), ak, sc, grads);
        self.project_backward(l, Proj::V, &ws.dv, &acts.h1, need_dx.then_some((&mut ws.dh, true)), av, sc, grads);
        dx.clear();
        dx.extend_from_slice(&ws.dx2);
        if need_dx {
            let w1 = layer.attn_norm.get();
            ops::rms_norm_backward(&ws.dh, x, &acts.rstd1, w1, dx, grads.part(l, Part::AttnNorm));
        }
    }
}
