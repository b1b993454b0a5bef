//! Double-double arithmetic: sums of f64 values carried with about 106 bits of
//! mantissa, so that the difference of two prefix sums is exact to far below
//! the 1e-9 relative error the answers promise, even over billions of values.

/// An unevaluated sum `hi + lo` with `|lo| <= ulp(hi) / 2`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DoubleDouble {
    pub hi: f64,
    pub lo: f64,
}

#[inline]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    (s, err)
}

#[inline]
fn fast_two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    (s, b - (s - a))
}

impl DoubleDouble {
    pub const ZERO: DoubleDouble = DoubleDouble { hi: 0.0, lo: 0.0 };

    #[inline]
    pub fn new(hi: f64, lo: f64) -> Self {
        DoubleDouble { hi, lo }
    }

    /// `self + x`.
    #[inline]
    pub fn add_f64(self, x: f64) -> Self {
        let (s, e) = two_sum(self.hi, x);
        let (hi, lo) = fast_two_sum(s, e + self.lo);
        DoubleDouble { hi, lo }
    }

    /// The nearest f64.
    #[inline]
    pub fn value(self) -> f64 {
        self.hi + self.lo
    }
}

impl std::ops::Add for DoubleDouble {
    type Output = DoubleDouble;

    #[inline]
    fn add(self, other: DoubleDouble) -> DoubleDouble {
        let (s, e) = two_sum(self.hi, other.hi);
        let (hi, lo) = fast_two_sum(s, e + self.lo + other.lo);
        DoubleDouble { hi, lo }
    }
}

impl std::ops::Sub for DoubleDouble {
    type Output = DoubleDouble;

    #[inline]
    fn sub(self, other: DoubleDouble) -> DoubleDouble {
        self + DoubleDouble {
            hi: -other.hi,
            lo: -other.lo,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_difference_keeps_small_windows_exact() {
        // A large running total followed by a tiny window: plain f64 loses it.
        let mut prefix = DoubleDouble::ZERO;
        for _ in 0..1_000_000 {
            prefix = prefix.add_f64(1e9 + 0.1);
        }
        let before = prefix;
        prefix = prefix.add_f64(1e-7);
        // Plain f64 would answer 0 here; double-double keeps ~106 bits of the
        // running total, so the error is ~1e-32 of the total, not of the window.
        let window = (prefix - before).value();
        assert!((window - 1e-7).abs() < 1e-16, "{window}");
    }
}
