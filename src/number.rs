//! The canonical text of a JSON number: pure, no IO.
//!
//! Documents are compared by their canonical bytes, so a number's text must
//! keep every digit of its value: `1000000000000000000001` and
//! `1000000000000000000002` are different numbers, although both are
//! `1e21` as `f64`s. serde_json's `arbitrary_precision` feature keeps each
//! number's text in its `Value`s; this module says what that text is.
//!
//! The rules, from the number's text as the response wrote it:
//!
//! - An integer that fits in a `u64` or an `i64` is written as serde_json
//!   writes integers: its digits (`-0` is not one: serde_json reads it as a
//!   float).
//! - Any other number whose `f64` holds its value exactly, that is whose
//!   shortest `f64` text means the same decimal value, is written as
//!   serde_json writes that `f64`: `1.5`, `0.1`, `100.0` for `1e2`,
//!   `1e+22`, `-0.0`. This is the text pollhook always wrote, so documents
//!   stored before numbers were exact keep their bytes and hashes, and an
//!   upgrade never reports a change that is not one.
//! - Every other number (its value has more digits than an `f64` keeps, or
//!   is beyond its range) is written exactly, in one form per value: no
//!   leading zeros, no trailing zeros after the point, a lowercase `e` with
//!   its sign (`e+`, `e-`, as serde_json writes floats). It is written out
//!   in full when its first digit is between 10⁻⁵ and 10⁹⁹
//!   (`1000000000000000000001`, `0.12345678901234567891`, with no `.0` on
//!   integers), in scientific notation otherwise (`1e+400`,
//!   `1.2345678901234567891e-20`). So `10000000000000000000001` and
//!   `1.0000000000000000000001e22` are the same text.
//!
//! A number whose exponent does not fit in an `i64` (`1e99999999999999999999`)
//! is kept as written, with its `e` lowercased and signed.

use std::borrow::Cow;

use serde_json::Value;

/// Powers of ten of the first digit between which an exact number is
/// written out in full: `0.00001…` to 100 digits before the point.
const IN_FULL: std::ops::Range<i64> = -5..100;

/// The text is not a JSON number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON number")]
pub struct NotANumber;

/// Appends the canonical text of the JSON number `text` to `out`.
pub fn write(out: &mut Vec<u8>, text: &str) -> Result<(), NotANumber> {
    let decimal = match Decimal::parse(text.as_bytes()) {
        Ok(decimal) => decimal,
        Err(Unparsed::ExponentOutOfRange) => {
            write_as_given(out, text);
            return Ok(());
        }
        Err(Unparsed::NotANumber) => return Err(NotANumber),
    };
    if let Some(integer) = machine_integer(text) {
        match integer {
            MachineInteger::Unsigned(value) => write_json(out, &value),
            MachineInteger::Signed(value) => write_json(out, &value),
        }
        return Ok(());
    }
    if let Ok(float) = text.parse::<f64>()
        && float.is_finite()
    {
        let start = out.len();
        write_json(out, &float);
        if Decimal::parse(&out[start..]).is_ok_and(|written| written == decimal) {
            return Ok(());
        }
        out.truncate(start);
    }
    decimal.write_exactly(out);
    Ok(())
}

/// The canonical text of the JSON number `text`; borrowed when that is
/// `text` itself.
pub fn canonical(text: &str) -> Result<Cow<'_, str>, NotANumber> {
    if is_integer(text) && machine_integer(text).is_some() {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = Vec::with_capacity(text.len());
    write(&mut out, text)?;
    // Only ASCII and the bytes of `text` are ever written.
    let out = String::from_utf8(out).map_err(|_| NotANumber)?;
    Ok(match out == text {
        true => Cow::Borrowed(text),
        false => Cow::Owned(out),
    })
}

