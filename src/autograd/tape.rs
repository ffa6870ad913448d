//! The tape: every op run while recording appends one node holding its hand-written backward closure
//! and whatever activations that closure needs. `backward` walks the nodes in reverse, and drops each
//! node (and so its saved activations) as soon as its backward has run.
//!
//! A [`Var`] is a value plus, when it takes part in differentiation, its id on the tape. Leaves made with
//! [`Tape::leaf`] are the differentiable inputs (parameters); constants have no id. An op whose inputs
//! are all constants records nothing, and in inference mode ([`Tape::inference`]) nothing is recorded at all.

use crate::tensor::Tensor;
use crate::{ensure, Result};
use std::collections::HashMap;

/// Computes the gradients of an op's inputs from the gradient of its output.
/// `needs[i]` says whether input `i` wants a gradient; the closure may return `None` where it does not.
/// The backward runs on the thread that recorded the forward, so a closure may hold a communicator
/// (tensor parallelism's all-reduce).
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;

#[derive(Debug, Clone)]
pub struct Var {
    id: Option<usize>,
    value: Tensor,
}

impl Var {
    /// A value that takes no part in differentiation.
    pub fn constant(value: Tensor) -> Self {
        Self { id: None, value }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn into_value(self) -> Tensor {
        self.value
    }

    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    pub fn dtype(&self) -> crate::tensor::DType {
        self.value.dtype()
    }

    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }

    pub fn id(&self) -> Option<usize> {
        self.id
    }
}

struct Node {
    op: &'static str,
    inputs: Vec<(Option<usize>, Vec<usize>)>,
    backward: Option<BackwardFn>,
}

pub struct Tape {
    nodes: Vec<Node>,
    recording: bool,
    dropout: Option<DropoutStream>,
}

