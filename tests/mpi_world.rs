//! Sum all-reduce through `retro::dist::World`, for any world size.

use retro::dist::World;

fn main() {
    let world = World::init().expect("MPI world");
    let (rank, size) = (world.rank(), world.size());
    let expected_size: usize = std::env::var("RETRO_EXPECT_WORLD_SIZE").ok().map(|s| s.parse().unwrap()).unwrap_or(1);
    assert_eq!(size, expected_size, "world size {size}, expected {expected_size} ({})", world.describe());
    let ranks_sum = (size * (size + 1) / 2) as f64;
    let mut f32s: Vec<f32> = (0..1000).map(|i| ((rank + 1) * (i % 7 + 1)) as f32).collect();
    world.all_reduce_sum(&mut f32s);
    for (i, x) in f32s.iter().enumerate() {
        assert_eq!(*x as f64, ranks_sum * (i % 7 + 1) as f64, "f32 element {i} on rank {rank}");
    }
    let mut f64s = vec![0.1 * (rank + 1) as f64; 3];
    world.all_reduce_sum(&mut f64s);
    assert!(f64s.iter().all(|x| (x - 0.1 * ranks_sum).abs() < 1e-12), "f64 sum {f64s:?} on rank {rank}");
    // Reduce-scatter: block b of the sum is sum over ranks r of (r + 1) * (b + 1); all-gather puts every
    // rank's block back in rank order.
    let block = 5;
    let send: Vec<f32> = (0..size * block).map(|i| ((rank + 1) * (i / block + 1)) as f32).collect();
    let mut mine = vec![0f32; block];
    world.reduce_scatter_sum(&send, &mut mine);
    assert!(mine.iter().all(|&x| x as f64 == ranks_sum * (rank + 1) as f64), "reduce-scatter {mine:?} on rank {rank}");
    let mut all = vec![0f32; size * block];
    world.all_gather(&mine, &mut all);
    for (i, x) in all.iter().enumerate() {
        assert_eq!(*x as f64, ranks_sum * (i / block + 1) as f64, "all-gather element {i} on rank {rank}");
    }
    // Gather to one rank: rank 0 receives every rank's block in rank order, the others nothing.
    match world.gather_to(&mine, 0) {
        Some(gathered) => assert!(rank == 0 && gathered == all, "gather on rank {rank}"),
        None => assert_ne!(rank, 0, "rank 0 got nothing"),
    }
    world.barrier();
    println!(
        "mpi_world: rank {rank} of {size}: all-reduce, reduce-scatter, all-gather, gather ok ({})",
        world.describe()
    );
    if std::env::var("RETRO_TEST_NCCL").is_ok_and(|v| v == "1") {
        nccl_all_reduce(&world);
    }
}

/// RETRO_TEST_NCCL=1 (the GPU machine's `mpirun -np 1`): the same sum over NCCL on GPU `rank` (NCCL
/// refuses two ranks on one GPU).
#[cfg(not(no_cuda_kernels))]
fn nccl_all_reduce(world: &World) {
    let (rank, size) = (world.rank(), world.size());
    let gpu = retro::backend::cuda::Gpu::new(rank).expect("one GPU per rank");
    let comm = retro::dist::nccl::NcclComm::new(world, gpu.clone()).expect("NCCL communicator");
    let host: Vec<f32> = (0..4099).map(|i| ((rank + 1) * (i % 5 + 1)) as f32).collect();
    let buf = gpu.upload(&host).unwrap();
    comm.all_reduce_sum_f32(&buf).expect("NCCL all-reduce");
    let got = gpu.download(&buf).unwrap();
    let ranks_sum = (size * (size + 1) / 2) as f32;
    for (i, x) in got.iter().enumerate() {
        assert_eq!(*x, ranks_sum * (i % 5 + 1) as f32, "NCCL element {i} on rank {rank}");
    }
    println!("mpi_world: rank {rank} of {size}: NCCL all-reduce ok on {}", gpu.name());
}

#[cfg(no_cuda_kernels)]
fn nccl_all_reduce(_world: &World) {
    panic!("RETRO_TEST_NCCL=1 but this build has no CUDA kernels");
}