/// Gives every number in `value` its canonical text, so that the value
/// writes canonical JSON.
pub fn canonicalise(value: &mut Value) {
    match value {
        Value::Number(number) => {
            if let Ok(Cow::Owned(text)) = canonical(number.as_str())
                && let Ok(canonical) = text.parse()
            {
                *number = canonical;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonicalise),
        Value::Object(members) => members.values_mut().for_each(canonicalise),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

enum MachineInteger {
    Unsigned(u64),
    Signed(i64),
}

/// The integers serde_json reads as `u64` or `i64` rather than as text.
fn machine_integer(text: &str) -> Option<MachineInteger> {
    if text.contains(['.', 'e', 'E']) || text == "-0" {
        return None;
    }
    match text.parse::<u64>() {
        Ok(value) => Some(MachineInteger::Unsigned(value)),
        Err(_) => text.parse::<i64>().ok().map(MachineInteger::Signed),
    }
}

/// An integer in JSON's grammar: `-?(0|[1-9][0-9]*)`.
fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
    match digits {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Writes what serde_json writes for `value`.
fn write_json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
    // Writing a number to a `Vec` cannot fail; if it did, `out` would only
    // lack it, and the document would differ, never be misread.
    let _ = serde_json::to_writer(out, value);
}

/// A number whose exponent is beyond an `i64`: as given, but with the `e`
/// written as everywhere else.
fn write_as_given(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'e' | b'E' => {
                out.push(b'e');
                if bytes.get(at + 1).is_some_and(u8::is_ascii_digit) {
                    out.push(b'+');
                }
            }
            byte => out.push(byte),
        }
    }
}

/// Why a text has no [`Decimal`].
#[derive(Debug, PartialEq)]
enum Unparsed {
    NotANumber,
    ExponentOutOfRange,
}

/// A number's exact value: `±d.ddd × 10^exponent`.
#[derive(Debug)]
struct Decimal<'a> {
    negative: bool,
    /// The significant digits, from the first non-zero one to the last: the
    /// part before the point, then the part after it. Both empty for zero.
    whole: &'a [u8],
    fraction: &'a [u8],
    /// The power of ten of the first significant digit; 0 for zero.
    exponent: i64,
}

impl<'a> Decimal<'a> {
    /// Reads JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn parse(text: &'a [u8]) -> Result<Decimal<'a>, Unparsed> {
        let digits = |bytes: &[u8]| !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit);
        let (negative, rest) = match text.strip_prefix(b"-") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.iter().position(|&byte| matches!(byte, b'e' | b'E')) {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let (whole, fraction) = match mantissa.iter().position(|&byte| byte == b'.') {
            Some(at) if digits(&mantissa[at + 1..]) => (&mantissa[..at], &mantissa[at + 1..]),
            Some(_) => return Err(Unparsed::NotANumber),
            None => (mantissa, &[][..]),
        };
        if !digits(whole) || (whole.len() > 1 && whole[0] == b'0') {
            return Err(Unparsed::NotANumber);
        }
        let shift = match exponent {
            Some(exponent) => {
                let (negative, magnitude) = match exponent.split_first() {
                    Some((b'-', rest)) => (true, rest),
                    Some((b'+', rest)) => (false, rest),
                    _ => (false, exponent),
                };
                if !digits(magnitude) {
                    return Err(Unparsed::NotANumber);
                }
                // Digits only, so it fails only when out of range.
                let text = std::str::from_utf8(magnitude).map_err(|_| Unparsed::NotANumber)?;
                text.parse::<i64>()
                    .ok()
                    .map(|magnitude| if negative { -magnitude } else { magnitude })
            }
            None => Some(0),
        };
        let whole = trim_start(whole);
        let (fraction, first) = match whole.is_empty() {
            true => {
                let zeros = fraction.len() - trim_start(fraction).len();
                (trim_start(fraction), -length(zeros) - 1)
            }
            false => (fraction, length(whole.len()) - 1),
        };
        let fraction = trim_end(fraction);
        let whole = match fraction.is_empty() {
            true => trim_end(whole),
            false => whole,
        };
        if whole.is_empty() && fraction.is_empty() {
            // Zero, whatever its exponent.
            return Ok(Decimal {
                negative,
                whole,
                fraction,
                exponent: 0,
            });
        }
        let exponent = shift
            .and_then(|shift| first.checked_add(shift))
            .ok_or(Unparsed::ExponentOutOfRange)?;
        Ok(Decimal {
            negative,
            whole,
            fraction,
            exponent,
        })
    }

    fn digits(&self) -> impl Iterator<Item = u8> + Clone + '_ {
        self.whole.iter().chain(self.fraction).copied()
    }

    /// The one text of this value (see the module's rules).
    fn write_exactly(&self, out: &mut Vec<u8>) {
        if self.negative {
            out.push(b'-');
        }
        let count = self.whole.len() + self.fraction.len();
        let mut digits = self.digits();
        if IN_FULL.contains(&self.exponent) {
            if self.exponent < 0 {
                out.extend_from_slice(b"0.");
                out.extend(std::iter::repeat_n(
                    b'0',
                    self.exponent.unsigned_abs() as usize - 1,
                ));
                out.extend(digits);
            } else {
                let before_point = self.exponent as usize + 1;
                out.extend(digits.by_ref().take(before_point));
                out.extend(std::iter::repeat_n(
                    b'0',
                    before_point.saturating_sub(count),
                ));
                if count > before_point {
                    out.push(b'.');
                    out.extend(digits);
                }
            }
        } else {
            out.extend(digits.next());
            if count > 1 {
                out.push(b'.');
                out.extend(digits);
            }
            out.push(b'e');
            out.push(if self.exponent < 0 { b'-' } else { b'+' });
            out.extend_from_slice(self.exponent.unsigned_abs().to_string().as_bytes());
        }
    }
}

