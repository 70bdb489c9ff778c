//! The stable runner's mutator: a few stacked byte-level mutations of a
//! corpus input (bit flips, interesting values, arithmetic on little-endian
//! integers, inserted and deleted ranges, tokens of the JSON formats,
//! splices with another input), as AFL's havoc stage does, without its
//! coverage feedback. Deterministic for a given random generator.

use rand::Rng;
use rand::rngs::StdRng;

/// Values at the edges of integer ranges, little-endian.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
    56,
    64 * 1024 * 1024,
];

/// Pieces of the JSON the controller, snapshot and group records use.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"4294967295",
    b"1e309",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"[[\"t\",0],1]",
    b"{\"term\":18446744073709551615,\"node_id\":1}",
    b"\"index\":18446744073709551615",
    b"\"next_offset\":18446744073709551615",
    b"\"next_topic_id\":18446744073709551615",
];

/// Mutates `data` in place (1 to 8 stacked mutations), keeping it at most
/// `max_len` bytes; `other` is another input to splice from.
pub fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let rounds = 1 << rng.random_range(0..4);
    for _ in 0..rounds {
        mutate_once(rng, data, other);
    }
    data.truncate(max_len);
}

fn mutate_once(rng: &mut StdRng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    match rng.random_range(0..11) {
        0 if len > 0 => {
            let at = rng.random_range(0..len);
            data[at] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let at = rng.random_range(0..len);
            data[at] = rng.random();
        }
        2 if len > 0 => {
            // An interesting value of 1, 2, 4 or 8 bytes.
            let width = 1usize << rng.random_range(0..4);
            let at = rng.random_range(0..len);
            let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
            let bytes = value.to_le_bytes();
            let n = width.min(len - at);
            data[at..at + n].copy_from_slice(&bytes[..n]);
        }
        3 if len >= 4 => {
            // Add or subtract a little from a u32.
            let at = rng.random_range(0..=len - 4);
            let mut word = [0u8; 4];
            word.copy_from_slice(&data[at..at + 4]);
            let delta = rng.random_range(1..=35u32);
            let v = u32::from_le_bytes(word);
            let v = if rng.random() { v.wrapping_add(delta) } else { v.wrapping_sub(delta) };
            data[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        4 if len > 1 => {
            // Delete a range.
            let from = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - from).min(64));
            data.drain(from..from + n);
        }
        5 => {
            // Insert random bytes.
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=32);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(at..at, bytes);
        }
        6 if len > 0 => {
            // Duplicate a range.
            let from = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - from).min(256));
            let copy = data[from..from + n].to_vec();
            let at = rng.random_range(0..=len);
            data.splice(at..at, copy);
        }
        7 | 8 => {
            // A token of the JSON formats, inserted or written over.
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            let at = rng.random_range(0..=len);
            if rng.random() || at + token.len() > len {
                data.splice(at..at, token.iter().copied());
            } else {
                data[at..at + token.len()].copy_from_slice(token);
            }
        }
        9 if !other.is_empty() => {
            // Splice: our head, the other's tail.
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ if len > 0 => {
            // Truncate.
            let keep = rng.random_range(0..len);
            data.truncate(keep);
        }
        _ => data.push(rng.random()),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mutations_are_deterministic_and_bounded() {
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut data = b"{\"a\":1}".to_vec();
            for _ in 0..1000 {
                mutate(&mut rng, &mut data, b"[1,2,3]", 100);
                assert!(data.len() <= 100);
            }
            data
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
