//! Raw capture on the host: the block data of an unmounted loop device is captured
//! with `ferry-agent capture --raw`, restored into an image file (holes kept) and
//! onto another device (every byte written), read by the stock `restic`, and
//! captured again with only the changed chunks added. Mounted devices, small
//! targets and directory targets are refused with clear errors.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_image::{Library, Location};
use ferry_model::image::Consistency;
use ferry_tests::fidelity::{LoopFs, bytes, can_run, restic, sh};
use ferry_tests::procs::bin;
use ferry_tests::util::missing;

const PASSWORD: &str = "pw-for-raw";
const MIB: usize = 1 << 20;

/// A loop device over an image file, detached when dropped.
struct LoopDev {
    device: String,
    image: PathBuf,
}

impl LoopDev {
    fn new(image: &Path, bytes: &[u8], size: u64) -> LoopDev {
        std::fs::write(image, bytes).expect("image");
        std::fs::File::options()
            .write(true)
            .open(image)
            .and_then(|f| f.set_len(size))
            .expect("size");
        let device = sh(Command::new("losetup").args(["-f", "--show"]).arg(image))
            .expect("losetup")
            .trim()
            .to_string();
        LoopDev {
            device,
            image: image.to_path_buf(),
        }
    }

    fn read(&self, len: usize) -> Vec<u8> {
        let mut data = std::fs::read(&self.device).expect("read device");
        data.truncate(len);
        data
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// 16 MiB of noise, 16 MiB of zeros, 16 MiB of noise.
fn content() -> Vec<u8> {
    let mut data = bytes(7, 16 * MIB);
    data.extend(std::iter::repeat_n(0u8, 16 * MIB));
    data.extend(bytes(9, 16 * MIB));
    data
}

fn agent(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("ferry-agent"))
        .args(args)
        .arg("--library")
        .arg(dir.join("library"))
        .arg("--password-file")
        .arg(dir.join("pw"))
        .output()
        .expect("ferry-agent")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A folder holding the library's password file, when this machine can run the
/// suite.
fn workdir() -> Option<tempfile::TempDir> {
    if let Some(m) = can_run() {
        missing(&m);
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), PASSWORD).expect("password file");
    Some(dir)
}

#[test]
fn block_data_is_captured_restored_to_a_file_and_a_device_and_read_by_restic() {
    let Some(dir) = workdir() else { return };
    let d = dir.path();
    let data = content();
    let src = LoopDev::new(&d.join("src.img"), &data, data.len() as u64);
    let dev = src.device.as_str();

    let out = agent(d, &["capture", "--init", "--image", "raw", "--raw", dev]);
    assert!(out.status.success(), "capture: {}", text(&out));
    assert!(
        text(&out).contains("not a logical volume, no snapshot: block data read live"),
        "{}",
        text(&out)
    );
    let loc = Location::parse_url(d.join("library").to_str().expect("utf-8")).expect("loc");
    let lib = Library::connect(&loc, PASSWORD).expect("connect");
    let m = lib.manifest("raw", None).expect("manifest");
    let fs = &m.filesystems[0];
    assert!(fs.raw && fs.path == dev, "{fs:?}");
    assert_eq!(
        (fs.bytes, fs.consistency),
        (data.len() as u64, Consistency::Live)
    );

    // Into an image file: identical, and the zero run is a hole.
    let file = d.join("restored.img");
    let restore_with = |to: &Path, more: &[&str]| {
        let to = to.to_str().expect("utf-8");
        let mut args = vec!["restore", "--image", "raw", "--fs", dev, "--to", to];
        args.extend_from_slice(more);
        agent(d, &args)
    };
    let restore = |to: &Path| restore_with(to, &[]);
    let out = restore(&file);
    assert!(out.status.success(), "restore: {}", text(&out));
    assert!(std::fs::read(&file).expect("read") == data, "file differs");
    let allocated = std::fs::metadata(&file).expect("stat").blocks() * 512;
    assert!(
        allocated <= 33 * MIB as u64,
        "{allocated} bytes allocated: the zeros were written"
    );

    // Onto a larger device full of junk: refused without --overwrite, then every
    // byte of the image is written.
    let junk = vec![0xA5u8; 64 * MIB];
    let target = LoopDev::new(&d.join("target.img"), &junk, junk.len() as u64);
    let out = restore(Path::new(&target.device));
    assert!(
        text(&out).contains("holds data (its first MiB is not blank); pass --overwrite"),
        "{}",
        text(&out)
    );
    assert!(target.read(MIB) == junk[..MIB], "untouched when refused");
    let out = restore_with(Path::new(&target.device), &["--overwrite"]);
    assert!(out.status.success(), "restore onto device: {}", text(&out));
    assert!(target.read(data.len()) == data, "device differs");

    // Refusals: a smaller device, a directory, an existing file.
    let small = LoopDev::new(&d.join("small.img"), &[], 32 * MIB as u64);
    let out = restore(Path::new(&small.device));
    assert!(!out.status.success());
    assert!(text(&out).contains("too small"), "{}", text(&out));
    let out = restore(d);
    assert!(
        text(&out)
            .contains("captured as block data; restore it onto a device or into an image file"),
        "{}",
        text(&out)
    );
    let out = restore(&file);
    assert!(
        text(&out).contains("exists and is not empty; pass --overwrite"),
        "{}",
        text(&out)
    );

    // The stock restic client reads the block data as one file.
    if Path::new("/usr/bin/restic").exists() {
        let dumped = restic(&d.join("library"), PASSWORD)
            .args(["dump", &fs.snapshot, dev])
            .output()
            .expect("restic");
        assert!(dumped.status.success(), "restic dump: {}", text(&dumped));
        assert!(dumped.stdout == data, "restic's dump differs");
    } else {
        missing("restic");
    }

    // Changed in one MiB: captured again whole, but only the new chunks are added.
    let mut changed = data.clone();
    changed[40 * MIB..41 * MIB].fill(0x5A);
    std::fs::write(&src.device, &changed).expect("write device");
    let out = agent(d, &["capture", "--image", "raw", "--raw", dev]);
    assert!(out.status.success(), "re-capture: {}", text(&out));
    let m = lib.manifest("raw", None).expect("manifest");
    let added = m.filesystems[0].added_bytes;
    assert!(added > 0 && added <= 12 * MIB as u64, "{added} bytes added");
    let out = restore(&d.join("again.img"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(d.join("again.img")).expect("read") == changed);
}

#[test]
fn a_mounted_device_or_a_regular_file_is_refused_for_raw_capture() {
    let Some(dir) = workdir() else { return };
    let d = dir.path();
    let fs = LoopFs::new(d, "mounted", "ext4", 32 << 20).expect("loop fs");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mnt = fs.mnt.to_str().expect("utf-8");
    let source = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|l| l.split(' ').nth(1))
        .expect("mount source")
        .to_string();
    let out = agent(d, &["capture", "--init", "--image", "m", "--raw", &source]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("{source}: mounted at {mnt}")),
        "{}",
        text(&out)
    );
    // Nor is block data restored onto a mounted device, even with --overwrite.
    let blank_dev = LoopDev::new(&d.join("blank.img"), &[], 4 * MIB as u64);
    let out = agent(d, &["capture", "--image", "b", "--raw", &blank_dev.device]);
    assert!(out.status.success(), "{}", text(&out));
    let out = agent(
        d,
        &[
            "restore",
            "--image",
            "b",
            "--fs",
            &blank_dev.device,
            "--to",
            &source,
            "--overwrite",
        ],
    );
    assert!(
        text(&out).contains(&format!(
            "target {source}: mounted at {mnt}; unmount it first"
        )),
        "{}",
        text(&out)
    );
    let plain = d.join("plain.img");
    std::fs::write(&plain, b"not a device").expect("write");
    let out = agent(
        d,
        &[
            "capture",
            "--image",
            "m",
            "--raw",
            plain.to_str().expect("utf-8"),
        ],
    );
    assert!(text(&out).contains("not a block device"), "{}", text(&out));
}
