//! `cargo xtask bench image`: the image library next to the tools a user would
//! otherwise reach for, on a generated 1 GiB tree (~50k files of mixed sizes, half
//! compressible) and on a debootstrapped Debian root, in one run:
//!
//! - first capture: Ferry vs `restic backup` vs `tar -cf - | zstd -1 > file`;
//! - unchanged re-capture: Ferry (target ≥ 10× faster than its first capture);
//! - restore: Ferry vs `restic restore` vs `zstd -d | tar -x` (target ≥ 0.7× tar's
//!   speed).
//!
//! Ferry is the static musl agent as shipped (`FERRY_AGENT_MUSL`), and the same code
//! built for glibc (`FERRY_AGENT_GLIBC`) for the first capture. Appends the table to
//! `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ferry_tests::bench::{append, machine, now_utc};

const PASSWORD: &str = "bench-password";

fn cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
        .join(".cache/ferry")
}

/// Runs a shell script; its wall-clock seconds.
fn timed(what: &str, script: &str) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("sh")
        .args(["-euc", script])
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .with_context(|| format!("{what}: starting sh"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("bench image: {what}: {secs:.1} s");
    Ok(secs)
}

/// A deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

const WORDS: [&str; 16] = [
    "server", "migrate", "image", "ferry", "kernel", "volume", "restore", "network", "config",
    "daemon", "package", "library", "snapshot", "driver", "storage", "boot",
];

/// About 1 GiB in ~50k files: 45k small (0.5–12 KiB), 4.8k medium (20–200 KiB),
/// 20 large (5–15 MiB); each 4 KiB block is random or text, half and half.
fn generated_tree() -> Result<PathBuf> {
    let root = cache().join("bench-tree-v1");
    if root.join(".complete").is_file() {
        return Ok(root);
    }
    let _ = std::fs::remove_dir_all(&root);
    let mut rng = Rng(0x5eed_f0e1);
    let mut files = Vec::new();
    files.extend((0..45_000).map(|_| (512, 12 << 10)));
    files.extend((0..4_800).map(|_| (20 << 10, 200 << 10)));
    files.extend((0..20).map(|_| (5 << 20, 15 << 20)));
    for (i, (lo, hi)) in files.into_iter().enumerate() {
        let dir = root.join(format!("d{:03}/s{:02}", i % 500, (i / 500) % 20));
        std::fs::create_dir_all(&dir)?;
        let len = rng.between(lo, hi) as usize;
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            if rng.next().is_multiple_of(2) {
                data.extend((0..512).flat_map(|_| rng.next().to_le_bytes()));
            } else {
                let end = data.len() + 4096;
                while data.len() < end {
                    data.extend_from_slice(WORDS[(rng.next() % 16) as usize].as_bytes());
                    data.push(b' ');
                }
                data.truncate(end);
            }
        }
        data.truncate(len);
        std::fs::write(dir.join(format!("f{i}.dat")), data)?;
    }
    std::fs::write(root.join(".complete"), b"")?;
    Ok(root)
}

