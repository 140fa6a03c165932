//! restic's repository format (version 2), written by Ferry itself: blobs sealed
//! (compressed, encrypted, authenticated), gathered into pack files, and the index and
//! other unpacked files that make them findable. rustic_core reads all of it, but keeps
//! its own writing machinery private and hands every blob between threads; a capture
//! that owns its pipeline needs these parts. Format facts: `docs/restic-format-notes.md`.
//!
//! Every encrypted object is `IV (16) ‖ AES-256-CTR ciphertext ‖ Poly1305-AES MAC (16)`
//! over the ciphertext, with the MAC's one-time key `r ‖ AES-128_k(IV)`.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use anyhow::{Result, anyhow, bail};
use poly1305::Poly1305;
use rustic_core::repofile::{BlobType, MasterKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A SHA-256 id of a blob (of its plaintext) or a file (of its stored bytes).
pub type Id = [u8; 32];

/// The SHA-256 of `data`.
pub fn hash(data: &[u8]) -> Id {
    Sha256::digest(data).into()
}

/// The library's master key, able to seal and open (rustic_core's own key type is not
/// public).
#[derive(Clone)]
pub struct Cipher {
    encrypt: [u8; 32],
    k: aes::Aes128,
    r: [u8; 16],
}

/// Bytes an encrypted object adds to its plaintext: IV and MAC.
pub const OVERHEAD: usize = 32;

impl Cipher {
    /// The cipher of a master key (as `Repository::key()` gives it).
    pub fn new(key: &MasterKey) -> Result<Cipher> {
        let bad = || anyhow!("the library's master key does not have 32 + 16 + 16 bytes");
        let encrypt: [u8; 32] = key.encrypt.as_slice().try_into().map_err(|_| bad())?;
        let k: [u8; 16] = key.mac.k.as_slice().try_into().map_err(|_| bad())?;
        let r: [u8; 16] = key.mac.r.as_slice().try_into().map_err(|_| bad())?;
        Ok(Cipher {
            encrypt,
            k: aes::Aes128::new(&k.into()),
            r,
        })
    }

    fn mac(&self, iv: &[u8; 16], ciphertext: &[u8]) -> [u8; 16] {
        let mut nonce = aes::Block::from(*iv);
        self.k.encrypt_block(&mut nonce);
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&self.r);
        key[16..].copy_from_slice(&nonce);
        Poly1305::new(&key.into())
            .compute_unpadded(ciphertext)
            .into()
    }

    fn keystream(&self, iv: &[u8; 16], data: &mut [u8]) {
        ctr::Ctr128BE::<aes::Aes256>::new(&self.encrypt.into(), &(*iv).into())
            .apply_keystream(data);
    }

    /// A fresh IV for `len` bytes whose low 64 counter bits do not wrap within them:
    /// then a 64-bit counter (rustic's) and a 128-bit one (restic's) give the same
    /// keystream.
    fn iv(len: usize) -> Result<[u8; 16]> {
        let blocks = (len as u64).div_ceil(16);
        loop {
            let mut iv = [0u8; 16];
            getrandom::getrandom(&mut iv).map_err(|e| anyhow!("no random IV: {e}"))?;
            let low = u64::from_be_bytes(iv[8..].try_into().unwrap_or_default());
            if low.checked_add(blocks).is_some() {
                return Ok(iv);
            }
        }
    }

    /// `plain` encrypted and authenticated: `IV ‖ ciphertext ‖ MAC`.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let iv = Self::iv(plain.len())?;
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plain);
        self.keystream(&iv, &mut out[16..]);
        let mac = self.mac(&iv, &out[16..]);
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// The plaintext of a sealed object, after its MAC is checked.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            bail!(
                "{} bytes are too short for an encrypted object",
                sealed.len()
            );
        }
        let (iv, rest) = sealed.split_at(16);
        let (ciphertext, mac) = rest.split_at(rest.len() - 16);
        let iv: [u8; 16] = iv.try_into().unwrap_or_default();
        if self.mac(&iv, ciphertext) != mac {
            bail!("the MAC does not match: corrupt, or sealed with another key");
        }
        let mut plain = ciphertext.to_vec();
        self.keystream(&iv, &mut plain);
        Ok(plain)
    }
}

