//! Tensor parallelism through retro's own model: under `mpirun -np N` (scripts/test runs N = 2) the
//! N ranks split one model (`RetroModel::shard`) and their loss, gathered gradients and gradient norm
//! must equal the whole model's, computed by every rank alone, in f64. Run as one process it checks the
//! same with a group of one. The config has 2 CCA layers, the encoder, a missing neighbour (masked) and
//! perturbed biases and LayerNorm affines, so a split that mixes up rows, heads or a bias shows; with
//! dropout too, whose masks do not depend on the split.

mod common;

use common::max_rel_err;
use retro::dist::{TensorParallel, World};
use retro::model::{Batch, RetroConfig, RetroModel};
use retro::rng::Rng;
use retro::tensor::{DType, Tensor};
use retro::train::adamw::{global_norm, model_grad_norm};
use std::rc::Rc;

const B: usize = 2;
const S: usize = 128;
const L: usize = S / 64;
const K: usize = 2;
const R: usize = 128;
const V: usize = 96;

fn config() -> RetroConfig {
    let mut c = RetroConfig::preset("tiny").unwrap();
    c.name = "tensor-parallel".into();
    c.num_layers = 7;
    c.hidden_size = 32;
    c.num_heads = 4;
    c.vocab_size = V;
    c.seq_length = S;
    c.num_neighbors = K;
    c.retro_layer_numbers = Some(vec![3, 6]);
    c.mask_missing_neighbors = true;
    c
}

/// Every architecture option of InstructRetro's fine-tuning script, and the cca-relpos variant (its bias
/// table split by heads).
fn instruct_retro_config() -> RetroConfig {
    let mut c = config();
    c.name = "instruct-retro-options".into();
    c.use_rotary_position_embeddings = true;
    c.rotary_percent = 0.5;
    c.add_position_embedding = false;
    c.swiglu = true;
    c.add_bias_linear = false;
    c.untie_embeddings_and_output_weights = true;
    c.apply_layernorm_1p = true;
    c.cca_variant = "cca-relpos".into();
    // And grouped-query attention: two key / value heads for the four heads, one per rank.
    c.num_query_groups = Some(2);
    c
}

fn whole_model(c: &RetroConfig) -> RetroModel {
    let mut m = RetroModel::init(c, 11, DType::F64).unwrap();
    let mut rng = Rng::new(12);
    for (spec, t) in m.params.specs.iter().zip(m.params.tensors.iter_mut()) {
        if spec.shape.len() == 1 || spec.name.ends_with("relative_position_bias") {
            for x in t.data_mut::<f64>().unwrap() {
                *x += rng.normal() * if spec.name.contains("layernorm") { 0.1 } else { 0.02 };
            }
        }
    }
    m
}

fn ids(rng: &mut Rng, shape: &[usize]) -> Vec<i64> {
    (0..shape.iter().product()).map(|_| rng.below(V as u64) as i64).collect()
}

fn batch() -> Batch {
    let mut rng = Rng::new(5);
    let tokens = Tensor::from_vec(ids(&mut rng, &[B, S]), &[B, S]).unwrap();
    let labels = Tensor::from_vec(ids(&mut rng, &[B, S]), &[B, S]).unwrap();
    let mut neighbors = ids(&mut rng, &[B, L, K, R]);
    neighbors[R..2 * R].iter_mut().for_each(|t| *t = -1); // sample 0, chunk 0, neighbour 1 missing
    Batch { tokens, labels, neighbors: Some(Tensor::from_vec(neighbors, &[B, L, K, R]).unwrap()) }
}

fn main() {
    let world = Rc::new(World::init().expect("MPI world"));
    let (rank, size) = (world.rank(), world.size());
    let expected: usize = std::env::var("RETRO_EXPECT_WORLD_SIZE").ok().map(|s| s.parse().unwrap()).unwrap_or(1);
    assert_eq!(size, expected, "world size {size}, expected {expected}");
    let tp = TensorParallel::new(world.clone());
    for c in [config(), instruct_retro_config()] {
        let (loss, gradients) = check(&c, &tp, rank);
        world.barrier();
        println!(
            "tensor_parallel: {}: rank {rank} of {size}: loss = whole model's ({loss:.12} with dropout), {gradients} \
             gradients within 1e-9, norm equal",
            c.name
        );
    }
}