fn du(path: &Path) -> String {
    Command::new("du")
        .args(["-sh", "--apparent-size"])
        .arg(path)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn count(path: &Path) -> usize {
    Command::new("sh")
        .args(["-c", &format!("find '{}' | wc -l", path.display())])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

struct Row {
    dataset: String,
    ferry_first: f64,
    ferry_glibc_first: Option<f64>,
    restic_backup: f64,
    tar_zstd: f64,
    ferry_again: f64,
    ferry_restore: f64,
    restic_restore: f64,
    tar_extract: f64,
}

fn run_dataset(
    name: &str,
    src: &Path,
    musl: &Path,
    glibc: Option<&Path>,
    work: &Path,
) -> Result<Row> {
    let w = work.join(name);
    let _ = std::fs::remove_dir_all(&w);
    std::fs::create_dir_all(&w)?;
    let pw = w.join("pw");
    std::fs::write(&pw, PASSWORD)?;
    let (src_s, w_s, pw_s) = (src.display(), w.display(), pw.display());
    // Warm the page cache, and the tar|zstd baseline.
    timed(
        "warm-up read",
        &format!("tar -C '{src_s}' -cf - . > /dev/null"),
    )?;
    let tar_zstd = timed(
        "tar | zstd -1",
        &format!("tar -C '{src_s}' -cf - . | zstd -1 -q > '{w_s}/tree.tar.zst'"),
    )?;
    let capture = |agent: &Path, lib: &str| {
        format!(
            "'{}' capture --init --live --library '{w_s}/{lib}' --password-file '{pw_s}' --image bench '{src_s}' > /dev/null",
            agent.display()
        )
    };
    let ferry_first = timed("ferry capture (musl)", &capture(musl, "lib"))?;
    let ferry_again = timed("ferry re-capture, unchanged", &capture(musl, "lib"))?;
    let ferry_glibc_first = match glibc {
        Some(g) => Some(timed("ferry capture (glibc)", &capture(g, "lib-glibc"))?),
        None => None,
    };
    let restic_backup = timed(
        "restic backup",
        &format!(
            "restic -q -r '{w_s}/restic' init > /dev/null && restic -q --no-cache -r '{w_s}/restic' backup '{src_s}' > /dev/null"
        ),
    )?;
    let _ = std::fs::remove_dir_all(w.join("lib-glibc"));
    for d in ["r-ferry", "r-restic", "r-tar"] {
        std::fs::create_dir_all(w.join(d))?;
    }
    let ferry_restore = timed(
        "ferry restore",
        &format!(
            "'{}' restore --library '{w_s}/lib' --password-file '{pw_s}' --image bench --fs '{src_s}' --to '{w_s}/r-ferry' > /dev/null",
            musl.display()
        ),
    )?;
    let restic_restore = timed(
        "restic restore",
        &format!(
            "restic -q --no-cache -r '{w_s}/restic' restore latest --target '{w_s}/r-restic' > /dev/null"
        ),
    )?;
    let tar_extract = timed(
        "zstd -d | tar -x",
        &format!("zstd -d -q -c '{w_s}/tree.tar.zst' | tar -C '{w_s}/r-tar' -xf -"),
    )?;
    let _ = std::fs::remove_dir_all(&w);
    Ok(Row {
        dataset: format!("{name} ({}, {} entries)", du(src), count(src)),
        ferry_first,
        ferry_glibc_first,
        restic_backup,
        tar_zstd,
        ferry_again,
        ferry_restore,
        restic_restore,
        tar_extract,
    })
}

fn main() -> Result<()> {
    let musl = PathBuf::from(std::env::var("FERRY_AGENT_MUSL").context("FERRY_AGENT_MUSL")?);
    let glibc = std::env::var_os("FERRY_AGENT_GLIBC").map(PathBuf::from);
    let work = PathBuf::from("/var/tmp/ferry-bench-image");
    let mut rows = Vec::new();
    let tree = generated_tree()?;
    rows.push(run_dataset(
        "generated",
        &tree,
        &musl,
        glibc.as_deref(),
        &work,
    )?);
    let debian = ferry_tests::debian::root_tree()?;
    rows.push(run_dataset(
        "debian-12-root",
        &debian,
        &musl,
        glibc.as_deref(),
        &work,
    )?);
    let _ = std::fs::remove_dir_all(&work);

    let mut t = format!(
        "\n## Image library — {} — {}\n\n`cargo xtask bench image`: folder library on the same disk, warm page cache, one run each. \
         Ferry = the static musl agent as shipped; ratios are the other tool's time over Ferry's (above 1: Ferry is faster).\n\n\
         | dataset | ferry capture | restic backup (ratio) | tar\\|zstd -1 (ratio) | ferry glibc capture | unchanged re-capture (first/again, target ≥ 10) | ferry restore | restic restore (ratio) | zstd -d\\|tar -x (ratio, target ≥ 0.7) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        now_utc(),
        machine()
    );
    for r in &rows {
        t += &format!(
            "| {} | {:.1} s | {:.1} s ({:.2}) | {:.1} s ({:.2}) | {} | {:.2} s ({:.1}×) | {:.1} s | {:.1} s ({:.2}) | {:.1} s ({:.2}) |\n",
            r.dataset,
            r.ferry_first,
            r.restic_backup,
            r.restic_backup / r.ferry_first,
            r.tar_zstd,
            r.tar_zstd / r.ferry_first,
            r.ferry_glibc_first
                .map(|g| format!("{g:.1} s"))
                .unwrap_or_else(|| "-".into()),
            r.ferry_again,
            r.ferry_first / r.ferry_again,
            r.ferry_restore,
            r.restic_restore,
            r.restic_restore / r.ferry_restore,
            r.tar_extract,
            r.tar_extract / r.ferry_restore,
        );
    }
    print!("{t}");
    append(&t)?;
    Ok(())
}