/// Training-mode dropout: probability `p`, and a stream of per-op seeds derived from one seed, so a
/// forward pass draws the same masks whatever the thread count.
#[derive(Debug, Clone, Copy)]
struct DropoutStream {
    p: f64,
    seed: u64,
    counter: u64,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape {
    /// A tape that records for a later `backward`.
    pub fn new() -> Self {
        Self { nodes: Vec::new(), recording: true, dropout: None }
    }

    /// A recording tape whose ops apply dropout with probability `p` (hidden and attention dropout),
    /// masks drawn from `seed`. With p = 0 this is [`Tape::new`].
    pub fn training(p: f64, seed: u64) -> Self {
        let dropout = (p > 0.0).then_some(DropoutStream { p, seed, counter: 0 });
        Self { nodes: Vec::new(), recording: true, dropout }
    }

    /// The next dropout mask's (probability, seed), or `None` when this tape applies no dropout.
    pub fn next_dropout(&mut self) -> Option<(f64, u64)> {
        let d = self.dropout.as_mut()?;
        d.counter += 1;
        Some((d.p, d.seed ^ d.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// Inference mode: ops compute their forward only and keep no activations.
    pub fn inference() -> Self {
        Self { nodes: Vec::new(), recording: false, dropout: None }
    }

    /// Number of recorded nodes (leaves included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A differentiable input. In inference mode this is a constant.
    pub fn leaf(&mut self, value: Tensor) -> Var {
        if !self.recording {
            return Var::constant(value);
        }
        self.nodes.push(Node { op: "leaf", inputs: Vec::new(), backward: None });
        Var { id: Some(self.nodes.len() - 1), value }
    }

    /// Append an op's output. The closure runs only if some input requires a gradient and the
    /// output's gradient is reached during `backward`.
    pub fn record<F>(&mut self, op: &'static str, inputs: &[&Var], output: Tensor, backward: F) -> Var
    where
        F: FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    {
        if !self.recording || inputs.iter().all(|v| v.id.is_none()) {
            return Var::constant(output);
        }
        let inputs = inputs.iter().map(|v| (v.id, v.shape().to_vec())).collect();
        self.nodes.push(Node { op, inputs, backward: Some(Box::new(backward)) });
        Var { id: Some(self.nodes.len() - 1), value: output }
    }

    /// Backward from a scalar (gradient 1).
    pub fn backward(self, loss: &Var) -> Result<Gradients> {
        let seed = unit_gradient(loss)?;
        self.backward_with(loss, seed)
    }

    /// Backward from any output with an explicit output gradient.
    pub fn backward_with(self, output: &Var, seed: Tensor) -> Result<Gradients> {
        let mut leaves = HashMap::new();
        self.run_backward(output, seed, &mut |event| {
            if let Some((id, g)) = event {
                leaves.insert(id, g);
            }
            Ok(())
        })?;
        Ok(Gradients { by_id: leaves })
    }

    /// Backward from a scalar, handing each leaf's gradient to `ready(leaf id, gradient)` as soon as it
    /// is complete — once every op that read the leaf has run its backward — rather than at the end, and
    /// calling `ready(None)` after each op's backward: what lets data parallelism reduce a bucket of
    /// gradients while the rest of the backward runs (`--overlap-grad-reduce`). Leaves the loss does not
    /// reach are never handed over.
    pub fn backward_each(self, loss: &Var, mut ready: impl FnMut(Option<(usize, Tensor)>) -> Result<()>) -> Result<()> {
        let seed = unit_gradient(loss)?;
        self.run_backward(loss, seed, &mut ready)
    }

    /// The backward walk: `event(Some((id, gradient)))` for each leaf as its gradient completes,
    /// `event(None)` after each op's backward.
    fn run_backward(
        mut self,
        output: &Var,
        seed: Tensor,
        event: &mut dyn FnMut(Option<(usize, Tensor)>) -> Result<()>,
    ) -> Result<()> {
        ensure!(
            seed.shape() == output.shape()
                && seed.dtype() == output.dtype()
                && seed.device() == output.value().device(),
            "backward: seed gradient {:?} {} on {} does not match the output {:?} {} on {}",
            seed.shape(),
            seed.dtype(),
            seed.device(),
            output.shape(),
            output.dtype(),
            output.value().device()
        );
        let Some(out_id) = output.id else {
            crate::bail!("backward: the output does not depend on any leaf of this tape");
        };
        let mut grads: Vec<Option<Tensor>> = vec![None; out_id + 1];
        grads[out_id] = Some(seed);
        self.nodes.truncate(out_id + 1);
        // How many ops still to run read each leaf: at zero its gradient is complete.
        let mut readers = vec![0usize; out_id + 1];
        for node in &self.nodes {
            for id in node.inputs.iter().filter_map(|(id, _)| *id) {
                readers[id] += 1;
            }
        }
        while let Some(node) = self.nodes.pop() {
            let id = self.nodes.len();
            let Some(backward) = node.backward else {
                // A leaf no op reads (the output itself): complete now.
                if let Some(grad) = grads[id].take() {
                    event(Some((id, grad)))?;
                }
                continue;
            };
            if let Some(grad) = grads[id].take() {
                let needs: Vec<bool> = node.inputs.iter().map(|(i, _)| i.is_some()).collect();
                let input_grads = crate::profile::timed(node.op, "backward", || backward(&grad, &needs))
                    .map_err(|e| e.context(format!("backward of {}", node.op)))?;
                drop(grad);
                ensure!(
                    input_grads.len() == node.inputs.len(),
                    "backward of {}: {} gradients for {} inputs",
                    node.op,
                    input_grads.len(),
                    node.inputs.len()
                );
                for ((input, shape), g) in node.inputs.iter().zip(input_grads) {
                    let (Some(input), Some(g)) = (input, g) else { continue };
                    ensure!(
                        g.shape() == shape.as_slice(),
                        "backward of {}: gradient shape {:?} for an input of shape {:?}",
                        node.op,
                        g.shape(),
                        shape
                    );
                    match &mut grads[*input] {
                        Some(acc) => acc.add_assign(&g)?,
                        slot => *slot = Some(g),
                    }
                }
            }
            for input in node.inputs.iter().filter_map(|(id, _)| *id) {
                readers[input] -= 1;
                if readers[input] == 0 && self.nodes[input].backward.is_none() {
                    if let Some(grad) = grads[input].take() {
                        event(Some((input, grad)))?;
                    }
                }
            }
            event(None)?;
        }
        Ok(())
    }
}

/// The gradient 1 of a scalar loss, on its device.
fn unit_gradient(loss: &Var) -> Result<Tensor> {
    ensure!(loss.value.numel() == 1, "backward: the loss must be a scalar, got shape {:?}", loss.shape());
    Tensor::full(loss.shape(), 1.0, loss.dtype()).to(loss.value().device())
}

/// Gradients of the leaves reached by a backward pass.
#[derive(Debug, Default)]
pub struct Gradients {
    by_id: HashMap<usize, Tensor>,
}

impl Gradients {
    pub fn get(&self, leaf: &Var) -> Option<&Tensor> {
        leaf.id.and_then(|id| self.by_id.get(&id))
    }

    pub fn take(&mut self, leaf: &Var) -> Option<Tensor> {
        leaf.id.and_then(|id| self.by_id.remove(&id))
    }
}