/// A blob ready for a pack: its id and its stored bytes.
pub struct SealedBlob {
    /// SHA-256 of the plaintext.
    pub id: Id,
    /// Compressed (if `uncompressed` is set) and sealed.
    pub data: Vec<u8>,
    /// The plaintext's length, when the stored bytes are compressed.
    pub uncompressed: Option<u32>,
}

/// Seals blob `plain`, compressed at zstd `level` (`None`: stored as it is; repository
/// version 1).
pub fn seal_blob(cipher: &Cipher, level: Option<i32>, plain: &[u8]) -> Result<SealedBlob> {
    seal_blob_as(cipher, level, hash(plain), plain)
}

/// [`seal_blob`] for a caller that has hashed `plain` already (to `id`).
pub fn seal_blob_as(
    cipher: &Cipher,
    level: Option<i32>,
    id: Id,
    plain: &[u8],
) -> Result<SealedBlob> {
    let len = u32::try_from(plain.len()).map_err(|_| anyhow!("a blob of 4 GiB or more"))?;
    let (data, uncompressed) = match level {
        Some(level) => {
            let packed = zstd::bulk::compress(plain, level)
                .map_err(|e| anyhow!("compressing a blob: {e}"))?;
            (cipher.seal(&packed)?, Some(len))
        }
        None => (cipher.seal(plain)?, None),
    };
    Ok(SealedBlob {
        id,
        data,
        uncompressed,
    })
}

/// A blob's place in a pack, as the index lists it.
#[derive(Debug, Clone, Serialize)]
pub struct IndexedBlob {
    #[serde(serialize_with = "hex_id")]
    id: Id,
    #[serde(rename = "type", serialize_with = "blob_type")]
    tpe: BlobType,
    offset: u32,
    length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    uncompressed_length: Option<u32>,
}

/// A pack file's entry in an index file.
#[derive(Debug, Clone, Serialize)]
pub struct IndexedPack {
    /// The pack's id.
    #[serde(serialize_with = "hex_id")]
    pub id: Id,
    blobs: Vec<IndexedBlob>,
}

impl IndexedPack {
    /// The ids of the pack's blobs.
    pub fn blob_ids(&self) -> impl Iterator<Item = &Id> {
        self.blobs.iter().map(|b| &b.id)
    }
}

fn hex_id<S: serde::Serializer>(id: &Id, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(id))
}

fn blob_type<S: serde::Serializer>(t: &BlobType, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(match t {
        BlobType::Tree => "tree",
        BlobType::Data => "data",
    })
}

/// A pack file being filled with blobs of one type.
pub struct Pack {
    tpe: BlobType,
    data: Vec<u8>,
    blobs: Vec<IndexedBlob>,
}

impl Pack {
    /// An empty pack for blobs of type `tpe`.
    pub fn new(tpe: BlobType) -> Pack {
        Pack {
            tpe,
            data: Vec::new(),
            blobs: Vec::new(),
        }
    }

    /// Appends `blob`.
    pub fn add(&mut self, blob: SealedBlob) -> Result<()> {
        let offset = u32::try_from(self.data.len()).map_err(|_| anyhow!("a pack of 4 GiB"))?;
        let length = u32::try_from(blob.data.len()).map_err(|_| anyhow!("a blob of 4 GiB"))?;
        self.data.extend_from_slice(&blob.data);
        self.blobs.push(IndexedBlob {
            id: blob.id,
            tpe: self.tpe,
            offset,
            length,
            uncompressed_length: blob.uncompressed,
        });
        Ok(())
    }

    /// Bytes of blobs so far.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// Blobs so far.
    pub fn count(&self) -> usize {
        self.blobs.len()
    }