impl PartialEq for Decimal<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.negative == other.negative
            && self.exponent == other.exponent
            && self.digits().eq(other.digits())
    }
}

fn trim_start(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&digit| digit == b'0').count();
    &digits[zeros..]
}

fn trim_end(digits: &[u8]) -> &[u8] {
    let zeros = digits
        .iter()
        .rev()
        .take_while(|&&digit| digit == b'0')
        .count();
    &digits[..digits.len() - zeros]
}

/// A count of digits as an exponent: a body is never `i64::MAX` bytes long.
fn length(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_text(text: &str) -> String {
        let mut out = Vec::new();
        write(&mut out, text).unwrap_or_else(|_| panic!("{text} is a number"));
        let written = String::from_utf8(out).unwrap();
        assert_eq!(canonical(text).unwrap(), written, "{text}");
        written
    }

    /// What pollhook wrote before numbers were exact (serde_json's `Value`
    /// without `arbitrary_precision`), for numbers that text held exactly:
    /// stored documents must keep these bytes.
    #[test]
    fn numbers_an_f64_held_keep_the_text_they_always_had() {
        let cases = [
            ("0", "0"),
            ("-0", "-0.0"),
            ("0.0", "0.0"),
            ("-0.0", "-0.0"),
            ("0e5", "0.0"),
            ("-0e-5", "-0.0"),
            ("0e99999999999999999999", "0.0"),
            ("1", "1"),
            ("-1", "-1"),
            ("1.5", "1.5"),
            ("0.1", "0.1"),
            ("1e2", "100.0"),
            ("1E2", "100.0"),
            ("1e+2", "100.0"),
            ("1.0e-7", "1e-7"),
            ("100.0", "100.0"),
            ("1.50", "1.5"),
            ("2.5e-3", "0.0025"),
            ("1e15", "1000000000000000.0"),
            ("1e16", "1e+16"),
            ("123456789.125", "123456789.125"),
            ("1e21", "1e+21"),
            ("1e22", "1e+22"),
            ("1e23", "1e+23"),
            ("3.0e1", "30.0"),
            ("1.23e-5", "0.0000123"),
            ("1.23e-4", "0.000123"),
            ("0.000123", "0.000123"),
            ("12345678901234567", "12345678901234567"),
            ("9007199254740993", "9007199254740993"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("1.2345678901234567e-200", "1.2345678901234567e-200"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("2.2250738585072014e-308", "2.2250738585072014e-308"),
            ("18446744073709551615", "18446744073709551615"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("100000000000000000000", "1e+20"),
        ];
        for (text, expected) in cases {
            assert_eq!(canonical_text(text), expected, "{text}");
        }
    }

    /// Numbers an f64 rounded: their exact value, one text per value.
    #[test]
    fn numbers_an_f64_rounded_are_written_exactly() {
        let cases = [
            ("1000000000000000000001", "1000000000000000000001"),
            ("1000000000000000000002", "1000000000000000000002"),
            ("1.000000000000000000001e21", "1000000000000000000001"),
            ("10000000000000000000001", "10000000000000000000001"),
            ("1.0000000000000000000001e22", "10000000000000000000001"),
            ("100000000000000000000010E-1", "10000000000000000000001"),
            ("18446744073709551616", "18446744073709551616"),
            ("-9223372036854775809", "-9223372036854775809"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("0.12345678901234567890", "0.1234567890123456789"),
            ("0.12345678901234567891", "0.12345678901234567891"),
            ("1234567890123456789.0e-19", "0.1234567890123456789"),
            ("-0.000012345678901234567891", "-0.000012345678901234567891"),
            ("0.0000012345678901234567891", "1.2345678901234567891e-6"),
            ("123456789012345678.5", "123456789012345678.5"),
            (
                "0.1000000000000000055511151231257827021181583404541015625",
                "0.1000000000000000055511151231257827021181583404541015625",
            ),
            ("9007199254740993.0", "9007199254740993"),
            ("1e400", "1e+400"),
            ("-1.5E+400", "-1.5e+400"),
            ("1e-400", "1e-400"),
            (
                "12345678901234567891e80",
                &format!("12345678901234567891{}", "0".repeat(80)),
            ),
            ("12345678901234567891e81", "1.2345678901234567891e+100"),
            ("1e99999999999999999999", "1e+99999999999999999999"),
            ("1E-99999999999999999999", "1e-99999999999999999999"),
        ];
        for (text, expected) in cases {
            assert_eq!(canonical_text(text), expected, "{text}");
        }
    }

    #[test]
    fn what_is_not_a_json_number_is_refused() {
        for text in [
            "", "-", "+1", "01", "1.", ".5", "1e", "1e+", "0x10", "1.5.5", "NaN", "1 ",
        ] {
            assert_eq!(write(&mut Vec::new(), text), Err(NotANumber), "{text:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any JSON number's canonical text means the same value, is
            /// its own canonical text, and is read back as a number.
            #[test]
            fn canonical_text_keeps_the_value(
                text in r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][-+]?[0-9]{1,22})?",
            ) {
                let written = canonical(&text).unwrap().into_owned();
                match Decimal::parse(text.as_bytes()) {
                    Err(Unparsed::ExponentOutOfRange) => {}
                    value => prop_assert_eq!(value, Decimal::parse(written.as_bytes())),
                }
                prop_assert_eq!(canonical(&written).unwrap(), written.as_str());
                let read: Value = serde_json::from_str(&written).unwrap();
                prop_assert!(read.is_number());
            }

            /// Any text at all is a number or refused, without a panic.
            #[test]
            fn any_text_is_a_number_or_refused(text in r"[-+0-9.eE]{0,12}|\PC{0,12}") {
                let _ = canonical(&text);
            }
        }
    }

    #[test]
    fn values_get_canonical_numbers_throughout() {
        let mut value: Value = serde_json::from_str(
            r#"{"a":[1e2,-0,1000000000000000000001.0],"b":{"c":0.12345678901234567890},"d":7}"#,
        )
        .unwrap();
        canonicalise(&mut value);
        assert_eq!(
            value.to_string(),
            r#"{"a":[100.0,-0.0,1000000000000000000001],"b":{"c":0.1234567890123456789},"d":7}"#
        );
    }
}
