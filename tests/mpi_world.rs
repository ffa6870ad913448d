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
    comm.all_reduce_sum(&buf).expect("NCCL all-reduce");
    let got = gpu.download(&buf).unwrap();
    let ranks_sum = (size * (size + 1) / 2) as f32;
    for (i, x) in got.iter().enumerate() {
        assert_eq!(*x, ranks_sum * (i % 5 + 1) as f32, "NCCL element {i} on rank {rank}");
    }
    // The same sum on the communicator's own stream, ordered by events as the overlapped reduction does.
    let twice = gpu.upload(&host).unwrap();
    let ready = gpu.compute.record_event(None).unwrap();
    comm.comm_stream().wait(&ready).unwrap();
    comm.all_reduce_sum_on(&twice, comm.comm_stream()).expect("NCCL all-reduce on the communication stream");
    gpu.compute.wait(&comm.comm_stream().record_event(None).unwrap()).unwrap();
    assert_eq!(gpu.download(&twice).unwrap(), got, "the communication stream's sum");
    // f64 (the gradient norm's sum of squares)
    let norm = gpu.upload(&[0.5f64 * (rank + 1) as f64]).unwrap();
    comm.all_reduce_sum(&norm).expect("NCCL f64 all-reduce");
    assert_eq!(gpu.download(&norm).unwrap(), vec![0.5 * ranks_sum as f64]);
    // Reduce-scatter and all-gather in place, as the distributed optimizer calls them: block `rank` of
    // `whole` receives the sum of every rank's block `rank`, then every block is gathered back.
    let block = 1024;
    let whole: Vec<f32> = (0..block * size).map(|i| (i % 7) as f32 + rank as f32).collect();
    let buf = gpu.upload(&whole).unwrap();
    let mine = buf.view(rank * block, block).unwrap();
    comm.reduce_scatter_sum(&buf, &mine).expect("NCCL reduce-scatter");
    let offset: f32 = (0..size).map(|r| r as f32).sum();
    let summed: Vec<f32> = (0..block).map(|i| size as f32 * ((rank * block + i) % 7) as f32 + offset).collect();
    assert_eq!(gpu.download(&mine).unwrap(), summed, "reduce-scatter on rank {rank}");
    comm.all_gather(&mine, &buf).expect("NCCL all-gather");
    let all: Vec<f32> = (0..block * size).map(|i| size as f32 * (i % 7) as f32 + offset).collect();
    assert_eq!(gpu.download(&buf).unwrap(), all, "all-gather on rank {rank}");
    // Each rank holds only its own block (the rest zero), so the gather must move every other block.
    let bf = |i: usize| half::bf16::from_f32((i % 251) as f32 + 0.5);
    let mine: Vec<half::bf16> =
        (0..block * size).map(|i| if i / block == rank { bf(i) } else { half::bf16::from_f32(0.0) }).collect();
    let bbuf = gpu.upload(&mine).unwrap();
    comm.all_gather(&bbuf.view(rank * block, block).unwrap(), &bbuf).expect("NCCL bf16 all-gather");
    let all: Vec<half::bf16> = (0..block * size).map(bf).collect();
    assert_eq!(gpu.download(&bbuf).unwrap(), all, "bf16 all-gather on rank {rank}");
    println!("mpi_world: rank {rank} of {size}: NCCL all-reduce, reduce-scatter and all-gather ok on {}", gpu.name());
}

#[cfg(no_cuda_kernels)]
fn nccl_all_reduce(_world: &World) {
    panic!("RETRO_TEST_NCCL=1 but this build has no CUDA kernels");
}
