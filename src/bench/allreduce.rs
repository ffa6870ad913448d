//! `mpirun -np N retro bench allreduce`: the data-parallel gradient reduction on the CPU, timed on a
//! model's real gradient shapes. It compares the bucketed reduction training runs
//! (`DataParallel::all_reduce_grads`, `--ddp-bucket-size` elements per MPI_Allreduce) with one plain
//! MPI_Allreduce of the same bytes, and reports both as NCCL-tests' bus bandwidth: algbw = bytes / time,
//! busbw = algbw x 2(N-1)/N (the traffic a ring all-reduce puts on each link).

use crate::dist::{ParallelLayout, World};
use crate::model::{RetroConfig, RetroModel};
use crate::tensor::Tensor;
use crate::train::data_parallel::DataParallel;
use crate::Result;
use serde_json::{json, Value};
use std::rc::Rc;
use std::time::Instant;

/// Median seconds of `reps` runs of `f` (after one warm-up), every rank starting together.
fn median_seconds(world: &World, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        world.barrier();
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run(world: Rc<World>, config: &RetroConfig, bucket_size: usize, reps: usize) -> Result<Value> {
    crate::ensure!(reps > 0 && bucket_size > 0, "bench allreduce: --reps and --bucket-size must be positive");
    let n = world.size();
    let layout = ParallelLayout::new(n, world.rank(), 1)?;
    let dp = DataParallel { world: world.clone(), group: world.clone(), layout, bucket_size, ..DataParallel::single() };
    let specs = RetroModel::structure(config)?.params.specs;
    let mut grads: Vec<Tensor> = specs.iter().map(|s| Tensor::full(&s.shape, 1.0, crate::tensor::DType::F32)).collect();
    let elements: usize = grads.iter().map(Tensor::numel).sum();
    let mut flat = vec![1f32; elements];
    let bucketed = median_seconds(&world, reps, || dp.all_reduce_grads(&mut grads))?;
    let plain = median_seconds(&world, reps, || {
        world.all_reduce_sum(&mut flat);
        Ok(())
    })?;
    let bytes = (elements * 4) as f64;
    let bus = |s: f64| bytes / s * 2.0 * (n as f64 - 1.0) / n as f64 / 1e9;
    let buckets = dp.buckets(&grads.iter().map(Tensor::numel).collect::<Vec<_>>()).len();
    Ok(json!({
        "bench": "allreduce", "ranks": n, "tensors": grads.len(), "elements": elements, "bytes": bytes,
        "bucket_size": bucket_size, "buckets": buckets,
        "bucketed_s": bucketed, "plain_s": plain,
        "bucketed_busbw_gbps": bus(bucketed), "plain_busbw_gbps": bus(plain),
        "bucketed_vs_plain": plain / bucketed,
    }))
}
