//! The stable fuzz runner: replays every seed of the corpus, then mutates
//! the corpus for a bounded time per target from a seeded random generator
//! (the seed is printed; the same seed and iteration count replay the same
//! inputs). The first panic stops the run: the input is written to a file,
//! named in the message, and the exit status is 1.
//!
//!   strata-fuzz [--seconds 25] [--seed N] [--iterations N] [TARGET...]
//!   strata-fuzz --replay TARGET FILE...     (an input found by AFL++, say)
//!   strata-fuzz --write-corpus              (writes the seeds to fuzz/corpus/)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use strata_fuzz::{TARGETS, Target};

struct Args {
    seconds: f64,
    seed: u64,
    iterations: u64,
    targets: Vec<&'static Target>,
    replay: Option<(&'static Target, Vec<PathBuf>)>,
}

fn target(name: &str) -> anyhow::Result<&'static Target> {
    strata_fuzz::target(name).with_context(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!("unknown target '{name}' (known: {})", names.join(", "))
    })
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 25.0,
        seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        iterations: 1_000_000,
        targets: Vec::new(),
        replay: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => args.seconds = value("--seconds")?.parse()?,
            "--seed" => args.seed = value("--seed")?.parse()?,
            "--iterations" => args.iterations = value("--iterations")?.parse()?,
            "--replay" => {
                let t = target(&value("--replay")?)?;
                let files: Vec<PathBuf> = it.by_ref().map(PathBuf::from).collect();
                if files.is_empty() {
                    bail!("--replay TARGET FILE...");
                }
                args.replay = Some((t, files));
            }
            "--write-corpus" => {
                let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
                let n = strata_fuzz::seeds::write(&root)?;
                println!("wrote {n} seeds to {}", root.display());
                strata_fuzz::env::get().remove();
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!("strata-fuzz [--seconds 25] [--seed N] [--iterations N] [TARGET...]");
                println!("strata-fuzz --replay TARGET FILE...");
                println!("strata-fuzz --write-corpus");
                std::process::exit(0);
            }
            name => args.targets.push(target(name)?),
        }
    }
    if args.targets.is_empty() {
        args.targets = TARGETS.iter().collect();
    }
    Ok(args)
}

/// Runs one input; on a panic writes it out and exits 1.
fn execute(target: &Target, data: &[u8], what: &str) -> bool {
    let data = &data[..data.len().min(target.max_len)];
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(data))) {
        Ok(accepted) => accepted,
        Err(_) => {
            let dir = std::env::temp_dir().join("strata-fuzz-crashes");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{}-{}", target.name, what.replace([' ', '/'], "_")));
            match std::fs::write(&file, data) {
                Ok(()) => eprintln!("CRASH in target {} ({what}); input written to {}", target.name, file.display()),
                Err(e) => eprintln!("CRASH in target {} ({what}); the input could not be written: {e}", target.name),
            }
            eprintln!(
                "replay it: cargo run -p strata-fuzz --bin strata-fuzz -- --replay {} {}",
                target.name,
                file.display()
            );
            strata_fuzz::env::get().remove();
            std::process::exit(1);
        }
    }
}

fn corpus(target: &Target) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = strata_fuzz::corpus_dir(target.name);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("no corpus at {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        out.push((name, std::fs::read(&path).with_context(|| path.display().to_string())?));
    }
    out.sort();
    if out.is_empty() {
        bail!("the corpus at {} is empty", dir.display());
    }
    Ok(out)
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the name, mixed in: each target has a stream of its own,
    // whatever the others ran.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    seed ^ h
}

fn fuzz(args: &Args) -> anyhow::Result<()> {
    println!(
        "strata-fuzz: seed {} (replay with --seed {}), {} s over {} targets",
        args.seed,
        args.seed,
        args.seconds,
        args.targets.len()
    );
    let per_target = Duration::from_secs_f64(args.seconds / args.targets.len() as f64);
    let mut total = 0u64;
    for target in &args.targets {
        let seeds = corpus(target)?;
        let started = Instant::now();
        let mut replayed = 0;
        for (name, data) in &seeds {
            replayed += u32::from(execute(target, data, &format!("seed {name}")));
        }
        let mut rng = StdRng::seed_from_u64(name_seed(args.seed, target.name));
        let mut iterations = 0u64;
        let mut accepted = 0u64;
        let until = started + per_target;
        while iterations < args.iterations && Instant::now() < until {
            let (_, base) = seeds.choose(&mut rng).context("corpus")?;
            let (_, other) = seeds.choose(&mut rng).context("corpus")?;
            let mut input = base.clone();
            strata_fuzz::mutate::mutate(&mut rng, &mut input, other, target.max_len);
            accepted += u64::from(execute(target, &input, &format!("seed {} iteration {iterations}", args.seed)));
            iterations += 1;
        }
        total += iterations;
        println!(
            "  {:<10} corpus {replayed}/{} accepted; {iterations} mutated inputs ({accepted} accepted) in {:.1} s",
            target.name,
            seeds.len(),
            started.elapsed().as_secs_f64()
        );
    }
    println!("strata-fuzz: {total} mutated inputs, 0 crashes (seed {})", args.seed);
    Ok(())
}

fn replay(target: &Target, files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files {
        let data = std::fs::read(file).with_context(|| file.display().to_string())?;
        let accepted = execute(target, &data, &display(file));
        println!("{}: {}", file.display(), if accepted { "accepted" } else { "rejected" });
    }
    Ok(())
}

fn display(path: &Path) -> String {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("input").to_owned()
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let result = match &args.replay {
        Some((target, files)) => replay(target, files),
        None => fuzz(&args),
    };
    strata_fuzz::env::get().remove();
    result
}
