//! `ferry-agent`: the command line of the Ferry agent.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The Ferry agent: runs on a server or in the Ferry ramdisk and obeys signed commands
/// from its mailbox.
#[derive(Parser)]
#[command(version, about, help_expected = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent loop until a poweroff command or a signal.
    Run {
        /// Agent config file, as written by `ferry agent-config`.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print this agent's id (creating it if needed) and exit.
    Id {
        /// Agent config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Survey this machine (hardware, OS configuration, applications) and print it.
    /// Exits non-zero when the survey is inconsistent.
    Survey {
        /// Print JSON (the `survey` object of the agent's status) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Capture filesystems of this machine into an image in a library. Each PATH is
    /// read from an LVM or btrfs snapshot where one can be taken.
    Capture {
        #[command(flatten)]
        library: LibraryArgs,
        /// Image name.
        #[arg(long)]
        image: String,
        /// Leave out paths matching this glob (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
        /// Read the filesystems live, without snapshots.
        #[arg(long)]
        live: bool,
        /// Where no snapshot can be taken, freeze the filesystem (fsfreeze) while it is
        /// read, for at most SECONDS; writers wait meanwhile. The root filesystem and
        /// the ones holding the temporary folder or the library are never frozen.
        #[arg(long, value_name = "SECONDS", conflicts_with = "live")]
        freeze: Option<u32>,
        /// Create the library if there is none.
        #[arg(long)]
        init: bool,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
        /// A partition or volume whose block data is captured, as one file at its
        /// device path (repeatable); it must not be mounted.
        #[arg(long, value_name = "DEVICE")]
        raw: Vec<PathBuf>,
        /// Mount points to capture.
        #[arg(required_unless_present = "raw")]
        paths: Vec<PathBuf>,
    },
    /// Restore one filesystem of an image into a directory, with full metadata.
    Restore {
        #[command(flatten)]
        library: LibraryArgs,
        /// Image name.
        #[arg(long)]
        image: String,
        /// A capture id of the image; the latest when absent.
        #[arg(long)]
        at: Option<String>,
        /// The filesystem's path in the image, e.g. `/` or `/var`.
        #[arg(long)]
        fs: String,
        /// The directory to restore into (normally an empty, freshly made filesystem).
        #[arg(long)]
        to: PathBuf,
        /// Restore over what is in the directory already.
        #[arg(long)]
        overwrite: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the images in a library.
    Images {
        #[command(flatten)]
        library: LibraryArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// In the Ferry ramdisk: load drivers, bring up the network, run the agent loop.
    /// Started by init (the agent as PID 1); not for use by hand.
    #[command(hide = true)]
    RamdiskAgent,
}

/// Where the image library is and its password.
#[derive(clap::Args)]
struct LibraryArgs {
    /// A folder, s3://HOST:PORT/BUCKET[/FOLDER] or webdav://HOST:PORT/PATH; the store
    /// credential and CA come from FERRY_LIBRARY_ACCESS_KEY, FERRY_LIBRARY_SECRET_KEY
    /// and FERRY_LIBRARY_CA.
    #[arg(long)]
    library: String,
    /// File holding the library's password.
    #[arg(long)]
    password_file: PathBuf,
}

impl LibraryArgs {
    fn connect(&self) -> anyhow::Result<ferry_image::Library> {
        ferry_agent::library::connect(&self.library, &self.password_file)
    }
}

/// In the static musl build, mimalloc serves Rust and C allocations (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    if std::process::id() == 1 {
        if ferry_agent::bootswap::shim::planned() {
            ferry_agent::bootswap::shim::run();
        }
        ferry_agent::ramdisk::init();
    }
    let console = std::env::args().nth(1).as_deref() == Some("ramdisk-agent");
    tracing_subscriber::fmt()
        .with_ansi(!console)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rustic_core=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config } => run(config),
        Cmd::Id { config } => id(config),
        Cmd::Survey { json } => survey(json),
        Cmd::Capture {
            library,
            image,
            exclude,
            live,
            freeze,
            init,
            json,
            raw,
            paths,
        } => library.connect().and_then(|lib| {
            let opts = ferry_agent::library::read_options(&lib, live, freeze, &[]);
            let what = ferry_agent::library::Sources {
                paths: &paths,
                raw: &raw,
                excludes: &exclude,
                capture: None,
                progressive: false,
            };
            ferry_agent::library::capture(&lib, &image, &what, &opts, init, json)
        }),
        Cmd::Restore {
            library,
            image,
            at,
            fs,
            to,
            overwrite,
            json,
        } => library.connect().and_then(|lib| {
            let req = ferry_image::RestoreRequest {
                image,
                at,
                fs,
                target: to,
                overwrite,
                follow: None,
            };
            ferry_agent::library::restore(&lib, &req, json)
        }),
        Cmd::Images { library, json } => library
            .connect()
            .and_then(|lib| ferry_agent::library::images(&lib, json)),
        Cmd::RamdiskAgent => {
            return std::process::ExitCode::from(ferry_agent::ramdisk::agent_main() as u8);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = ferry_agent::config::AgentConfig::load(&path)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        ferry_agent::runner::run(config, shutdown).await.map(|_| ())
    })
}

fn survey(json: bool) -> anyhow::Result<()> {
    let s = ferry_agent::survey::survey();
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("{}", s.render());
    }
    let problems = s.validate();
    anyhow::ensure!(
        problems.is_empty(),
        "the survey is inconsistent: {}",
        problems.join("; ")
    );
    Ok(())
}

fn id(path: PathBuf) -> anyhow::Result<()> {
    let config = ferry_agent::config::AgentConfig::load(&path)?;
    let agent = ferry_agent::runner::Agent::new(config)?;
    println!("{}", agent.id());
    Ok(())
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
