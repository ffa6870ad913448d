//! `retro bench allreduce`: the data-parallel gradient reduction, under `mpirun -np N`.

use super::model_config;

#[derive(clap::Args)]
pub struct Args {
    /// Whose gradients to reduce: a preset (tiny, 857m, 2b, 4b) or a JSON config file.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Elements per all-reduce, as `retro train --ddp-bucket-size`.
    #[arg(long, default_value_t = retro::train::data_parallel::DEFAULT_BUCKET_SIZE)]
    pub bucket_size: usize,
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
}

pub fn run(a: Args) -> retro::Result<()> {
    let world = std::rc::Rc::new(retro::dist::World::init()?);
    let line = retro::bench::allreduce::run(world.clone(), &model_config(&a.config)?, a.bucket_size, a.reps)?;
    if world.rank() == 0 {
        println!("{line}");
    }
    Ok(())
}
