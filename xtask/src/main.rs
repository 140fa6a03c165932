//! `cargo xtask`: Ferry's build, test, demo and bench tasks, in Rust rather than shell.

mod bench;
mod demo;
mod deps;
mod ramdisk;
mod sh;
mod test;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  demo            Ferry's main job: `ferry migrate` of a Debian web server VM onto a new
                  VM on embedded defaults (QEMU TCG, ~25 min; caches its builds)
  demo fleet      start an embedded store, a manager and three agents; show and ping them
  test            install what the tests need, then run every suite
  vm-test         build the ramdisk, then run the QEMU suites only
  deps            only install what the tests need
  ramdisk [opts]  build the Ferry ramdisk, PXE tree and ISO into target/ferry/ (--help)
  bench mailbox   1,000 simulated agents against the embedded store and moto
  bench ramdisk   ramdisk size and seconds to first heartbeat on every boot path
  bench survey    survey time in a ramdisk VM (TCG) and here, next to lshw
  bench image     image capture/re-capture/restore next to restic and tar|zstd
  bench deploy    seconds per deploy step: BIOS web server onto a UEFI target (TCG)
  bench migrate   seconds per phase of `ferry migrate`, the same move as one job (TCG)
";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["demo"] => demo::migration(),
        ["demo", "fleet"] => demo::run(),
        ["test", rest @ ..] => test::run(rest),
        ["vm-test", rest @ ..] => test::vm(rest),
        ["deps"] => deps::ensure().map(|_| ()),
        ["ramdisk", rest @ ..] => ramdisk::run(rest).map(|_| ()),
        ["bench", rest @ ..] => bench::run(rest),
        ["help"] | ["--help"] | [] => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}
