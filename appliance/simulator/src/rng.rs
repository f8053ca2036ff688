//! Deterministic randomness without the `rand` crate, so a seed gives the same cluster and the
//! same samples on every machine and every build.
//!
//! Two tools: [`Rng`], a seeded SplitMix64 stream used once to build the topology, and the
//! stateless [`hash2`] family used for everything that depends on time, so that every sample is
//! a pure function of (seed, series, timestamp).

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finaliser: a fast bijective 64-bit mixer.
#[inline]
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hashes a key (already well mixed, e.g. a series key) with a second value (a time or index).
#[inline]
pub(crate) fn hash2(key: u64, value: u64) -> u64 {
    mix(key ^ mix(value.wrapping_add(GOLDEN)))
}

/// A uniform float in `[0, 1)` from a hash.
#[inline]
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Two independent uniform floats in `[0, 1)` from one hash (32 bits each).
#[inline]
pub(crate) fn unit_pair(h: u64) -> (f64, f64) {
    const SCALE: f64 = 1.0 / 4_294_967_296.0;
    ((h >> 32) as f64 * SCALE, (h & 0xffff_ffff) as f64 * SCALE)
}

/// Smooth value noise in `[-1, 1]`: random knots every `period_ms`, smoothstep between them.
#[inline]
pub(crate) fn value_noise(key: u64, t: i64, period_ms: i64) -> f64 {
    let k = t.div_euclid(period_ms);
    let frac = t.rem_euclid(period_ms) as f64 / period_ms as f64;
    let a = unit(hash2(key, k as u64));
    let b = unit(hash2(key, (k + 1) as u64));
    let s = frac * frac * (3.0 - 2.0 * frac);
    (a + (b - a) * s) * 2.0 - 1.0
}

/// The alphabet Kubernetes uses for generated name suffixes (no vowels, no confusable digits).
const K8S_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Appends a Kubernetes-style random suffix (`x7k2p`) of `len` characters derived from `h`.
pub(crate) fn push_k8s_suffix(out: &mut String, mut h: u64, len: usize) {
    for i in 0..len {
        if i > 0 && i % 12 == 0 {
            h = mix(h);
        }
        let c = K8S_ALPHABET[(h % K8S_ALPHABET.len() as u64) as usize];
        out.push(c as char);
        h /= K8S_ALPHABET.len() as u64;
    }
}

/// A seeded SplitMix64 stream.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng {
            state: mix(seed ^ 0x7a11_7a11_5eed_0001),
        }
    }

    /// A new independent stream, so that adding draws to one part of the topology does not
    /// shift every other part.
    pub(crate) fn fork(&mut self, salt: u64) -> Rng {
        Rng {
            state: hash2(self.next_u64(), salt),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    pub(crate) fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Log-uniform in `[lo, hi)`: as many values between 1 and 10 as between 10 and 100.
    pub(crate) fn log_range(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }

    /// Uniform in `0..n`; `n` must be positive.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as usize) as i64
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    pub(crate) fn weighted<'a, T>(&mut self, xs: &'a [(T, f64)]) -> &'a T {
        let total: f64 = xs.iter().map(|(_, w)| w).sum();
        let mut x = self.unit() * total;
        for (v, w) in xs {
            if x < *w {
                return v;
            }
            x -= w;
        }
        &xs[xs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_seed_dependent() {
        let a: Vec<u64> = (0..8)
            .scan(Rng::new(1), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..8)
            .scan(Rng::new(1), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..8)
            .scan(Rng::new(2), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn uniforms_stay_in_range_and_are_roughly_uniform() {
        let mut sum = 0.0;
        for i in 0..10_000u64 {
            let u = unit(hash2(7, i));
            assert!((0.0..1.0).contains(&u));
            let (a, b) = unit_pair(hash2(9, i));
            assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
            sum += u;
        }
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
        for t in (-100_000..100_000).step_by(777) {
            let v = value_noise(3, t, 60_000);
            assert!((-1.0..=1.0).contains(&v));
        }
    }

    #[test]
    fn suffixes_use_the_kubernetes_alphabet() {
        let mut s = String::new();
        push_k8s_suffix(&mut s, 0xdead_beef_cafe_f00d, 15);
        assert_eq!(s.len(), 15);
        assert!(s.bytes().all(|c| K8S_ALPHABET.contains(&c)), "{s}");
    }
}
