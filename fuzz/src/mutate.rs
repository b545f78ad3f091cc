//! Turning a corpus entry into a hostile input: generic byte mutations (bit flips, inserts,
//! deletes, repeated blocks, splices of two entries, interesting bytes and words) plus the
//! ones aimed at these parsers: MessagePack length prefixes rewritten to claim huge lengths,
//! deep nesting in either encoding, numbers replaced by boundary values, and the format's
//! own keys dropped in.

use crate::rng::Rng;

/// Inputs never grow past this: big enough for 10,000-fold repetitions of a small block.
pub const MAX_INPUT: usize = 256 * 1024;

/// Input `index` of a run: the corpus entries themselves first, then mutants.
pub fn input(corpus: &[Vec<u8>], seed: u64, index: u64) -> Vec<u8> {
    match corpus.get(index as usize) {
        Some(entry) => entry.clone(),
        None => generate(corpus, &mut Rng::for_input(seed, index)),
    }
}

/// One mutant: a corpus entry with 1 to 8 stacked mutations (one half the time, two a
/// quarter, and so on), so most mutants stay close enough to valid to reach deep code.
pub fn generate(corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = rng.pick(corpus).clone();
    let rounds = 1 + (rng.next_u64().trailing_zeros() as usize).min(7);
    for _ in 0..rounds {
        mutate_once(&mut data, corpus, rng);
        data.truncate(MAX_INPUT);
    }
    data
}

const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb,
    0xcf, 0xd3, 0xd4, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0x90, 0x91, 0x9f, 0x81, 0x8f, 0xa0,
    0xa1, 0xbf, 0xe0, b'{', b'}', b'[', b']', b'"', b',', b':', b'\\', b'-', b'e', b'.', b'0',
    b'9', b' ', b'\n',
];

const INTERESTING_WORDS: &[u64] = &[
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
    i64::MAX as u64,
    0x7ff0_0000_0000_0000, // +inf as f64
    0xfff0_0000_0000_0000, // -inf
    0x7ff8_0000_0000_0000, // NaN
    0x7fef_ffff_ffff_ffff, // f64::MAX
];

/// Text that replaces a number (or any token) in JSON: boundaries of every integer width,
/// non-finite and huge floats, and the wrong types.
const INTERESTING_LITERALS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "0.5",
    "1e308",
    "1e999",
    "-1e999",
    "5e-324",
    "1.7976931348623157e308",
    "255",
    "256",
    "1023",
    "1024",
    "1025",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "100000000000000000000000000000",
    "NaN",
    "Infinity",
    "null",
    "true",
    "\"\"",
    "\"x\"",
    "\"\\ud800\"",
    "[]",
    "{}",
    "[[]]",
];

/// Keys and words of the three formats, in JSON and as MessagePack strings.
const DICTIONARY: &[&str] = &[
    "inputs",
    "x",
    "id",
    "format",
    "flotilla.model.v1",
    "layers",
    "weights",
    "bias",
    "activation",
    "softmax",
    "sigmoid",
    "relu",
    "scaler",
    "mean",
    "std",
    "labels",
    "metadata",
    "metrics",
    "model",
    "current",
    "canary",
    "weight",
    "latest",
    "previous",
    "versions",
    "object",
    "sha256",
    "size",
    "signature",
    "signer",
    "created",
];

fn mutate_once(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    match rng.below(14) {
        0 => flip_bit(data, rng),
        1 => set_byte(data, rng),
        2 => insert_random(data, rng),
        3 => delete_range(data, rng),
        4 => repeat_block(data, rng),
        5 => splice(data, corpus, rng),
        6 | 7 => tamper_length(data, rng),
        8 => nest(data, rng),
        9 => replace_literal(data, rng),
        10 => data.truncate(rng.below(data.len() + 1)),
        11 => add_to_byte(data, rng),
        12 => write_word(data, rng),
        _ => insert_word(data, rng),
    }
}

fn flip_bit(data: &mut [u8], rng: &mut Rng) {
    if !data.is_empty() {
        let i = rng.below(data.len());
        data[i] ^= 1 << rng.below(8);
    }
}

