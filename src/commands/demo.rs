//! `retro demo`: the whole product on a CPU in minutes. Preprocess the vendored corpus (by default the
//! King James New Testament, one document per chapter, Luke 12-24 held out for validation: their
//! parallels in Matthew and Mark are in the retrieval database, so retrieval has real neighbours),
//! train a small RETRO and the GPT baseline with identical settings, data and budget, evaluate both on
//! the validation split (RETRO with and without its retrieved neighbours), and generate a continuation
//! of a prompt showing what was retrieved.

use crate::data::corpus;
use crate::preprocess::{self, project::ProjectConfig};
use crate::train::{checkpoint, loader::ProjectData, schedule::LrSchedule, trainer};
use crate::{Context, Result};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct DemoOptions {
    pub dir: PathBuf,
    pub corpus: PathBuf,
    pub since_year: Option<i64>,
    pub seq_length: usize,
    pub steps: u64,
    pub global_batch: usize,
    pub micro_batch: usize,
    pub lr: f64,
    pub prompt: String,
}

/// Decompress `src` into `dst`, keeping the records whose `year` is at least `since` when given.
fn subset(src: &Path, dst: &Path, since: Option<i64>) -> Result<usize> {
    let file = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?);
    let mut n = 0;
    for line in reader.lines() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if since.is_none_or(|y| v["year"].as_i64().is_some_and(|year| year >= y)) {
            writeln!(out, "{line}")?;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}

