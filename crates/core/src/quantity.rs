//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`): the exact grammar of
//! `k8s.io/apimachinery/pkg/api/resource`, an exact value, and the canonical form.
//!
//! Values are held exactly as an integer count of nano-units (10⁻⁹), which covers every
//! quantity a node or pod can carry; finer fractions are rounded up, as Kubernetes does.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Nano-units in one unit.
const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Largest magnitude accepted, in nano-units: `i64::MAX` whole units.
const MAX_NANOS: i128 = (i64::MAX as i128) * NANOS_PER_UNIT;

/// How a quantity was written; the canonical form keeps the same family of suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantityFormat {
    /// Powers of two: `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`.
    BinarySi,
    /// Powers of ten with SI letters: `n`, `u`, `m`, (none), `k`, `M`, `G`, `T`, `P`, `E`.
    DecimalSi,
    /// Powers of ten written as an exponent: `e3`, `E-6`.
    DecimalExponent,
}

/// A parsed Kubernetes quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantity {
    nanos: i128,
    format: QuantityFormat,
}

/// Why a string is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    /// The string is empty.
    #[error("empty quantity: expected a number such as 500m, 2 or 16Gi")]
    Empty,
    /// The string does not follow the quantity grammar.
    #[error("invalid quantity {input:?}: {reason}")]
    Syntax {
        /// The offending text.
        input: String,
        /// What was expected instead.
        reason: &'static str,
    },
    /// The value does not fit the supported range.
    #[error("quantity {input:?} is out of range: at most {max} units are supported", max = i64::MAX)]
    OutOfRange {
        /// The offending text.
        input: String,
    },
    /// A negative quantity where only non-negative ones make sense.
    #[error("quantity {input:?} is negative; a resource amount must be zero or more")]
    Negative {
        /// The offending text.
        input: String,
    },
}

impl Quantity {
    /// Parses a quantity with the Kubernetes grammar:
    /// `<sign><digits>[.<digits>]<suffix>` where the suffix is binary SI, decimal SI or an exponent.
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        if input.is_empty() {
            return Err(QuantityError::Empty);
        }
        let syntax = |reason| QuantityError::Syntax { input: input.to_owned(), reason };
        let range = || QuantityError::OutOfRange { input: input.to_owned() };
        let bytes = input.as_bytes();
        let mut pos = 0;
        let negative = match bytes.first() {
            Some(b'-') => {
                pos += 1;
                true
            }
            Some(b'+') => {
                pos += 1;
                false
            }
            _ => false,
        };
        let int_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let int_digits = &input[int_start..pos];
        let mut frac_digits = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let frac_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            frac_digits = &input[frac_start..pos];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(syntax("expected digits, optionally with a decimal point"));
        }
        let suffix = &input[pos..];
        let (format, base2_shift, exp10) = parse_suffix(suffix).ok_or_else(|| {
            syntax("expected a suffix among Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent such as e3")
        })?;

        // Mantissa as an exact integer with `frac_digits.len()` decimal places.
        let mut mantissa: i128 = 0;
        for d in int_digits.bytes().chain(frac_digits.bytes()) {
            mantissa = mantissa.checked_mul(10).and_then(|m| m.checked_add(i128::from(d - b'0'))).ok_or_else(range)?;
            if mantissa > MAX_NANOS * 10 {
                return Err(range());
            }
        }
        // value = mantissa * 10^(exp10 - frac) * 2^shift, expressed in nanos (×10^9).
        let scale10 = exp10 - frac_digits.len() as i64 + 9;
        let mut nanos = mantissa.checked_mul(1i128 << base2_shift).ok_or_else(range)?;
        if scale10 >= 0 {
            for _ in 0..scale10 {
                nanos = nanos.checked_mul(10).ok_or_else(range)?;
                if nanos > MAX_NANOS {
                    return Err(range());
                }
            }
        } else {
            let mut divisor: i128 = 1;
            for _ in 0..(-scale10) {
                divisor = divisor.saturating_mul(10);
            }
            // Kubernetes rounds precision finer than a nano-unit up (away from zero).
            let rounded_up = nanos % divisor != 0;
            nanos /= divisor;
            if rounded_up {
                nanos += 1;
            }
        }
        if nanos > MAX_NANOS {
            return Err(range());
        }
        Ok(Quantity { nanos: if negative { -nanos } else { nanos }, format })
    }

    /// Parses a quantity that must not be negative.
    pub fn parse_non_negative(input: &str) -> Result<Self, QuantityError> {
        let q = Self::parse(input)?;
        if q.nanos < 0 {
            return Err(QuantityError::Negative { input: input.to_owned() });
        }
        Ok(q)
    }

    /// A whole number of units (bytes, cores, devices) in decimal SI form.
    pub fn from_units(units: i64) -> Self {
        Quantity { nanos: i128::from(units) * NANOS_PER_UNIT, format: QuantityFormat::DecimalSi }
    }

    /// The value in thousandths of a unit, rounded up (Kubernetes `MilliValue`).
    pub fn milli_value(&self) -> i64 {
        ceil_div(self.nanos, 1_000_000) as i64
    }

    /// The value in whole units, rounded up (Kubernetes `Value`).
    pub fn value(&self) -> i64 {
        ceil_div(self.nanos, NANOS_PER_UNIT) as i64
    }

    /// The exact value in nano-units.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// The suffix family this quantity is written in.
    pub fn format(&self) -> QuantityFormat {
        self.format
    }
}

