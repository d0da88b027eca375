//! Sampling: the no-grad inference model (`f32` or Q8_0 weights), its per-row kernels and KV
//! cache, choosing each next token, and the batched generation loop.

pub(crate) mod attention;
pub(crate) mod choose;
pub(crate) mod generate;
pub(crate) mod infer;
pub(crate) mod kernels;
pub(crate) mod kv_cache;
pub(crate) mod quant;
#[cfg(target_arch = "x86_64")]
pub(crate) mod vnni;