fn set_byte(data: &mut [u8], rng: &mut Rng) {
    if !data.is_empty() {
        let i = rng.below(data.len());
        data[i] = *rng.pick(INTERESTING_BYTES);
    }
}

fn add_to_byte(data: &mut [u8], rng: &mut Rng) {
    if !data.is_empty() {
        let i = rng.below(data.len());
        let delta = rng.below(35) as u8;
        data[i] = if rng.one_in(2) {
            data[i].wrapping_add(delta)
        } else {
            data[i].wrapping_sub(delta)
        };
    }
}

fn insert_random(data: &mut Vec<u8>, rng: &mut Rng) {
    let at = rng.below(data.len() + 1);
    let n = 1 + rng.below(8);
    let bytes: Vec<u8> = (0..n)
        .map(|_| {
            if rng.one_in(2) {
                *rng.pick(INTERESTING_BYTES)
            } else {
                rng.next_u64() as u8
            }
        })
        .collect();
    data.splice(at..at, bytes);
}

fn delete_range(data: &mut Vec<u8>, rng: &mut Rng) {
    if data.is_empty() {
        return;
    }
    let at = rng.below(data.len());
    let n = 1 + rng.below((data.len() - at).min(64));
    data.drain(at..at + n);
}

/// A block repeated up to thousands of times: long rows, many rows, many keys.
fn repeat_block(data: &mut Vec<u8>, rng: &mut Rng) {
    if data.is_empty() {
        return;
    }
    let at = rng.below(data.len());
    let len = 1 + rng.below((data.len() - at).min(32));
    let block = data[at..at + len].to_vec();
    let times = *rng.pick(&[1usize, 2, 3, 8, 100, 1000, 5000]);
    let times = times.min((MAX_INPUT.saturating_sub(data.len())) / len);
    let copies: Vec<u8> = block.iter().copied().cycle().take(len * times).collect();
    data.splice(at..at, copies);
}

/// A piece of another corpus entry over a piece of this one.
fn splice(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    let other = rng.pick(corpus);
    if other.is_empty() {
        return;
    }
    let from = rng.below(other.len());
    let take = 1 + rng.below(other.len() - from);
    let at = rng.below(data.len() + 1);
    let replace = rng.below(data.len() - at + 1);
    data.splice(at..at + replace, other[from..from + take].iter().copied());
}

/// A huge-length prefix: an existing MessagePack container, string or binary header made to
/// claim up to four billion elements or bytes, or a new such header dropped in.
fn tamper_length(data: &mut Vec<u8>, rng: &mut Rng) {
    let claim = *rng.pick(&[
        u32::MAX,
        0x7fff_ffff,
        0x0100_0000,
        0x1_0000,
        0xffff,
        1025,
        1024,
        0,
        1,
        2,
    ]);
    let start = if data.is_empty() {
        0
    } else {
        rng.below(data.len())
    };
    let found = (start..data.len())
        .chain(0..start)
        .find(|&i| matches!(data[i], 0x80..=0xbf | 0xc4..=0xc9 | 0xd9..=0xdf));
    let Some(p) = found else {
        let header: [u8; 1] = [*rng.pick(&[0xddu8, 0xdf, 0xdb, 0xc6])];
        let at = rng.below(data.len() + 1);
        data.splice(at..at, header.into_iter().chain(claim.to_be_bytes()));
        return;
    };
    let set = |data: &mut Vec<u8>, width: usize| {
        let end = (p + 1 + width).min(data.len());
        let bytes = &claim.to_be_bytes()[4 - width..];
        let n = end - (p + 1);
        data[p + 1..end].copy_from_slice(&bytes[..n]);
    };
    match data[p] {
        0x90..=0x9f => {
            data.splice(p..p + 1, [0xdd].into_iter().chain(claim.to_be_bytes()));
        }
        0x80..=0x8f => {
            data.splice(p..p + 1, [0xdf].into_iter().chain(claim.to_be_bytes()));
        }
        0xa0..=0xbf => {
            data.splice(p..p + 1, [0xdb].into_iter().chain(claim.to_be_bytes()));
        }
        0xc4 | 0xc7 | 0xd9 => set(data, 1),
        0xc5 | 0xc8 | 0xda | 0xdc | 0xde => set(data, 2),
        _ => set(data, 4),
    }
}

