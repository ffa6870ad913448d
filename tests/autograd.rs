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

// `backward_each` hands a leaf's gradient over as soon as the last op reading it has run its backward:
// the weight of the last layer before the first layer's ops run, the first layer's weight at the end,
// and a leaf read twice only after both reads; the values are `backward`'s.
#[test]
fn backward_each_hands_over_each_leaf_when_its_last_reader_ran() {
    let t = |v: Vec<f64>, s: &[usize]| Tensor::from_vec(v, s).unwrap();
    let record = |tape: &mut Tape| {
        let x = tape.leaf(t(vec![0.5, -1.0, 2.0], &[1, 3]));
        let w1 = tape.leaf(t((0..6).map(|i| 0.1 * i as f64 - 0.2).collect(), &[2, 3]));
        let w2 = tape.leaf(t(vec![0.3, -0.7], &[1, 2]));
        let h = ops::linear(tape, &x, &w1, None).unwrap();
        let h = ops::gelu(tape, &h).unwrap();
        let y = ops::linear(tape, &h, &w2, None).unwrap();
        let y = ops::add(tape, &y, &y).unwrap();
        let loss = ops::reshape(tape, &y, &[]).unwrap();
        (vec![x, w1, w2], loss)
    };
    let mut tape = Tape::new();
    let (leaves, loss) = record(&mut tape);
    let mut events = Vec::new();
    tape.backward_each(&loss, |e| {
        events.push(e.map(|(id, g)| (id, g.to_vec::<f64>().unwrap())));
        Ok(())
    })
    .unwrap();
    let position = |leaf: &Var| events.iter().position(|e| e.as_ref().is_some_and(|(id, _)| Some(*id) == leaf.id()));
    let (x, w1, w2) = (position(&leaves[0]).unwrap(), position(&leaves[1]).unwrap(), position(&leaves[2]).unwrap());
    // After reshape's and add's events, linear 2's backward completes w2 (its own event follows); gelu and
    // linear 1 come after.
    assert_eq!(events[..w2].iter().filter(|e| e.is_none()).count(), 2, "{events:?}");
    assert!(w2 < w1 && w2 < x && events[w2 + 1..w1].iter().any(Option::is_none), "{events:?}");
    let mut tape = Tape::new();
    let (same, loss) = record(&mut tape);
    let grads = tape.backward(&loss).unwrap();
    for (leaf, at) in same.iter().zip([x, w1, w2]) {
        let want = grads.get(leaf).unwrap().to_vec::<f64>().unwrap();
        assert_eq!(events[at].as_ref().unwrap().1, want);
    }
}
