//! The Rabin fingerprint that content-defined chunking (restic's and rustic's) cuts
//! files with: a polynomial over GF(2) of the last 64 bytes, modulo the
//! repository's irreducible polynomial, updated one byte at a time.
//!
//! It replaces the crates.io `rustic_cdc` under the same name and interface, which
//! `rustic_core` uses. That one derives its two lookup tables (16k polynomial
//! reductions) every time a hash is made — once per captured file — which cost a
//! fifth of a capture's CPU on trees of small files. Here the tables are made once
//! per polynomial and shared. The hash values are the same: chunk boundaries, and
//! so deduplication against restic and earlier captures, do not change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A polynomial over GF(2), bit `i` the coefficient of `x^i`.
pub type Polynom64 = u64;

/// Arithmetic on polynomials over GF(2).
pub trait Polynom {
    /// The degree: the highest set bit (-1 for the zero polynomial).
    fn degree(&self) -> i32;

    /// The remainder of the division by `m`.
    #[must_use]
    fn modulo(&self, m: &Self) -> Self;
}

impl Polynom for Polynom64 {
    fn degree(&self) -> i32 {
        63 - self.leading_zeros() as i32
    }

    fn modulo(&self, m: &Self) -> Self {
        let d = m.degree();
        let mut rest = *self;
        while rest.degree() >= d {
            rest ^= m << (rest.degree() - d);
        }
        rest
    }
}

/// A hash over a sliding window of bytes.
pub trait RollingHash64 {
    /// Empties the window and the hash.
    fn reset(&mut self);

    /// Slides in up to one byte less than the window from `iter`; how many it took.
    fn prefill_window<I>(&mut self, iter: &mut I) -> usize
    where
        I: Iterator<Item = u8>;

    /// [`RollingHash64::reset`] then [`RollingHash64::prefill_window`], in one pass.
    fn reset_and_prefill_window<I>(&mut self, iter: &mut I) -> usize
    where
        I: Iterator<Item = u8>;

    /// Slides `byte` in, and the oldest byte out.
    fn slide(&mut self, byte: u8);

    /// The hash of the window.
    fn get_hash(&self) -> &Polynom64;
}

/// Tables made so far, by window size and polynomial.
type Made = HashMap<(usize, Polynom64), Arc<Tables>>;

/// What depends only on the polynomial and the window size.
#[derive(Debug)]
struct Tables {
    /// `deg(P) - 8`: where the byte about to overflow the degree sits.
    shift: i32,
    /// For each byte `b`: `b·x^(8·(window-1)) mod P`, its weight when it leaves.
    leaving: [Polynom64; 256],
    /// For each byte `b`: `(b·x^deg(P) mod P) | b·x^deg(P)`, which both reduces
    /// and clears the bits shifted above the degree.
    reduce: [Polynom64; 256],
}

impl Tables {
    fn new(window: usize, poly: Polynom64) -> Tables {
        let degree = poly.degree();
        let mut leaving = [0; 256];
        let mut reduce = [0; 256];
        for b in 0..256u64 {
            let mut weight = b.modulo(&poly);
            for _ in 1..window {
                weight = (weight << 8).modulo(&poly);
            }
            leaving[b as usize] = weight;
            let high = b << degree;
            reduce[b as usize] = high.modulo(&poly) | high;
        }
        Tables {
            shift: degree - 8,
            leaving,
            reduce,
        }
    }

    /// The tables for `poly` and a window of `window` bytes, made on first use.
    fn shared(window: usize, poly: Polynom64) -> Arc<Tables> {
        static MADE: OnceLock<Mutex<Made>> = OnceLock::new();
        let made = MADE.get_or_init(Default::default);
        let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
        made.entry((window, poly))
            .or_insert_with(|| Arc::new(Tables::new(window, poly)))
            .clone()
    }
}

/// Rabin's fingerprint over a window of `2^bits` bytes.
#[derive(Debug, Clone)]
pub struct Rabin64 {
    tables: Arc<Tables>,
    window: Vec<u8>,
    at: usize,
    /// The hash of the window.
    pub hash: Polynom64,
}

/// The polynomial used when none is given.
pub const MOD_POLYNOM: Polynom64 = 0x003D_A335_8B4D_C173;

impl Rabin64 {
    /// A hash over `2^window_bits` bytes with the default polynomial.
    #[must_use]
    pub fn new(window_bits: u32) -> Self {
        Self::new_with_polynom(window_bits, &MOD_POLYNOM)
    }

