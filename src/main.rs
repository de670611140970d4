//! The `gated` command line: parse, then call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gated", version, about = "Gate access-control daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    ///
    /// Example: gated run --config /etc/gated/gated.toml
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file and print what it configures, or its first error with the line and key.
    ///
    /// Example: gated check-config config/gated.example.toml
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Play a short scripted scene against simulated hardware started in-process.
    ///
    /// Without --mqtt the gate runs offline and the events wait in its outbox; with it, they
    /// are synced to that broker and the demo exits 0 once every one is acknowledged. It
    /// publishes as site `demo`, gate `demo-{pid}`, and marks every message `"demo": true`, so
    /// it never passes for a real gate.
    ///
    /// Example: gated demo --mqtt 127.0.0.1:1883
    Demo {
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: Option<String>,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: never escape codes in the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let result = match cli.cmd {
        Cmd::CheckConfig { file } => match gated::config::Config::load(&file) {
            Ok(c) => {
                println!("{}", gated::config::describe(&c));
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Run { config } => {
            init_logging("info");
            let cfg = match gated::config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(gated::gate::run(cfg)))
        }
        Cmd::Demo { mqtt } => {
            init_logging("warn");
            runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(gated::demo::run(mqtt)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
