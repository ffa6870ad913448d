//! The tape: gradient accumulation, inference mode, freeing activations during backward.

mod common;

use retro::autograd::{Tape, Var};
use retro::ops;
use retro::tensor::Tensor;
use std::sync::{Arc, Mutex};

#[test]
fn gradients_accumulate_when_a_leaf_is_used_twice() {
    let x = Tensor::from_vec(vec![1.0f64, -2.0, 3.0], &[3]).unwrap();
    let mut tape = Tape::new();
    let xv = tape.leaf(x);
    let y = ops::add(&mut tape, &xv, &xv).unwrap();
    let z = ops::add(&mut tape, &y, &xv).unwrap();
    let grads = tape.backward_with(&z, Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3]).unwrap()).unwrap();
    assert_eq!(grads.get(&xv).unwrap().to_vec::<f64>().unwrap(), vec![3.0, 6.0, 9.0]);
}

#[test]
fn inference_mode_records_nothing() {
    let mut tape = Tape::inference();
    let x = tape.leaf(Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap());
    let y = ops::gelu(&mut tape, &x).unwrap();
    assert!(tape.is_empty() && !y.requires_grad());
    let err = tape.backward_with(&y, Tensor::from_vec(vec![1.0f32, 1.0], &[2]).unwrap()).unwrap_err();
    assert!(err.to_string().contains("does not depend on any leaf"), "{err}");
}

#[test]
fn ops_on_constants_only_record_nothing() {
    let mut tape = Tape::new();
    let c = Var::constant(Tensor::from_vec(vec![1.0f64], &[1]).unwrap());
    let y = ops::gelu(&mut tape, &c).unwrap();
    assert!(tape.is_empty() && !y.requires_grad());
}

#[test]
fn activations_are_freed_once_their_backward_ran() {
    // `probe` is recorded first, then gelu, which saves probe's output. Backward runs gelu's node first;
    // when probe's backward runs, gelu's node (and its saved copy) must already be gone, leaving only
    // the reference held by probe's own closure.
    let mut tape = Tape::new();
    let x = tape.leaf(Tensor::from_vec(vec![0.5f64, -1.0], &[2]).unwrap());
    let probe_out = Tensor::from_vec(vec![0.5f64, -1.0], &[2]).unwrap();
    let watched = probe_out.clone();
    let refs_seen = Arc::new(Mutex::new(None));
    let refs_seen_in_closure = refs_seen.clone();
    let probe = tape.record("probe", &[&x], probe_out, move |g, _| {
        *refs_seen_in_closure.lock().unwrap() = Some(watched.storage_refs());
        Ok(vec![Some(g.clone())])
    });
    let y = ops::gelu(&mut tape, &probe).unwrap();
    drop(probe);
    let grads = tape.backward_with(&y, Tensor::from_vec(vec![1.0f64, 1.0], &[2]).unwrap()).unwrap();
    assert!(grads.get(&x).is_some());
    assert_eq!(*refs_seen.lock().unwrap(), Some(1));
}

#[test]
fn backward_needs_a_scalar_loss() {
    let mut tape = Tape::new();
    let x = tape.leaf(Tensor::from_vec(vec![1.0f64, 2.0], &[2]).unwrap());
    let y = ops::gelu(&mut tape, &x).unwrap();
    let err = tape.backward(&y).unwrap_err().to_string();
    assert!(err.contains("scalar") && err.contains("[2]"), "{err}");
}
