//! Reverse-mode autograd over coarse ops (llm.c granularity): see [`Tape`].

mod tape;

pub use tape::{BackwardFn, Gradients, Tape, Var};
