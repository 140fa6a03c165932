//! The uncompressed kernel (`vmlinux`) inside a `bzImage`, for direct boot through the
//! PVH entry point (QEMU `-kernel`, Firecracker, Cloud Hypervisor).
//!
//! A `bzImage` carries the kernel compressed behind a small decompressor; on an
//! emulated CPU that decompressor alone takes seconds (Debian compresses with xz).
//! A hypervisor that boots the ELF `vmlinux` through its Xen PVH note skips both the
//! firmware's loader and the decompression.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note that holds the PVH entry point.
const PVH_NOTE: u32 = 18;

/// Where the compressed payload sits in a `bzImage` (boot protocol ≥ 2.08).
fn payload(bz: &[u8]) -> Result<&[u8]> {
    let u16_at = |o: usize| u16::from_le_bytes([bz[o], bz[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([bz[o], bz[o + 1], bz[o + 2], bz[o + 3]]);
    ensure!(
        bz.len() > 0x250 && &bz[0x202..0x206] == b"HdrS",
        "not a Linux bzImage (no \"HdrS\" boot header)"
    );
    let version = u16_at(0x206);
    ensure!(
        version >= 0x208,
        "boot protocol {}.{:02} is too old to locate the kernel payload (needs 2.08)",
        version >> 8,
        version & 0xff
    );
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248) as usize;
    let end = start + u32_at(0x24c) as usize;
    bz.get(start..end)
        .context("the bzImage is truncated: its payload runs past the end of the file")
}

/// Runs a decompressor that reads `input` on stdin; its output, even when it complains
/// about the size trailer the kernel build appends after the stream.
fn decompress_with(tool: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool} (Debian: xz-utils, gzip)"))?;
    let mut stdin = child.stdin.take().context("decompressor stdin")?;
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    Ok(out.stdout)
}

/// The ELF `vmlinux` inside a `bzImage`.
pub fn vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    let data = payload(bz)?;
    let elf = if data.starts_with(b"\xfd7zXZ\x00") {
        decompress_with("xz", &["-dc", "--single-stream"], data)?
    } else if data.starts_with(&[0x1f, 0x8b]) {
        decompress_with("gzip", &["-dc"], data)?
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        // The size trailer follows the frame; decode the one frame only.
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(data)?
            .single_frame()
            .read_to_end(&mut out)
            .context("decompressing the zstd kernel payload")?;
        out
    } else {
        bail!(
            "the kernel payload is compressed with a format Ferry does not unpack (magic {:02x?}); boot vmlinuz instead",
            &data[..data.len().min(6)]
        );
    };
    ensure!(
        elf.starts_with(b"\x7fELF"),
        "the kernel payload did not unpack to an ELF image ({} bytes)",
        elf.len()
    );
    Ok(elf)
}

/// Whether an ELF kernel has a PVH entry point, so hypervisors can boot it directly.
pub fn has_pvh_entry(elf: &[u8]) -> Result<bool> {
    let parsed = goblin::elf::Elf::parse(elf).context("parsing the vmlinux ELF image")?;
    let notes = parsed
        .iter_note_headers(elf)
        .into_iter()
        .chain(parsed.iter_note_sections(elf, None));
    for group in notes {
        for note in group.flatten() {
            if note.name == "Xen" && note.n_type == PVH_NOTE {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: boot header, one setup sector, `payload` at offset 0.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut bz = vec![0u8; 2 * 512];
        bz[0x1f1] = 1;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(payload);
        bz
    }

    #[test]
    fn unpacks_xz_and_gzip_payloads_despite_the_size_trailer() {
        let elf = b"\x7fELF and the rest of a kernel".repeat(100);
        for (tool, args) in [("xz", ["-c", "--check=crc32"]), ("gzip", ["-c", "-n"])] {
            let mut packed = decompress_with(tool, &args, &elf).unwrap();
            packed.extend_from_slice(&(elf.len() as u32).to_le_bytes());
            assert_eq!(vmlinux(&bzimage(&packed)).unwrap(), elf, "{tool}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_bzimage_or_not_a_kernel() {
        let err = vmlinux(b"MZ not a kernel").unwrap_err().to_string();
        assert!(err.contains("not a Linux bzImage"), "{err}");
        let err = vmlinux(&bzimage(b"BZh91AY&SY")).unwrap_err().to_string();
        assert!(err.contains("boot vmlinuz instead"), "{err}");
        let mut cut = bzimage(b"\xfd7zXZ\x00....");
        cut.truncate(cut.len() - 4);
        let err = vmlinux(&cut).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