/// The split model's loss and gradients, without and with dropout, equal the whole model's. Returns the
/// loss with dropout and the number of gradients compared.
fn check(c: &RetroConfig, tp: &TensorParallel, rank: usize) -> (f64, usize) {
    let size = tp.size();
    let whole = whole_model(c);
    let batch = batch();
    let reference = whole.loss_and_grads(&batch).unwrap();

    let split = whole.shard(tp).unwrap();
    for (spec, t) in split.params.specs.iter().zip(&split.params.tensors) {
        assert_eq!(t.shape(), spec.shape.as_slice(), "{}", spec.name);
    }
    let qkv = split.params.get("decoder.layers.0.self_attention.linear_qkv.weight").unwrap();
    let qkv_rows = 32 + 2 * 32 / c.num_heads * c.kv_heads();
    assert_eq!(qkv.shape(), [qkv_rows / size, 32], "each rank holds its heads' Q, K and V rows");
    assert_eq!(split.unsharded().unwrap().params, whole.params, "gathering the parts gives the whole model back");

    let name = &c.name;
    let part = split.loss_and_grads(&batch).unwrap();
    let loss_err = (part.loss - reference.loss).abs() / reference.loss.abs();
    assert!(
        loss_err < 1e-12,
        "{name} rank {rank}: split loss {} vs whole {} ({loss_err:e})",
        part.loss,
        reference.loss
    );
    let gathered = split.gather_tensors(&part.grads).unwrap();
    for ((spec, g), r) in whole.params.specs.iter().zip(&gathered).zip(&reference.grads) {
        assert_eq!(g.shape(), r.shape(), "{}", spec.name);
        let err = max_rel_err(&g.to_f64_vec(), &r.to_f64_vec(), 1e-6);
        assert!(err < 1e-9, "{name} rank {rank}: gradient of {} differs from the whole model's by {err:e}", spec.name);
    }
    let (norm, reference_norm) = (model_grad_norm(&split, &part.grads), global_norm(&reference.grads));
    assert!((norm - reference_norm).abs() < 1e-12 * reference_norm, "{name}: grad norm {norm} vs {reference_norm}");
    let eval = split.eval_loss(&batch).unwrap();
    assert!((eval - reference.loss).abs() < 1e-12 * reference.loss, "{name}: eval loss {eval} vs {}", reference.loss);

    // With dropout the split model drops what the whole one does: hidden dropout acts on whole tensors,
    // and each rank's heads draw the attention-dropout masks the whole layer draws for them.
    let (mut whole_dropped, mut split_dropped) = (whole.clone(), split.clone());
    whole_dropped.config.dropout = 0.1;
    split_dropped.config.dropout = 0.1;
    let reference = whole_dropped.train_step(&batch, 99).unwrap();
    let part = split_dropped.train_step(&batch, 99).unwrap();
    assert!((reference.loss - eval).abs() > 1e-6, "{name}: dropout changed nothing: {}", reference.loss);
    let loss_err = (part.loss - reference.loss).abs() / reference.loss.abs();
    assert!(loss_err < 1e-12, "{name} rank {rank}: dropout: split loss {} vs whole {}", part.loss, reference.loss);
    let gathered = split.gather_tensors(&part.grads).unwrap();
    for ((spec, g), r) in whole.params.specs.iter().zip(&gathered).zip(&reference.grads) {
        let err = max_rel_err(&g.to_f64_vec(), &r.to_f64_vec(), 1e-6);
        assert!(err < 1e-9, "{name} rank {rank}: dropout: gradient of {} differs by {err:e}", spec.name);
    }
    (part.loss, gathered.len())
}