/// Nesting hundreds to tens of thousands deep, in the input's own encoding.
fn nest(data: &mut Vec<u8>, rng: &mut Rng) {
    let depth = *rng.pick(&[64usize, 127, 128, 129, 500, 1023, 1024, 1025, 5000, 20_000]);
    let at = rng.below(data.len() + 1);
    let json = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let (open, close): (&[u8], &[u8]) = match (json, rng.below(3)) {
        (true, 0) => (b"[", b"]"),
        (true, 1) => (b"{\"a\":", b"}"),
        (true, _) => (b"[1,", b"]"),
        (false, 0) => (&[0x91], &[]),
        (false, 1) => (&[0x81, 0xa1, b'a'], &[]),
        (false, _) => (&[0x92, 0x01], &[]),
    };
    let budget = MAX_INPUT.saturating_sub(data.len()) / (open.len() + close.len());
    let depth = depth.min(budget);
    let mut nested = open.repeat(depth);
    if rng.one_in(2) {
        nested.extend_from_slice(if json { b"0" } else { &[0x00] });
        nested.extend(close.repeat(depth));
    }
    data.splice(at..at, nested);
}

/// A number (any run of number characters) replaced by a boundary value, or a word of the
/// format's vocabulary inserted.
fn replace_literal(data: &mut Vec<u8>, rng: &mut Rng) {
    let numeric = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let start = rng.below(data.len() + 1);
    let found = (start..data.len()).find(|&i| data[i].is_ascii_digit());
    let literal: Vec<u8> = if rng.one_in(4) {
        let word = rng.pick(DICTIONARY);
        if rng.one_in(2) {
            format!("\"{word}\"").into_bytes()
        } else {
            let mut w = vec![0xa0 | word.len() as u8];
            w.extend_from_slice(word.as_bytes());
            w
        }
    } else {
        rng.pick(INTERESTING_LITERALS).as_bytes().to_vec()
    };
    match found {
        Some(mut i) => {
            while i > 0 && numeric(data[i - 1]) {
                i -= 1;
            }
            let mut end = i;
            while end < data.len() && numeric(data[end]) {
                end += 1;
            }
            data.splice(i..end, literal);
        }
        None => {
            data.splice(start..start, literal);
        }
    }
}

fn word(rng: &mut Rng) -> Vec<u8> {
    let value = *rng.pick(INTERESTING_WORDS);
    let width = *rng.pick(&[1usize, 2, 4, 8]);
    value.to_be_bytes()[8 - width..].to_vec()
}

fn write_word(data: &mut [u8], rng: &mut Rng) {
    let w = word(rng);
    if data.len() >= w.len() {
        let at = rng.below(data.len() - w.len() + 1);
        data[at..at + w.len()].copy_from_slice(&w);
    }
}

/// A MessagePack scalar with a boundary value: f64 inf/NaN, u64/i64 extremes.
fn insert_word(data: &mut Vec<u8>, rng: &mut Rng) {
    let at = rng.below(data.len() + 1);
    let value = *rng.pick(INTERESTING_WORDS);
    let marker = *rng.pick(&[0xcbu8, 0xcf, 0xd3]);
    data.splice(at..at, [marker].into_iter().chain(value.to_be_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_reproducible_and_bounded() {
        let corpus = vec![
            b"{\"inputs\": [[1, 2]]}".to_vec(),
            vec![0x81, 0xa1, b'x', 0x91, 0x01],
        ];
        for i in 0..5000 {
            let a = input(&corpus, 7, i);
            assert_eq!(a, input(&corpus, 7, i), "input {i}");
            assert!(a.len() <= MAX_INPUT);
        }
        assert_eq!(input(&corpus, 7, 0), corpus[0]);
        assert_ne!(input(&corpus, 7, 100), input(&corpus, 8, 100));
    }
}
