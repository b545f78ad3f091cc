//! The trainer's only source of randomness: SplitMix64. It was chosen because it fits in a few
//! lines of any language, so the validation split can be reproduced from Python (see
//! `scripts/sklearn_baseline.py`), and it is good enough for weight initialisation, shuffling and
//! dropout. Everything random in a training run derives from the configured seed, so a run is
//! reproducible bit for bit on any machine and with any number of threads.

/// SplitMix64's increment, `2^64 / φ` rounded to odd (Steele, Lea & Flood, "Fast splittable
/// pseudorandom number generators", OOPSLA 2014).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The output of a SplitMix64 generator whose state is `x`: the state is first advanced by
/// the golden gamma `0x9E3779B97F4A7C15`, then mixed by Stafford's "Mix13" finaliser (shifts
/// 30, 27, 31 and the multipliers `0xBF58476D1CE4E5B9`, `0x94D049BB133111EB`), exactly as in
/// Vigna's reference `splitmix64.c`. In Python, with every product masked to 64 bits:
///
/// ```text
/// z = (x + 0x9E3779B97F4A7C15) & M
/// z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
/// z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
/// return z ^ (z >> 31)
/// ```
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 stream. Its n-th output (from 0) is `splitmix64(seed + n * GOLDEN_GAMMA)`.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.state);
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        out
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; its bias is below 2^-40 for any n we use).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_implementation() {
        // The published first outputs for seed 1234567 (Rosetta Code's SplitMix64 task).
        let mut rng = Rng::new(1234567);
        let expected = [
            6457827717110365317u64,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
    }

    #[test]
    fn floats_and_ranges_stay_in_bounds() {
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(rng.below(3) < 3);
        }
        let mut items: Vec<usize> = (0..50).collect();
        rng.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(items, sorted, "a shuffle of 50 items left them in order");
    }
}
