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

/// The config file, named the same way for every command: `--config FILE`. A bare `FILE`
/// (the older form of `check-config`) is accepted too.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ConfigFile {
    /// The config file.
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The same, without `--config` (kept for older scripts).
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

impl ConfigFile {
    fn path(self) -> PathBuf {
        self.config
            .or(self.file)
            .expect("clap requires one of the two")
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    ///
    /// Example: gated run --config /etc/gated/gated.toml
    Run {
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Check a config as `run` would before it starts: print what it configures, or its first
    /// error (for a file error, the line and key). Exits 2 on an error.
    ///
    /// Besides the file itself, this checks what `run` refuses on this machine: GPIO devices
    /// off a Raspberry Pi, the TLS files and MQTT login the config names, and a store that is
    /// from a newer gated or was made for another gate. `--skip-host-checks` leaves those out,
    /// to check a config meant for another machine.
    ///
    /// Example: gated check-config --config /etc/gated/gated.toml
    CheckConfig {
        #[command(flatten)]
        file: ConfigFile,
        /// Check only the file, not this machine (for a config meant for another one).
        #[arg(long)]
        skip_host_checks: bool,
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
        Cmd::CheckConfig {
            file,
            skip_host_checks,
        } => {
            let checked = gated::config::Config::load(&file.path())
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    if !skip_host_checks {
                        gated::gate::check_host(&c)?;
                    }
                    Ok(c)
                });
            return match checked {
                Ok(c) => {
                    let mut printed =
                        gated::console::line(format_args!("{}", gated::config::describe(&c)));
                    if skip_host_checks && printed.is_ok() {
                        printed = gated::console::line(format_args!(
                            "  not checked (--skip-host-checks): GPIO, the files the config \
                             names, the store"
                        ));
                    }
                    match printed {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("error: cannot write to stdout: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: {}", gated::console::error_line(&e));
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Run { file } => {
            init_logging("info");
            let cfg = match gated::config::Config::load(&file.path()) {
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
            eprintln!("error: {}", gated::console::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