pub fn run(o: &DemoOptions) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let input = o.dir.join("corpus.jsonl");
    let docs = subset(&o.corpus, &input, o.since_year)?;
    eprintln!("demo: {docs} documents from {} -> {}", o.corpus.display(), input.display());
    let project = o.dir.join("project");
    let config = ProjectConfig {
        retro_gpt_seq_length: o.seq_length,
        retro_gpt_global_batch_size: o.global_batch,
        retro_gpt_eval_interval: (o.steps / 4).max(1) as usize,
        retro_gpt_eval_iters: 8,
        retro_gpt_split: "95,5,0".into(),
        retro_query_num_neighbors_query: 100,
        retro_query_num_neighbors_save: 5,
        ..ProjectConfig::new(&input, "text")
    };
    let t = Instant::now();
    let summary = preprocess::run(
        &preprocess::Options {
            input: input.clone(),
            project: project.clone(),
            config,
            corpus: corpus::Options::default(),
            embedder_dir: None,
            stage: None,
            validate: 0.0,
            progress: true,
            memory_limit: None,
        },
        &crate::dist::World::single(),
    )?;
    eprintln!("demo: preprocessed in {:.0} s: {}", t.elapsed().as_secs_f64(), summary);
    let mut results = Vec::new();
    for (name, gpt) in [("retro", false), ("gpt", true)] {
        let run = o.dir.join(format!("run-{name}"));
        let _ = std::fs::remove_dir_all(&run);
        let mut model = crate::model::RetroConfig::preset("tiny")?;
        model.gpt_baseline = gpt;
        // No dropout: one epoch of a small corpus; tuning runs found it only slowed both models down.
        model.dropout = 0.0;
        let args = trainer::TrainArgs {
            project: project.clone(),
            save: run.clone(),
            load: None,
            init_from: None,
            model,
            micro_batch: o.micro_batch,
            global_batch: o.global_batch,
            train_iters: o.steps,
            schedule: LrSchedule {
                lr: o.lr,
                min_lr: o.lr / 10.0,
                warmup_samples: (o.steps as usize * o.global_batch / 20) as u64,
                decay_samples: o.steps * o.global_batch as u64,
            },
            weight_decay: 0.1,
            clip: 1.0,
            seed: 1234,
            save_interval: 0,
            eval_interval: (o.steps / 4).max(1),
            eval_iters: 8,
            keep: 1,
            progress: true,
            tensorboard_dir: Some(o.dir.join(format!("tensorboard-{name}"))),
            device: crate::tensor::Device::Cpu,
            exit: Default::default(),
        };
        let t = Instant::now();
        let s = trainer::train(&args, &crate::train::data_parallel::DataParallel::single(), &Default::default())?;
        eprintln!(
            "demo: trained {name} for {} steps in {:.0} s (final train loss {:.3})",
            s.iterations,
            t.elapsed().as_secs_f64(),
            s.final_loss
        );
        let (_, m) = checkpoint::load(&run)?;
        let data = ProjectData::open(&project, m.config.num_neighbors, m.config.num_retrieved_chunks, !gpt)?;
        let valid =
            data.valid.as_ref().ok_or_else(|| crate::Error::msg("the demo project has no validation samples"))?;
        let with = trainer::evaluate(&m, &m.params.tensors, valid, o.micro_batch, valid.len() / o.micro_batch, true)?;
        let without = if gpt {
            None
        } else {
            Some(trainer::evaluate(&m, &m.params.tensors, valid, o.micro_batch, valid.len() / o.micro_batch, false)?)
        };
        results.push((name, with, without, valid.len(), m));
    }
    let mut series = Vec::new();
    for name in ["retro", "gpt"] {
        series.extend(crate::train::plot::metrics_series(&o.dir.join(format!("run-{name}/metrics.jsonl")), name)?);
    }
    let plot = o.dir.join("loss.png");
    crate::train::plot::losses(&plot, "RETRO vs GPT baseline (same data and budget)", &series)?;
    eprintln!("demo: loss curves in {}", plot.display());
    println!(
        "\nvalidation ({} samples of {} tokens, {} training steps of {} samples each):",
        results[0].3, o.seq_length, o.steps, o.global_batch
    );
    println!("| model | valid loss | valid perplexity | perplexity, neighbours masked |");
    println!("| --- | --- | --- | --- |");
    for (name, with, without, _, _) in &results {
        let masked = without.map_or("-".to_string(), |w| format!("{:.2}", w.exp()));
        println!("| {name} | {with:.4} | {:.2} | {masked} |", with.exp());
    }
    if let (Some(masked), (_, gpt, ..)) = (results[0].2, &results[1]) {
        let retro = results[0].1;
        let percent = |loss_a: f64, loss_b: f64| ((loss_a - loss_b).exp() - 1.0) * 100.0;
        let retrieval_gain = percent(masked, retro);
        println!(
            "\nretrieval: masking RETRO's neighbours changes its validation perplexity by {retrieval_gain:+.1}%; RETRO vs GPT: {:+.1}%.",
            percent(retro, *gpt)
        );
        if retrieval_gain < 2.0 {
            println!(
                "At this budget ({} tokens per model) RETRO has not learned to read its neighbours; docs/demo.md shows \
                 why (it does not even with exact copies of the validation text in the database) and what it takes.",
                o.steps as usize * o.global_batch * o.seq_length
            );
        }
    }
    let retro_model = &results[0].4;
    let retriever = crate::retrieval::live::LiveRetriever::open(
        &project,
        retro_model.config.num_neighbors,
        retro_model.config.num_retrieved_chunks,
    )?;
    let sampling = crate::commands::generate::Sampling { temperature: 0.8, top_k: 40, top_p: 0.95 };
    let out = crate::commands::generate::generate(
        retro_model,
        crate::tensor::Device::Cpu,
        Some(&retriever),
        &o.prompt,
        96,
        &sampling,
        7,
    )?;
    println!("\nprompt + RETRO continuation:\n{}{}\n", o.prompt, out.text);
    for r in &out.retrieved {
        println!("retrieved for chunk {} ({:?}):", r.chunk, r.chunk_text.chars().take(80).collect::<String>());
        for (id, text) in &r.neighbors {
            println!("    chunk {id}: {:?}", text.chars().take(160).collect::<String>());
        }
    }
    println!(
        "\ndemo: done in {:.0} s; project, checkpoints and metrics.jsonl are in {}",
        start.elapsed().as_secs_f64(),
        o.dir.display()
    );
    Ok(())
}
