use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::Result;

/// `x · factor` for a constant factor (the CCA gate).
pub fn scale(tape: &mut Tape, x: &Var, factor: f64) -> Result<Var> {
    same_float_dtype("scale", &[x])?;
    let mut out = x.value().clone();
    out.scale(factor)?;
    Ok(tape.record("scale", &[x], out, move |g, _| {
        let mut dx = g.clone();
        dx.scale(factor)?;
        Ok(vec![Some(dx)])
    }))
}
