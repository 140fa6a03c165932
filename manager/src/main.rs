//! `ferry`: the Ferry manager's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_manager::cli;
use ferry_manager::config::{self, InitOptions, ManagerConfig};

/// Ferry moves running Linux servers onto other servers through mailboxes on a store.
#[derive(Parser)]
#[command(version, about, help_expected = true)]
struct Cli {
    /// Manager config file (default: $FERRY_DATA/ferry.yaml, or ~/.ferry/ferry.yaml).
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create manager keys, TLS material, credentials and a config with an embedded store.
    Init {
        /// Data folder (default: $FERRY_DATA, or ~/.ferry).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address the embedded store will listen on.
        #[arg(long, default_value = config::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Extra DNS name or IP address for the store's certificate (repeatable).
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
    },
    /// Run the manager daemon and the embedded store.
    Serve,
    /// Write an agent config for this manager.
    AgentConfig {
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// State folder the agent will use.
        #[arg(long, default_value = "/var/lib/ferry-agent")]
        state_dir: PathBuf,
        /// Heartbeat interval in seconds (default: the manager config's).
        #[arg(long)]
        heartbeat: Option<f64>,
        /// Poll interval in seconds (default: the manager config's).
        #[arg(long)]
        poll: Option<f64>,
    },
    /// List agents with their health.
    Agents {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Commands about one agent.
    Agent {
        #[command(subcommand)]
        cmd: AgentCmd,
    },
    /// Ping an agent through its mailbox and print round-trip times.
    Ping {
        /// Agent id, or a unique prefix of it.
        id: String,
        /// Number of pings.
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// Seconds to wait for each answer.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Show one agent's identity, health and survey.
    Show {
        /// Agent id, or a unique prefix of it.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| config::config_path(&config::default_data_dir()));
    let load = || ManagerConfig::load(&config_path);
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Cmd::Init {
            data,
            listen,
            tls_names,
        } => cli::init(&InitOptions {
            data: data.unwrap_or_else(config::default_data_dir),
            listen,
            tls_names,
            store: None,
        }),
        Cmd::Serve => {
            let config = load()?;
            rt.block_on(ferry_manager::daemon::serve(config, async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("installing SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }))
        }
        Cmd::AgentConfig {
            out,
            state_dir,
            heartbeat,
            poll,
        } => {
            let mut config = load()?;
            config.agent_heartbeat_secs = heartbeat.unwrap_or(config.agent_heartbeat_secs);
            config.agent_poll_secs = poll.unwrap_or(config.agent_poll_secs);
            cli::agent_config(&config, out.as_deref(), state_dir)
        }
        Cmd::Agents { json } => rt.block_on(cli::agents(&load()?, json)),
        Cmd::Agent {
            cmd: AgentCmd::Show { id, json },
        } => rt.block_on(cli::agent_show(&load()?, &id, json)),
        Cmd::Ping { id, count, timeout } => rt.block_on(cli::ping(
            &load()?,
            &id,
            count,
            Duration::from_secs_f64(timeout),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
