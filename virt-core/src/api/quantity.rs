//! Kubernetes resource quantities (`500Mi`, `10Gi`, `1G`, `1e9`, `1073741824`, `500m`) read as whole
//! units (bytes for memory and storage) and, for CPU, as thousandths.
//!
//! The grammar is the one of `k8s.io/apimachinery/pkg/api/resource.Quantity`:
//!
//! ```text
//! quantity    ::= sign? number suffix
//! number      ::= digits | digits "." digits? | "." digits
//! suffix      ::= "" | binarySI | decimalSI | ("e" | "E") sign? digits
//! binarySI    ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI   ::= m | k | M | G | T | P | E
//! ```
//!
//! Like `Quantity.Value()`, a fractional value is rounded up (`0.5` and `100m` are one byte);
//! [`Quantity::milli_value`] is `Quantity.MilliValue()` (`500m` CPU is 500 millicores).
//! No quantity in the CDI and KubeVirt APIs modelled here may be negative (sizes, memory, CPU,
//! bandwidth), so a leading `-` is refused here rather than left to validation.
//! All arithmetic is checked: a quantity beyond `u64::MAX` bytes is an error, never a wrap.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {input:?}: {reason}")]
pub struct QuantityError {
    /// The text that was parsed.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

fn qerr(input: &str, reason: impl Into<String>) -> QuantityError {
    QuantityError { input: input.to_string(), reason: reason.into() }
}

/// A quantity: the text as written (kept for round trips) and its value in whole units (bytes for
/// memory and storage). Two quantities are equal when they are written the same way; compare
/// [`Quantity::bytes`] to compare values (`1Gi` and `1073741824`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    text: String,
    bytes: u64,
}

