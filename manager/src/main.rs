//! `ferry`: the Ferry manager's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_manager::bootserver::BootConfig;
use ferry_manager::config::{self, InitOptions, ManagerConfig};
use ferry_manager::jobs::cli::{MigrateOptions, WatchOptions};
use ferry_manager::providers::{self, PowerAction};
use ferry_manager::{bootramdisk, cli, deploy, images};

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
        /// The store URL as agents reach it, if not the manager's
        /// (e.g. s3+https://10.0.2.2:7443/ferry for VMs on QEMU's user network).
        #[arg(long)]
        agent_store_url: Option<String>,
        /// Heartbeat interval written into agent configs, in seconds.
        #[arg(long)]
        agent_heartbeat: Option<f64>,
        /// Poll interval written into agent configs, in seconds.
        #[arg(long)]
        agent_poll: Option<f64>,
        /// Run an HTTP boot server (iPXE) on this address.
        #[arg(long, requires_all = ["boot_dir", "boot_url"])]
        boot_listen: Option<SocketAddr>,
        /// Folder with vmlinuz and initrd.zst for the boot server (`cargo xtask ramdisk` output).
        #[arg(long)]
        boot_dir: Option<PathBuf>,
        /// Base URL machines fetch boot files from, e.g. http://10.0.2.2:8081/boot/.
        #[arg(long)]
        boot_url: Option<String>,
        /// Kernel parameters for every machine the boot server boots.
        #[arg(long, default_value = "")]
        boot_append: String,
    },
    /// Write a PXE/TFTP tree (and optionally an ISO) whose ramdisk carries this
    /// manager's agent config, for an existing DHCP/TFTP setup or for CD/USB boots.
    BootFiles {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Kernel image (default: vmlinuz in the boot server's folder).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Configless ramdisk (default: initrd.zst in the boot server's folder).
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Extra kernel parameters.
        #[arg(long, default_value = "")]
        append: String,
        /// Also write ferry.iso (hybrid BIOS + UEFI; needs grub-mkrescue).
        #[arg(long)]
        iso: bool,
    },
    /// Set the kernel parameters the boot server gives one machine.
    BootHost {
        /// The machine's MAC address.
        mac: String,
        /// Extra kernel parameters, e.g. "ferry.ip=192.0.2.10/24,192.0.2.1".
        #[arg(long, default_value = "")]
        append: String,
    },
    /// Have an agent survey its machine again, and print the survey.
    Survey {
        /// Agent id, or a unique prefix of it.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// Boot a server into the Ferry ramdisk made for it by its installed agent (its own
    /// kernel and drivers, its network, the same agent id), and wait until the
    /// ramdisk's agent reports.
    BootRamdisk {
        /// Agent id, or a unique prefix of it.
        id: String,
        /// How: auto (the safest that works here), grub-once, kexec or init.
        #[arg(long, default_value = "auto")]
        method: String,
        /// Only make the ramdisk and say which method would be used; change nothing.
        #[arg(long)]
        check: bool,
        /// The ramdisk reboots back into the server's system when its agent has not
        /// reached the store this many seconds after boot.
        #[arg(long, default_value_t = 600)]
        fallback: u32,
        /// Seconds to wait for the ramdisk agent after the server answered.
        #[arg(long, default_value_t = 600.0)]
        wait: f64,
        /// Folder with initrd-base.zst (default: the boot server's folder).
        #[arg(long)]
        boot_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Power a ramdisk agent's machine off (an installed agent just stops).
    Poweroff {
        /// Agent id, or a unique prefix of it.
        id: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Reboot a ramdisk agent's machine.
    Reboot {
        /// Agent id, or a unique prefix of it.
        id: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
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
    /// Have an agent capture its server into an image in the library (one LVM or
    /// btrfs snapshot per filesystem where it can take one).
    Capture {
        /// Agent id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        opts: images::CaptureOptions,
    },
    /// Have an agent restore one filesystem of an image into a directory on its machine.
    Restore {
        /// Agent id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        opts: images::RestoreOptions,
    },
    /// Deploy an image onto the machine of a ramdisk agent: lay out its disks by the
    /// default plan for its survey (or --plan), restore, configure, make it boot,
    /// reboot into it. The plan is checked before anything is sent. With --detach, or
    /// a target that runs no ramdisk yet (an installed agent, brought into its ramdisk
    /// first; mac=, uuid=, new=FILE), it runs as a job.
    Deploy {
        /// Image name.
        image: String,
        #[command(flatten)]
        opts: deploy::DeployOptions,
    },
    /// Move a server: capture it through its agent into the library, and deploy that
    /// capture onto the target once Ferry's ramdisk runs there (by PXE, ISO or a
    /// provider); the target then reboots into the migrated system. Runs as a job
    /// that any manager replica carries on; this command follows it with progress.
    Migrate {
        /// The source's agent (id or unique prefix).
        source: String,
        #[command(flatten)]
        opts: MigrateOptions,
    },
    /// List the jobs with their steps.
    Jobs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Commands about one job.
    Job {
        #[command(subcommand)]
        cmd: JobCmd,
    },
    /// List the machines the providers made, on or off.
    Machines {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Commands about one machine a provider made.
    Machine {
        #[command(subcommand)]
        cmd: MachineCmd,
    },
    /// List the images in the library.
    Images {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Commands about one image.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
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
enum ImageCmd {
    /// Show an image's latest (or one) capture and the list of its captures.
    Show {
        /// Image name.
        name: String,
        /// A capture id (default: the latest).
        #[arg(long)]
        capture: Option<String>,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image, or one of its captures, and free the data only it used.
    Rm {
        /// Image name.
        name: String,
        /// Remove only this capture.
        #[arg(long)]
        capture: Option<String>,
    },
    /// Check an image's structure and, by default, read back every byte of its data.
    Check {
        /// Image name.
        name: String,
        /// Check the structure only, without reading the data.
        #[arg(long)]
        quick: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MachineCmd {
    /// Switch a machine on (from its disks) or off (at once), or reset it.
    Power {
        /// The machine's name (a migrate job makes it under the job's id).
        name: String,
        /// What to do.
        action: PowerAction,
        /// The provider holding it (default: the one that has it).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Switch a machine off and remove it with its disks.
    Delete {
        /// The machine's name.
        name: String,
        /// The provider holding it (default: the one that has it).
        #[arg(long)]
        provider: Option<String>,
    },
}

#[derive(Subcommand)]
enum JobCmd {
    /// Show a job: its spec, each step with its times and results, problems.
    Show {
        /// Job id, or a unique prefix of it.
        id: String,
        /// Print JSON (spec, steps, events).
        #[arg(long)]
        json: bool,
    },
    /// Follow a job with progress bars until it ends, carrying it on meanwhile.
    Watch {
        /// Job id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        opts: WatchOptions,
    },
    /// Cancel a job: no further command is sent (a step with an agent runs to its end).
    Cancel {
        /// Job id, or a unique prefix of it.
        id: String,
    },
    /// Run a failed job's failed step again, then follow the job.
    Retry {
        /// Job id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        opts: WatchOptions,
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
            agent_store_url,
            agent_heartbeat,
            agent_poll,
            boot_listen,
            boot_dir,
            boot_url,
            boot_append,
        } => cli::init(&InitOptions {
            data: data.unwrap_or_else(config::default_data_dir),
            listen,
            tls_names,
            store: None,
            agent_store_url,
            boot: match (boot_listen, boot_dir, boot_url) {
                (Some(listen), Some(dir), Some(url)) => Some(BootConfig {
                    listen,
                    dir: std::path::absolute(&dir)?,
                    url: if url.ends_with('/') {
                        url
                    } else {
                        format!("{url}/")
                    },
                    append: boot_append,
                }),
                _ => None,
            },
            agent_heartbeat_secs: agent_heartbeat,
            agent_poll_secs: agent_poll,
        }),
        Cmd::BootFiles {
            out,
            kernel,
            initrd,
            append,
            iso,
        } => cli::boot_files(&load()?, &out, kernel, initrd, &append, iso),
        Cmd::BootHost { mac, append } => rt.block_on(cli::boot_host(&load()?, &mac, &append)),
        Cmd::BootRamdisk {
            id,
            method,
            check,
            fallback,
            wait,
            boot_dir,
            json,
        } => {
            let o = bootramdisk::Options {
                method: method.parse().map_err(anyhow::Error::msg)?,
                check,
                fallback_secs: fallback,
                answer: Duration::from_secs(600),
                wait: Duration::from_secs_f64(wait),
                dir: boot_dir,
                json,
            };
            let outcome = rt.block_on(bootramdisk::boot_ramdisk(&load()?, &id, &o))?;
            bootramdisk::print(&outcome, json)
        }
        Cmd::Survey { id, json, timeout } => rt.block_on(cli::survey(
            &load()?,
            &id,
            json,
            Duration::from_secs_f64(timeout),
        )),
        Cmd::Poweroff { id, timeout } => rt.block_on(cli::power(
            &load()?,
            &id,
            false,
            Duration::from_secs_f64(timeout),
        )),
        Cmd::Reboot { id, timeout } => rt.block_on(cli::power(
            &load()?,
            &id,
            true,
            Duration::from_secs_f64(timeout),
        )),
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
        Cmd::Capture { id, opts } => rt.block_on(images::capture(&load()?, &id, &opts)),
        Cmd::Restore { id, opts } => rt.block_on(images::restore(&load()?, &id, &opts)),
        Cmd::Deploy { image, opts } => rt.block_on(deploy::deploy(&load()?, &image, &opts)),
        Cmd::Migrate { source, opts } => {
            rt.block_on(ferry_manager::jobs::cli::migrate(&load()?, &source, &opts))
        }
        Cmd::Jobs { json } => rt.block_on(ferry_manager::jobs::cli::list(&load()?, json)),
        Cmd::Job { cmd } => {
            use ferry_manager::jobs::cli as jobs;
            let config = load()?;
            rt.block_on(async {
                match cmd {
                    JobCmd::Show { id, json } => jobs::show(&config, &id, json).await,
                    JobCmd::Watch { id, opts } => jobs::watch(&config, &id, &opts).await,
                    JobCmd::Cancel { id } => jobs::cancel(&config, &id).await,
                    JobCmd::Retry { id, opts } => jobs::retry(&config, &id, &opts).await,
                }
            })
        }
        Cmd::Machines { json } => rt.block_on(providers::list(&load()?, json)),
        Cmd::Machine { cmd } => {
            let config = load()?;
            rt.block_on(async {
                match cmd {
                    MachineCmd::Power {
                        name,
                        action,
                        provider,
                    } => {
                        providers::holding(&config, &name, provider.as_deref())
                            .await?
                            .power(&name, action)
                            .await
                    }
                    MachineCmd::Delete { name, provider } => {
                        providers::holding(&config, &name, provider.as_deref())
                            .await?
                            .delete(&name)
                            .await
                    }
                }
            })
        }
        Cmd::Images { json } => images::images(&load()?, json),
        Cmd::Image { cmd } => match cmd {
            ImageCmd::Show {
                name,
                capture,
                json,
            } => images::show(&load()?, &name, capture.as_deref(), json),
            ImageCmd::Rm { name, capture } => images::remove(&load()?, &name, capture.as_deref()),
            ImageCmd::Check { name, quick, json } => images::check(&load()?, &name, !quick, json),
        },
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