fn ceil_div(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d != 0 && n > 0 { q + 1 } else { q }
}

/// Returns (format, power of two, power of ten) for a suffix.
fn parse_suffix(suffix: &str) -> Option<(QuantityFormat, u32, i64)> {
    use QuantityFormat::*;
    let decimal = |e| Some((DecimalSi, 0, e));
    let binary = |s| Some((BinarySi, s, 0));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let rest = suffix.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: i64 = rest.parse().ok()?;
            Some((DecimalExponent, 0, exp))
        }
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Quantity {
    /// The canonical form, as `Quantity.String()` prints it in Kubernetes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        if self.format == QuantityFormat::BinarySi && abs.is_multiple_of(NANOS_PER_UNIT as u128) {
            let units = abs / NANOS_PER_UNIT as u128;
            // Below 1Ki, Kubernetes prints binary quantities in decimal form.
            if units >= 1024 {
                let mut shift = 0;
                let mut m = units;
                while shift < 60 && m.is_multiple_of(1024) {
                    m /= 1024;
                    shift += 10;
                }
                let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][shift / 10];
                return write!(f, "{sign}{m}{suffix}");
            }
        }
        if abs == 0 {
            return write!(f, "0");
        }
        // Decimal: the largest multiple-of-three exponent that leaves an integer mantissa.
        let mut exp: i64 = -9;
        let mut m = abs;
        while exp < 18 && m.is_multiple_of(1000) {
            m /= 1000;
            exp += 3;
        }
        if self.format == QuantityFormat::DecimalExponent {
            return if exp == 0 { write!(f, "{sign}{m}") } else { write!(f, "{sign}{m}e{exp}") };
        }
        let suffix = match exp {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            _ => "E",
        };
        write!(f, "{sign}{m}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_suffix_family() {
        assert_eq!(q("500m").milli_value(), 500);
        assert_eq!(q("2").milli_value(), 2000);
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("16Gi").value(), 16 << 30);
        assert_eq!(q("1Ki").value(), 1024);
        assert_eq!(q("1k").value(), 1000);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E-3").milli_value(), 1);
        assert_eq!(q("100u").milli_value(), 1, "milli value rounds up");
        assert_eq!(q("-1").value(), -1);
        assert_eq!(q("+4").value(), 4);
        assert_eq!(q(".5").milli_value(), 500);
        assert_eq!(q("5.").value(), 5);
        assert_eq!(q("1Ei").value(), 1 << 60);
    }

    #[test]
    fn canonical_forms_match_kubernetes() {
        for (input, canonical) in [
            ("1000m", "1"),
            ("0.1", "100m"),
            ("1.5Gi", "1536Mi"),
            ("1024", "1024"),
            ("1500", "1500"),
            ("1000", "1k"),
            ("1.5k", "1500"),
            ("0.5Ki", "512"),
            ("1Ki", "1Ki"),
            ("2048Ki", "2Mi"),
            ("1e3", "1e3"),
            ("1500e0", "1500"),
            ("0", "0"),
            ("-250m", "-250m"),
            ("0.0000000001", "1n"),
        ] {
            assert_eq!(q(input).to_string(), canonical, "canonical form of {input}");
        }
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        for bad in ["", "abc", "1.2.3", "12Q", "1e", "e3", "--1", "1 Gi", "1ki", "1e1000", ".", "1e+"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(matches!(Quantity::parse("99999999999999999999"), Err(QuantityError::OutOfRange { .. })));
        assert!(matches!(Quantity::parse("9Ei"), Err(QuantityError::OutOfRange { .. })));
        assert!(matches!(Quantity::parse_non_negative("-1"), Err(QuantityError::Negative { .. })));
        let msg = Quantity::parse("12Q").map(|_| ()).unwrap_err().to_string();
        assert!(msg.contains("12Q") && msg.contains("suffix"), "{msg}");
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(nanos in -MAX_NANOS..=MAX_NANOS, fmt in 0u8..3) {
            let format = [QuantityFormat::BinarySi, QuantityFormat::DecimalSi, QuantityFormat::DecimalExponent][fmt as usize];
            let original = Quantity { nanos, format };
            let printed = original.to_string();
            let reparsed = Quantity::parse(&printed).unwrap();
            prop_assert_eq!(reparsed.nanos, original.nanos, "{} reparsed", printed);
            prop_assert_eq!(reparsed.to_string(), printed);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,24}") {
            let _ = Quantity::parse(&s);
        }

        #[test]
        fn milli_integers_round_trip(milli in 0i64..1_000_000_000_000) {
            let s = format!("{milli}m");
            prop_assert_eq!(Quantity::parse(&s).unwrap().milli_value(), milli);
        }
    }
}
