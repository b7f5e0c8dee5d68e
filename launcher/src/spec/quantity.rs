//! Kubernetes resource quantities (`1Gi`, `500m`, `1.5G`, `2`, `1e3`).
//!
//! The grammar is Kubernetes' (`k8s.io/apimachinery/pkg/api/resource`):
//!
//! ```text
//! quantity ::= number [suffix]
//! number   ::= digits | digits "." [digits] | "." digits     (an optional leading "+")
//! suffix   ::= binarySI | decimalSI | ("e" | "E") signedInteger
//! binarySI ::= Ki | Mi | Gi | Ti | Pi | Ei                      (powers of 1024)
//! decimalSI::= n | u | m | "" | k | M | G | T | P | E           (powers of 1000)
//! ```
//!
//! A value is kept exactly (a numerator over a power of ten), then converted with overflow
//! checks. Like Kubernetes' `Quantity.Value()` and `MilliValue()`, conversions round **up**:
//! `500m` is 1 whole unit, `1.5` bytes is 2 bytes. Negative quantities are refused: no
//! resource this launcher reads can be negative.

/// Why a quantity was refused. Every message names the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{text:?} is not a Kubernetes quantity: {reason}")]
    Invalid { text: String, reason: String },
    #[error("{text:?} is negative: a resource quantity must be zero or more")]
    Negative { text: String },
    #[error("{text:?} is too large (it does not fit in 64 bits once converted to {unit})")]
    Overflow { text: String, unit: &'static str },
}

/// An exact, non-negative quantity: `num / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    num: u128,
    /// Power of ten of the denominator (0..=MAX_SCALE).
    scale: u32,
}

/// Largest power of ten that fits u128 comfortably (10^38 < 2^127).
const MAX_SCALE: u32 = 38;

impl Quantity {
    /// Parses a quantity. Leading/trailing whitespace is not allowed (Kubernetes refuses it).
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        parse(text)
    }

    /// The value in whole units (bytes for memory, cores for CPU), rounded up.
    pub fn to_units_ceil(&self) -> Option<u64> {
        let den = 10u128.checked_pow(self.scale)?;
        let q = self.num / den + u128::from(self.num % den != 0);
        u64::try_from(q).ok()
    }

    /// The value in thousandths (millicores for CPU), rounded up.
    pub fn to_millis_ceil(&self) -> Option<u64> {
        let milli = Quantity {
            num: self.num.checked_mul(1000)?,
            scale: self.scale,
        };
        milli.to_units_ceil()
    }

    /// True when the quantity is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.num == 0
    }
}

/// Parses `text` and returns it in bytes (whole units, rounded up).
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    parse(text)?
        .to_units_ceil()
        .ok_or_else(|| QuantityError::Overflow {
            text: text.to_string(),
            unit: "bytes",
        })
}

/// Parses `text` and returns it in thousandths (millicores for CPU), rounded up.
pub fn parse_millis(text: &str) -> Result<u64, QuantityError> {
    parse(text)?
        .to_millis_ceil()
        .ok_or_else(|| QuantityError::Overflow {
            text: text.to_string(),
            unit: "thousandths",
        })
}