impl Quantity {
    /// Parses a Kubernetes quantity, rounding a fractional value up to a whole unit.
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let bytes = parse_scaled(input, 0)?;
        Ok(Self { text: input.to_string(), bytes })
    }

    /// A quantity of exactly `bytes`, written as a plain integer.
    pub fn from_bytes(bytes: u64) -> Self {
        Self { text: bytes.to_string(), bytes }
    }

    /// The value in whole units, rounded up: bytes for memory and storage, cores for CPU.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The value in thousandths, rounded up, like `Quantity.MilliValue()` (`500m` CPU is 500,
    /// `2` is 2000). `None` when a thousand times the value exceeds `u64::MAX`.
    pub fn milli_value(&self) -> Option<u64> {
        parse_scaled(&self.text, 3).ok()
    }

    /// The text as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the value is zero bytes.
    pub fn is_zero(&self) -> bool {
        self.bytes == 0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Decimal digits of mantissa beyond which the value no longer fits the checked u128 arithmetic.
const MAX_DIGITS: usize = 38;

/// The value of `input` times `10^scale`, rounded up.
fn parse_scaled(input: &str, scale: i64) -> Result<u64, QuantityError> {
    if input.is_empty() {
        return Err(qerr(input, "empty quantity"));
    }
    let mut rest = input;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return Err(qerr(input, "a quantity cannot be negative here"));
    }
    // Number: digits with an optional single '.'.
    let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac_part.contains('.') {
        return Err(qerr(input, "more than one decimal point"));
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(qerr(input, "no digits before the suffix"));
    }
    let digits = format!("{int_part}{frac_part}");
    let significant = digits.trim_start_matches('0');
    if significant.len() > MAX_DIGITS {
        return Err(qerr(input, "too many digits"));
    }
    let mut mantissa: u128 = 0;
    for d in significant.bytes() {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(d - b'0')))
            .ok_or_else(|| qerr(input, "too many digits"))?;
    }
    // value = mantissa * 2^bin * 10^dec / 10^frac_len
    let (bin_exp, dec_exp): (u32, i64) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let body = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
                return Err(qerr(input, format!("unknown suffix {s:?}")));
            }
            // Exponents are bounded well before they could overflow i64.
            if body.len() > 6 {
                return Err(qerr(input, "exponent out of range"));
            }
            let e: i64 = exp
                .parse()
                .map_err(|_| qerr(input, format!("bad exponent {exp:?}")))?;
            (0, e)
        }
        s => {
            return Err(qerr(
                input,
                format!(
                    "unknown suffix {s:?} (expected one of Ki Mi Gi Ti Pi Ei, m k M G T P E, or an exponent like e9)"
                ),
            ))
        }
    };
    let frac_len = i64::try_from(frac_part.len()).map_err(|_| qerr(input, "too many digits"))?;
    let scale = dec_exp + scale - frac_len; // power of ten
    if mantissa == 0 {
        return Ok(0);
    }
    let too_large = || qerr(input, "larger than 2^64-1");
    let mut num =
        mantissa.checked_mul(1u128.checked_shl(bin_exp).ok_or_else(too_large)?).ok_or_else(too_large)?;
    let value = if scale >= 0 {
        let p = u32::try_from(scale).map_err(|_| too_large())?;
        let mul = 10u128.checked_pow(p).ok_or_else(too_large)?;
        num = num.checked_mul(mul).ok_or_else(too_large)?;
        num
    } else {
        let p = u32::try_from(-scale).map_err(|_| too_large())?;
        match 10u128.checked_pow(p) {
            // Round up, like Quantity.Value().
            Some(den) => num.div_ceil(den),
            // The divisor exceeds u128, so 0 < value < 1: it rounds up to one byte.
            None => 1,
        }
    };
    u64::try_from(value).map_err(|_| too_large())
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantity such as 10Gi, 500Mi, 1G or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Quantity::parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        Ok(Quantity::from_bytes(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        match u64::try_from(v) {
            Ok(b) => Ok(Quantity::from_bytes(b)),
            Err(_) => Err(E::custom(qerr(&v.to_string(), "a quantity cannot be negative here"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        // YAML reads `1e9` as a float; the API server accepts a JSON number for a quantity too.
        // An integral value that fits is written back as an integer, anything else in exponent form.
        if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 18_446_744_073_709_551_616.0 {
            // The checks above make this conversion exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let b = v as u64;
            return Ok(Quantity::from_bytes(b));
        }
        let text = format!("{v:e}");
        Quantity::parse(&text).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// A quantity is a string (`"2Gi"`) or a number (`2`) on the wire: Kubernetes' int-or-string.
impl schemars::JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Kubernetes quantity: a number or a string such as 2Gi or 500m.",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{ "type": "integer" }, { "type": "string" }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> u64 {
        Quantity::parse(s).unwrap().bytes()
    }

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(b("500Mi"), 500 * 1024 * 1024);
        assert_eq!(b("10Gi"), 10 << 30);
        assert_eq!(b("1Ki"), 1024);
        assert_eq!(b("1Ei"), 1 << 60);
        assert_eq!(b("1G"), 1_000_000_000);
        assert_eq!(b("100M"), 100_000_000);
        assert_eq!(b("5k"), 5000);
        assert_eq!(b("2T"), 2_000_000_000_000);
        assert_eq!(b("1E"), 1_000_000_000_000_000_000);
        assert_eq!(b("1073741824"), 1 << 30);
        assert_eq!(b("+1Ki"), 1024);
        assert_eq!(b("0"), 0);
    }

    #[test]
    fn exponents_and_fractions_round_up() {
        assert_eq!(b("1e9"), 1_000_000_000);
        assert_eq!(b("1E3"), 1000);
        assert_eq!(b("12e-1"), 2);
        assert_eq!(b("1.5Gi"), 1_610_612_736);
        assert_eq!(b("0.5"), 1);
        assert_eq!(b(".5Ki"), 512);
        assert_eq!(b("1."), 1);
        assert_eq!(b("100m"), 1);
        assert_eq!(b("1000m"), 1);
        assert_eq!(b("1001m"), 2);
        assert_eq!(b("1e-999"), 1);
        assert_eq!(b("0e999"), 0);
    }

    #[test]
    fn bad_quantities_are_errors_naming_the_input() {
        for bad in [
            "", "Gi", "10Gb", "10 Gi", " 1", "1..2", "1.2.3", "-1Gi", "1e", "1e+", "1ex", "ten", "1Ki2",
            "0x10",
        ] {
            let err = Quantity::parse(bad).unwrap_err();
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn milli_values() {
        let m = |s: &str| Quantity::parse(s).unwrap().milli_value();
        assert_eq!(m("500m"), Some(500));
        assert_eq!(m("2"), Some(2000));
        assert_eq!(m("1.5"), Some(1500));
        assert_eq!(m("0.0001"), Some(1));
        assert_eq!(m("1k"), Some(1_000_000));
        assert_eq!(m("18446744073709551615"), None);
        assert_eq!(Quantity::parse("500m").unwrap().bytes(), 1);
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(Quantity::parse("16Ei").is_err());
        assert_eq!(b("15Ei"), 15 << 60);
        assert!(Quantity::parse("18446744073709551616").is_err());
        assert_eq!(b("18446744073709551615"), u64::MAX);
        assert!(Quantity::parse("1e40").is_err());
        assert!(Quantity::parse("1e9999999").is_err());
        assert!(Quantity::parse(&"9".repeat(60)).is_err());
    }

    #[test]
    fn numbers_deserialize_too() {
        let q: Quantity = serde_json::from_str("1073741824").unwrap();
        assert_eq!((q.bytes(), q.as_str()), (1 << 30, "1073741824"));
        let q: Quantity = serde_json::from_str("1e9").unwrap();
        assert_eq!((q.bytes(), q.as_str()), (1_000_000_000, "1000000000"));
        let q: Quantity = serde_json::from_str("1.5").unwrap();
        assert_eq!(q.bytes(), 2);
        assert!(serde_json::from_str::<Quantity>("-5").is_err());
        assert!(serde_json::from_str::<Quantity>("true").is_err());
        assert_eq!(serde_json::to_string(&Quantity::parse("5Gi").unwrap()).unwrap(), "\"5Gi\"");
    }
}