    /// The finished pack file (blobs, sealed header, the header's length) and its
    /// index entry.
    pub fn finish(self, cipher: &Cipher) -> Result<(Vec<u8>, IndexedPack)> {
        let mut header = Vec::with_capacity(self.blobs.len() * 41);
        for b in &self.blobs {
            let kind = match (self.tpe, b.uncompressed_length) {
                (BlobType::Data, None) => 0u8,
                (BlobType::Tree, None) => 1,
                (BlobType::Data, Some(_)) => 2,
                (BlobType::Tree, Some(_)) => 3,
            };
            header.push(kind);
            header.extend_from_slice(&b.length.to_le_bytes());
            if let Some(u) = b.uncompressed_length {
                header.extend_from_slice(&u.to_le_bytes());
            }
            header.extend_from_slice(&b.id);
        }
        let header = cipher.seal(&header)?;
        let mut file = self.data;
        file.extend_from_slice(&header);
        let header_len =
            u32::try_from(header.len()).map_err(|_| anyhow!("a pack header of 4 GiB"))?;
        file.extend_from_slice(&header_len.to_le_bytes());
        let id = hash(&file);
        Ok((
            file,
            IndexedPack {
                id,
                blobs: self.blobs,
            },
        ))
    }
}

/// A file outside packs (index, snapshot) as stored: the JSON `json`, compressed at
/// `level` after the version byte 2 (or as it is without a level), sealed; and its id.
pub fn seal_file(cipher: &Cipher, level: Option<i32>, json: &[u8]) -> Result<(Id, Vec<u8>)> {
    let sealed = match level {
        Some(level) => {
            let mut plain = vec![2u8];
            plain.extend(
                zstd::bulk::compress(json, level)
                    .map_err(|e| anyhow!("compressing a file: {e}"))?,
            );
            cipher.seal(&plain)?
        }
        None => cipher.seal(json)?,
    };
    Ok((hash(&sealed), sealed))
}

