//! gated's benchmark harness. Every figure is measured here, in one run, on this machine, next
//! to the raw limit it is compared with; nothing is estimated. It prints a table and writes
//! `bench-results.json` (a flat object: figure name → number) and `BENCHMARKS.md`.
//!
//!     bench/run                      # builds in release, then runs everything (< 15 min)
//!     gated-bench sigkill --rounds 200

mod gate;
mod infra;
mod report;
mod seed;
mod sigkill;
mod store;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "gated's benchmarks: each figure next to the raw limit, from one run")]
struct Cli {
    /// Where bench-results.json and BENCHMARKS.md are written.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// The gated binary to run (default: next to this one, as `cargo build --release` puts it).
    #[arg(long)]
    gated: Option<PathBuf>,
    /// Where the databases and logs go (default: a temporary directory, removed at the end).
    #[arg(long)]
    work: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything (the default).
    All {
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
    /// One phase alone, for profiling: commits, lookups, apply, flush, swipes, idle, startup,
    /// loaded. Prints its figures, writes nothing.
    Phase { name: String },
    /// Only the crash test: SIGKILL at random moments during traffic, then a check that every
    /// pass whose relay opened reached the broker. Writes nothing but the table.
    Sigkill {
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
}

/// The figures of one run, in the order measured.
#[derive(Default)]
pub struct Results {
    figures: Vec<(String, f64)>,
}

impl Results {
    pub fn put(&mut self, key: &str, value: f64) {
        eprintln!("  {key} = {value}");
        self.figures.push((key.to_string(), value));
    }
    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let gated = match cli.gated {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the harness has no directory")?
            .join("gated"),
    };
    if !gated.is_file() {
        anyhow::bail!(
            "{} not found: build it with `cargo build --release` (bench/run does)",
            gated.display()
        );
    }
    infra::mosquitto_bin()?;
    let tmp = tempfile::tempdir()?;
    let dir = cli.work.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let ctx = gate::Ctx {
        gated,
        dir,
        admin: gated_contract::envelope::AdminKey::generate("bench").map_err(anyhow::Error::msg)?,
    };
    let mut r = Results::default();
    let start = Instant::now();
    match cli.cmd.unwrap_or(Cmd::All { rounds: 200 }) {
        Cmd::Sigkill { rounds } => {
            phase("crash test", start);
            sigkill::run(&ctx, rounds, &mut r).await?;
            report::print(&r);
        }
        Cmd::Phase { name } => {
            phase(&name, start);
            match name.as_str() {
                "commits" => store::commits(&ctx.dir, &mut r).await?,
                "lookups" => drop(store::lookups(&ctx.dir, &mut r)?),
                "apply" => store::apply(&ctx.dir, &mut r).await?,
                "flush" => gate::flush(&ctx, &mut r).await?,
                "swipes" => gate::swipe_to_relay(&ctx, &mut r).await?,
                "idle" => gate::rss_idle(&ctx, &mut r).await?,
                "startup" | "loaded" => {
                    let lists = store::lookups(&ctx.dir, &mut r)?;
                    let loaded = gate::loaded_db(&ctx, &lists)?;
                    if name == "startup" {
                        gate::startup(&ctx, &loaded, &mut r).await?;
                    } else {
                        gate::rss_loaded(&ctx, &loaded, &mut r).await?;
                    }
                }
                other => anyhow::bail!("no phase named `{other}`"),
            }
            report::print(&r);
        }
        Cmd::All { rounds } => {
            phase("durable commits", start);
            store::commits(&ctx.dir, &mut r).await?;
            phase("decisions with 1k and 250k credentials", start);
            let lists = store::lookups(&ctx.dir, &mut r)?;
            phase("list updates with decisions going on", start);
            store::apply(&ctx.dir, &mut r).await?;
            phase("backlog flush against a bare publisher", start);
            gate::flush(&ctx, &mut r).await?;
            phase("swipe to relay under load", start);
            gate::swipe_to_relay(&ctx, &mut r).await?;
            phase("memory when idle", start);
            gate::rss_idle(&ctx, &mut r).await?;
            phase("the loaded database", start);
            let loaded = gate::loaded_db(&ctx, &lists)?;
            phase("startup with a 1M backlog", start);
            gate::startup(&ctx, &loaded, &mut r).await?;
            phase("memory when loaded", start);
            gate::rss_loaded(&ctx, &loaded, &mut r).await?;
            phase("crash test", start);
            sigkill::run(&ctx, rounds, &mut r).await?;
            let took = start.elapsed().as_secs_f64();
            r.put("bench_wall_s", took.round());
            report::print(&r);
            report::write(&r, &cli.out)?;
        }
    }
    Ok(())
}

/// Announces a phase, after `settle`.
fn phase(name: &str, start: Instant) {
    settle();
    eprintln!("[{:>5.0} s] {name}", start.elapsed().as_secs_f64());
}

/// Flushes what earlier work (the build, a phase's seeding) left for the disk to write, so
/// that the fsyncs measured next wait for their own writes only.
pub fn settle() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("warning: `sync` failed ({e}); the disk may still be busy with earlier writes");
    }
}
