//! The parallel runtime: a [`World`] of processes (MPI under `mpirun`, or a single process).
//! Data / tensor parallelism and NCCL build on it in [dist].

mod world;

pub use world::World;