/// Formats a byte count the way a person would write it in a manifest (`1Gi`, `1536Mi`, `100`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    if bytes == 0 {
        return "0".into();
    }
    for (suffix, shift) in UNITS {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

fn invalid(text: &str, reason: impl Into<String>) -> QuantityError {
    QuantityError::Invalid {
        text: text.to_string(),
        reason: reason.into(),
    }
}

fn overflow(text: &str) -> QuantityError {
    QuantityError::Overflow {
        text: text.to_string(),
        unit: "an exact value",
    }
}

fn parse(text: &str) -> Result<Quantity, QuantityError> {
    if text.is_empty() {
        return Err(invalid(text, "it is empty"));
    }
    let mut rest = text;
    if let Some(r) = rest.strip_prefix('-') {
        // Parse the magnitude so that "-x" still reports "x" problems first.
        parse(r)?;
        return Err(QuantityError::Negative {
            text: text.to_string(),
        });
    }
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    // The number: digits with at most one '.'.
    let num_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_len);
    if number.is_empty() || number == "." {
        return Err(invalid(text, "it does not start with a number"));
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => {
            if f.contains('.') {
                return Err(invalid(text, "it has more than one decimal point"));
            }
            (i, f)
        }
        None => (number, ""),
    };
    let mut num: u128 = 0;
    for c in int_part.chars().chain(frac_part.chars()) {
        let d = u128::from(c as u8 - b'0');
        num = num
            .checked_mul(10)
            .and_then(|n| n.checked_add(d))
            .ok_or_else(|| overflow(text))?;
    }
    // Value so far: num * 10^-frac_len.
    let mut exp10: i64 = -(frac_part.len() as i64);
    let mut binary_shift: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => binary_shift = 10,
        "Mi" => binary_shift = 20,
        "Gi" => binary_shift = 30,
        "Ti" => binary_shift = 40,
        "Pi" => binary_shift = 50,
        "Ei" => binary_shift = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        s if s.starts_with(['e', 'E']) => {
            let digits = &s[1..];
            let (neg, digits) = match digits.as_bytes().first() {
                Some(b'-') => (true, &digits[1..]),
                Some(b'+') => (false, &digits[1..]),
                _ => (false, digits),
            };
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(invalid(
                    text,
                    format!("the exponent {s:?} is not e or E followed by an integer"),
                ));
            }
            let e: i64 = digits.parse().map_err(|_| overflow(text))?;
            if e > 1000 {
                return Err(overflow(text));
            }
            exp10 += if neg { -e } else { e };
        }
        other => {
            return Err(invalid(
                text,
                format!(
                    "unknown suffix {other:?} (use Ki, Mi, Gi, Ti, Pi, Ei; n, u, m, k, M, G, T, P, E; or an exponent like e3)"
                ),
            ))
        }
    }
    if num == 0 {
        return Ok(Quantity { num: 0, scale: 0 });
    }
    num = num
        .checked_mul(1u128 << binary_shift)
        .ok_or_else(|| overflow(text))?;
    if exp10 >= 0 {
        let mul = u32::try_from(exp10)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .ok_or_else(|| overflow(text))?;
        num = num.checked_mul(mul).ok_or_else(|| overflow(text))?;
        Ok(Quantity { num, scale: 0 })
    } else {
        let mut scale = u32::try_from(-exp10).map_err(|_| overflow(text))?;
        // Drop trailing zeros so that tiny exponents with big numerators still fit.
        while scale > 0 && num % 10 == 0 {
            num /= 10;
            scale -= 1;
        }
        if scale > MAX_SCALE {
            // Smaller than 10^-38 but not zero: it rounds up to one of anything.
            return Ok(Quantity {
                num: 1,
                scale: MAX_SCALE,
            });
        }
        Ok(Quantity { num, scale })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> u64 {
        parse_bytes(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn millis(s: &str) -> u64 {
        parse_millis(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn binary_suffixes() {
        assert_eq!(bytes("1Ki"), 1024);
        assert_eq!(bytes("128Mi"), 128 << 20);
        assert_eq!(bytes("2Gi"), 2 << 30);
        assert_eq!(bytes("1Ti"), 1 << 40);
        assert_eq!(bytes("1Pi"), 1 << 50);
        assert_eq!(bytes("7Ei"), 7 << 60);
    }

    #[test]
    fn decimal_suffixes() {
        assert_eq!(bytes("1k"), 1000);
        assert_eq!(bytes("1024M"), 1_024_000_000);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("2T"), 2_000_000_000_000);
        assert_eq!(bytes("1P"), 1_000_000_000_000_000);
        assert_eq!(bytes("9E"), 9_000_000_000_000_000_000);
    }

    #[test]
    fn plain_numbers_and_decimals() {
        assert_eq!(bytes("0"), 0);
        assert_eq!(bytes("2"), 2);
        assert_eq!(bytes("+3"), 3);
        assert_eq!(bytes("1.5Gi"), 3 << 29);
        assert_eq!(bytes("0.5Ki"), 512);
        assert_eq!(bytes(".5Ki"), 512);
        assert_eq!(bytes("5.Ki"), 5120);
    }

    #[test]
    fn milli_and_smaller_round_up() {
        assert_eq!(millis("500m"), 500);
        assert_eq!(millis("2"), 2000);
        assert_eq!(millis("0.1"), 100);
        assert_eq!(millis("1u"), 1, "one micro rounds up to one milli");
        assert_eq!(millis("1n"), 1);
        assert_eq!(bytes("500m"), 1, "Kubernetes' Value() rounds up");
        assert_eq!(bytes("1500m"), 2);
        assert_eq!(bytes("2000m"), 2);
        assert_eq!(bytes("1.5"), 2);
    }

    #[test]
    fn exponents() {
        assert_eq!(bytes("1e3"), 1000);
        assert_eq!(bytes("1E3"), 1000);
        assert_eq!(bytes("1.5e3"), 1500);
        assert_eq!(bytes("1e+3"), 1000);
        assert_eq!(millis("1e-3"), 1);
        assert_eq!(bytes("12e-1"), 2);
        assert_eq!(bytes("1000e-3"), 1);
        assert_eq!(millis("1e-50"), 1, "tiny but positive rounds up");
    }

    #[test]
    fn zero_is_zero_whatever_the_suffix() {
        assert!(Quantity::parse("0Gi").unwrap().is_zero());
        assert!(Quantity::parse("0e99").unwrap().is_zero());
        assert_eq!(bytes("0.0"), 0);
    }

    #[test]
    fn invalid_text_is_refused_with_the_text_named() {
        for bad in [
            "", "Gi", "1Xi", "1 Gi", " 1", "1gi", "1.2.3", "1e", "1e1.5", "abc", "1Gi ", ".",
            "1KiB",
        ] {
            let err = parse_bytes(bad).expect_err(bad);
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad:?}: message {err} should name the text"
            );
        }
    }

    #[test]
    fn negative_is_refused() {
        assert_eq!(
            parse_bytes("-1Gi"),
            Err(QuantityError::Negative {
                text: "-1Gi".into()
            })
        );
        assert!(matches!(
            parse_bytes("-1Xi"),
            Err(QuantityError::Invalid { .. })
        ));
    }

    #[test]
    fn overflow_is_detected_not_wrapped() {
        assert!(matches!(
            parse_bytes("16Ei"),
            Err(QuantityError::Overflow { .. })
        ));
        assert_eq!(bytes("15Ei"), 15 << 60);
        assert!(matches!(
            parse_bytes("1e20"),
            Err(QuantityError::Overflow { .. })
        ));
        assert!(matches!(
            parse_bytes("1e99999"),
            Err(QuantityError::Overflow { .. })
        ));
        assert!(matches!(
            parse_bytes("99999999999999999999999999999999999999999999"),
            Err(QuantityError::Overflow { .. })
        ));
        assert!(matches!(
            parse_millis("18446744073709552"),
            Err(QuantityError::Overflow { .. })
        ));
        assert_eq!(millis("18446744073709551"), 18_446_744_073_709_551_000);
    }

    #[test]
    fn formatting_bytes_picks_the_largest_exact_binary_unit() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(format_bytes(1_024_000_000), "1000000Ki");
        assert_eq!(format_bytes(100), "100");
    }

    proptest::proptest! {
        #[test]
        fn binary_suffixes_multiply_exactly(n in 0u64..(1 << 20), i in 0usize..5) {
            let (suffix, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40), ("Pi", 50)][i];
            let expected = n.checked_shl(shift).filter(|v| v >> shift == n);
            proptest::prop_assert_eq!(parse_bytes(&format!("{n}{suffix}")).ok(), expected);
        }

        #[test]
        fn formatted_bytes_parse_back(b in proptest::prelude::any::<u64>()) {
            proptest::prop_assert_eq!(parse_bytes(&format_bytes(b)), Ok(b));
        }

        #[test]
        fn millis_are_a_thousand_times_units_rounded_up(m in 0u64..10_000_000) {
            let text = format!("{m}m");
            proptest::prop_assert_eq!(parse_millis(&text), Ok(m));
            proptest::prop_assert_eq!(parse_bytes(&text), Ok(m.div_ceil(1000)));
        }

        #[test]
        fn decimal_and_exponent_forms_agree(n in 0u64..1_000_000, e in 0u32..9) {
            let exp = parse_bytes(&format!("{n}e{e}"));
            let plain = n.checked_mul(10u64.pow(e)).ok_or(());
            proptest::prop_assert_eq!(exp.map_err(|_| ()), plain);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,12}") {
            let _ = parse_bytes(&s);
            let _ = parse_millis(&s);
        }
    }
}