/// An index file listing `packs`, sealed; and its id.
pub fn index_file(
    cipher: &Cipher,
    level: Option<i32>,
    packs: &[IndexedPack],
) -> Result<(Id, Vec<u8>)> {
    #[derive(Serialize)]
    struct Index<'a> {
        packs: &'a [IndexedPack],
    }
    let json = serde_json::to_vec(&Index { packs })?;
    seal_file(cipher, level, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new(&MasterKey::new()).expect("a key")
    }

    #[test]
    fn sealed_objects_open_and_any_flipped_bit_is_refused() {
        let c = cipher();
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sealed = c.seal(&plain).expect("seal");
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert_ne!(&sealed[16..16 + 64], &plain[..64], "encrypted");
        assert_eq!(c.open(&sealed).expect("open"), plain);
        for at in [0, 20, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(
                c.open(&bad).is_err(),
                "a flipped bit at {at} went unnoticed"
            );
        }
        assert!(cipher().open(&sealed).is_err(), "another key opened it");
        assert!(c.open(&sealed[..20]).is_err());
    }

    /// Packs, an index and a snapshot written here make a library that rustic_core
    /// checks (reading every pack back) and restores from.
    #[test]
    fn rustic_reads_and_checks_what_is_written_here() -> Result<()> {
        use rustic_core::repofile::{Metadata, Node, NodeType, SnapshotFile, Tree};
        use rustic_core::{DataId, FileType, TreeId};

        let dir = tempfile::tempdir()?;
        let lib = crate::Library::connect(
            &crate::Location::parse(&dir.path().to_string_lossy())?,
            "pw",
        )?;
        lib.init()?;
        let repo = lib.open()?;
        let c = Cipher::new(&repo.key())?;
        let level = repo.config().zstd().map_err(|e| anyhow!("{e}"))?;
        let be = lib.write_backend();
        let write = |tpe: FileType, id: Id, cacheable: bool, bytes: Vec<u8>| {
            be.write_bytes(tpe, &rustic_core::Id::new(id), cacheable, bytes.into())
                .map_err(|e| anyhow!("{e}"))
        };

        let big: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let files: [(&str, Vec<u8>); 2] = [("a", big), ("b", b"hello\n".to_vec())];
        let mut data = Pack::new(BlobType::Data);
        let mut nodes = Vec::new();
        for (name, content) in &files {
            let blob = seal_blob(&c, level, content)?;
            let meta = Metadata {
                mode: Some(0o644),
                size: content.len() as u64,
                ..Default::default()
            };
            let mut node = Node::new_node(std::ffi::OsStr::new(name), NodeType::File, meta);
            node.content = Some(vec![DataId::from(rustic_core::Id::new(blob.id))]);
            nodes.push(node);
            data.add(blob)?;
        }
        let (file, data_index) = data.finish(&c)?;
        write(FileType::Pack, data_index.id, false, file)?;
        let mut json = serde_json::to_vec(&Tree { nodes })?;
        json.push(b'\n');
        let tree = seal_blob(&c, level, &json)?;
        let tree_id = tree.id;
        let mut trees = Pack::new(BlobType::Tree);
        trees.add(tree)?;
        let (file, tree_index) = trees.finish(&c)?;
        write(FileType::Pack, tree_index.id, true, file)?;
        let (id, file) = index_file(&c, level, &[data_index, tree_index])?;
        write(FileType::Index, id, false, file)?;
        let snap = SnapshotFile {
            tree: TreeId::from(rustic_core::Id::new(tree_id)),
            ..Default::default()
        };
        repo.save_snapshots(vec![snap])
            .map_err(|e| anyhow!("{e}"))?;

        let report = lib.check(None, true)?;
        assert!(
            report.errors.is_empty() && report.warnings.is_empty(),
            "{report:?}"
        );
        assert_eq!(report.snapshots, 1);
        let repo = lib.open()?.to_indexed().map_err(|e| anyhow!("{e}"))?;
        let tree = repo
            .get_tree(&TreeId::from(rustic_core::Id::new(tree_id)))
            .map_err(|e| anyhow!("{e}"))?;
        for (node, (name, content)) in tree.nodes.iter().zip(&files) {
            assert_eq!(node.name().to_string_lossy(), *name);
            let mut out = Vec::new();
            repo.dump(node, &mut out).map_err(|e| anyhow!("{e}"))?;
            assert!(out == *content, "{name} reads back different");
        }
        Ok(())
    }

    #[test]
    fn the_counter_never_wraps_its_low_half_within_an_object() {
        for len in [0, 1, 16, 1 << 20] {
            let iv = Cipher::iv(len).expect("iv");
            let low = u64::from_be_bytes(iv[8..].try_into().expect("8 bytes"));
            assert!(low.checked_add((len as u64).div_ceil(16)).is_some());
        }
    }

    #[test]
    fn a_pack_lists_its_blobs_contiguously_and_ends_with_its_header_length() {
        let c = cipher();
        let mut pack = Pack::new(BlobType::Data);
        let blobs: Vec<Vec<u8>> = vec![vec![1; 100], vec![2; 5000], b"x".to_vec()];
        for b in &blobs {
            pack.add(seal_blob(&c, Some(3), b).expect("blob"))
                .expect("add");
        }
        let (file, index) = pack.finish(&c).expect("finish");
        assert_eq!(index.id, hash(&file));
        let header_len = u32::from_le_bytes(file[file.len() - 4..].try_into().expect("4")) as usize;
        let header = c
            .open(&file[file.len() - 4 - header_len..file.len() - 4])
            .expect("header opens");
        assert_eq!(header.len(), 3 * 41);
        let mut offset = 0;
        for (entry, (b, plain)) in header.chunks(41).zip(index.blobs.iter().zip(&blobs)) {
            assert_eq!(entry[0], 2, "compressed data");
            assert_eq!(b.offset as usize, offset);
            assert_eq!(
                u32::from_le_bytes(entry[1..5].try_into().expect("4")),
                b.length
            );
            assert_eq!(
                u32::from_le_bytes(entry[5..9].try_into().expect("4")) as usize,
                plain.len()
            );
            assert_eq!(entry[9..], hash(plain));
            let stored = c
                .open(&file[offset..offset + b.length as usize])
                .expect("blob opens");
            assert_eq!(
                zstd::bulk::decompress(&stored, plain.len()).expect("zstd"),
                *plain
            );
            offset += b.length as usize;
        }
        assert_eq!(offset + header_len + 4, file.len());
    }
}