    /// A hash over `2^window_bits` bytes modulo `poly` (irreducible, degree > 8).
    #[must_use]
    pub fn new_with_polynom(window_bits: u32, poly: &Polynom64) -> Self {
        let size = 1usize << window_bits;
        Rabin64 {
            tables: Tables::shared(size, *poly),
            window: vec![0; size],
            at: 0,
            hash: 0,
        }
    }

    /// Appends `byte` to the hash (shift in, reduce) and to the window.
    #[inline]
    fn push(&mut self, byte: u8) {
        let t = &self.tables;
        let top = ((self.hash >> t.shift) & 0xff) as usize;
        self.hash = ((self.hash << 8) | Polynom64::from(byte)) ^ t.reduce[top];
        self.window[self.at] = byte;
        self.at = (self.at + 1) & (self.window.len() - 1);
    }
}

impl RollingHash64 for Rabin64 {
    fn reset(&mut self) {
        self.window.fill(0);
        self.at = 0;
        self.hash = 0;
    }

    fn prefill_window<I>(&mut self, iter: &mut I) -> usize
    where
        I: Iterator<Item = u8>,
    {
        let mut taken = 0;
        for byte in iter.take(self.window.len() - 1) {
            self.slide(byte);
            taken += 1;
        }
        taken
    }

    fn reset_and_prefill_window<I>(&mut self, iter: &mut I) -> usize
    where
        I: Iterator<Item = u8>,
    {
        // The bytes leaving during the prefill would be zero: nothing to take out.
        self.hash = 0;
        let mut taken = 0;
        for byte in iter.take(self.window.len() - 1) {
            self.push(byte);
            taken += 1;
        }
        // The one slot not written above leaves next, as a zero.
        self.window[self.at] = 0;
        taken
    }

    #[inline]
    fn slide(&mut self, byte: u8) {
        let leaving = self.window[self.at];
        self.hash ^= self.tables.leaving[leaving as usize];
        self.push(byte);
    }

    fn get_hash(&self) -> &Polynom64 {
        &self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint by definition: the bytes as one polynomial, modulo `poly`.
    fn by_definition(bytes: &[u8], poly: Polynom64) -> Polynom64 {
        bytes
            .iter()
            .fold(0, |h, b| ((h << 8) | Polynom64::from(*b)).modulo(&poly))
    }

    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9abc_def1u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as u8
            })
            .collect()
    }

    #[test]
    fn degree_and_modulo() {
        assert_eq!(
            (0u64.degree(), 1u64.degree(), (1u64 << 7).degree()),
            (-1, 0, 7)
        );
        assert_eq!(
            (7u64.modulo(&3), 19u64.modulo(&8), 16u64.modulo(&4)),
            (1, 3, 0)
        );
    }

    #[test]
    fn the_rolling_hash_is_the_fingerprint_of_the_last_64_bytes() {
        // A repository's polynomial (restic's format: degree 53) and the default.
        for poly in [0x003D_A335_8B4D_C173_u64, 0x002C_7A4B_1F1E_5DA3_u64] {
            let bytes = data(1000);
            let mut rolling = Rabin64::new_with_polynom(6, &poly);
            for (i, b) in bytes.iter().enumerate() {
                rolling.slide(*b);
                let window = &bytes[(i + 1).saturating_sub(64)..=i];
                assert_eq!(rolling.hash, by_definition(window, poly), "at byte {i}");
            }
            // After a reset and a 63-byte prefill, sliding goes on from there.
            let mut again = Rabin64::new_with_polynom(6, &poly);
            again.slide(0xff);
            assert_eq!(
                again.reset_and_prefill_window(&mut bytes[..64].iter().copied()),
                63
            );
            assert_eq!(again.hash, by_definition(&bytes[..63], poly));
            for (i, b) in bytes.iter().enumerate().skip(63).take(200) {
                again.slide(*b);
                assert_eq!(
                    again.hash,
                    by_definition(&bytes[i - 63..=i], poly),
                    "at {i}"
                );
            }
        }
    }

    #[test]
    fn tables_are_made_once_per_polynomial() {
        let a = Rabin64::new_with_polynom(6, &0x003D_A335_8B4D_C173);
        let b = Rabin64::new_with_polynom(6, &0x003D_A335_8B4D_C173);
        assert!(Arc::ptr_eq(&a.tables, &b.tables));
        let mut c = b.clone();
        c.reset();
        c.prefill_window(&mut data(100).into_iter());
        assert_eq!(
            c.hash,
            by_definition(&data(100)[..63], 0x003D_A335_8B4D_C173)
        );
    }
}
