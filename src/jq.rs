//! jq filters, by the jaq crates: compiled once when the config is read,
//! run on every response. Pure, no IO.
//!
//! A filter that does not compile is a config error; one that fails on a
//! response is an error for that poll.
//!
//! Numbers keep their exact value through a filter that only picks, builds
//! or passes them on (`.wei`, `{id, price}`, `.[]`), whatever their size:
//! jaq holds an integer of any size exactly (and adds, subtracts and
//! multiplies integers exactly), a number an `f64` holds exactly as that
//! `f64`, as before, and any other number as its decimal text. What jaq
//! cannot do exactly is arithmetic on those decimals or a division, and
//! comparing or sorting them: it does those in `f64`, so two decimals that
//! differ past their 17th digit compare equal in a filter (`==`, `sort`,
//! `unique`), though they are different values in the document and in a
//! diff.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, ValT as _, Vars, data, unwrap_valr};
use jaq_json::{Num, Val};
use serde_json::{Number, Value};

use crate::number;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq filter, cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Jq {
    source: Arc<str>,
    filter: Arc<Filter>,
}

impl Jq {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every output of the filter on `input`, or the first run-time error.
    /// The outputs' numbers have their canonical text ([`number`]).
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, String> {
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        self.filter
            .id
            .run((ctx, to_jaq(input)))
            .map(unwrap_valr)
            .map(|output| {
                let output = output.map_err(|error| error.to_string())?;
                // jaq writes values as JSON, big integers and decimals with
                // all their digits; non-finite numbers are not JSON.
                let mut value = serde_json::from_str(&output.to_string())
                    .map_err(|_| format!("the filter produced `{output}`, which is not JSON"))?;
                number::canonicalise(&mut value);
                Ok(value)
            })
            .collect()
    }

    /// The one value the filter yields, as `select`, `key` and `when` want.
    /// Several outputs are collected into an array; none is `null`.
    pub fn run_one(&self, input: &Value) -> Result<Value, String> {
        Ok(collapse(self.run(input)?))
    }
}

/// A serde_json value as jaq's. jaq-json's own serde support cannot be used:
/// with `arbitrary_precision`, a number that is not a 64-bit integer or an
/// exact `f64` reaches it as a map holding its text.
fn to_jaq(value: &Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(value) => Val::Bool(*value),
        Value::Number(number) => Val::Num(jaq_number(number)),
        Value::String(text) => Val::utf8_str(text.clone().into_bytes()),
        Value::Array(items) => items.iter().map(to_jaq).collect(),
        Value::Object(members) => Val::obj(
            members
                .iter()
                .map(|(key, value)| (Val::utf8_str(key.clone().into_bytes()), to_jaq(value)))
                .collect(),
        ),
    }
}

/// 64-bit integers and exact `f64`s as jaq had them before numbers were
/// exact (so filters such as `tostring` give what they gave); other
/// integers as jaq's big integers, other numbers as jaq's decimal text.
fn jaq_number(number: &Number) -> Num {
    if let Some(integer) = number.as_i64() {
        return Num::from_integral(integer);
    }
    if let Some(integer) = number.as_u64() {
        return Num::from_integral(integer);
    }
    if let Some(float) = number.as_f64()
        && Number::from_f64(float).is_some_and(|exact| exact.as_str() == number.as_str())
    {
        return Num::Float(float);
    }
    let text = number.as_str();
    if text.len() > BIG_INTEGER_DIGITS {
        // Reading (and writing) a big integer takes time quadratic in its
        // length: one of a million digits would hold up the poll for seconds.
        return Num::Dec(text.to_string().into());
    }
    match Val::from_num(text) {
        Ok(Val::Num(number)) => number,
        // `from_num` always makes a number; were it not to, the f64.
        _ => Num::Float(number.as_f64().unwrap_or(f64::NAN)),
    }
}

/// Integers longer than this (a 256-bit one has 78 digits) go to jaq as
/// their text, as decimals do: kept exactly, but computed with as `f64`s.
const BIG_INTEGER_DIGITS: usize = 1000;

/// One output is itself; several become an array; none is `null`.
pub fn collapse(mut outputs: Vec<Value>) -> Value {
    match outputs.len() {
        0 => Value::Null,
        1 => outputs.pop().unwrap_or(Value::Null),
        _ => Value::Array(outputs),
    }
}

impl FromStr for Jq {
    type Err = String;

    fn from_str(code: &str) -> Result<Self, String> {
        let invalid = |detail: String| format!("invalid jq filter `{code}`: {detail}");
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                invalid(
                    errors
                        .into_iter()
                        .map(|(_, error)| describe_load_error(code, error))
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let undefined: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, undefined)| undefined)
                    .map(|(name, kind)| format!("undefined {} `{name}`", kind.as_str()))
                    .collect();
                invalid(undefined.join("; "))
            })?;
        Ok(Jq {
            source: code.into(),
            filter: Arc::new(filter),
        })
    }
}

/// A lex or parse error, with the character position it was found at.
fn describe_load_error(code: &str, error: jaq_core::load::Error<&str>) -> String {
    use jaq_core::load::Error;
    let position = |found: &str| {
        let offset = (found.as_ptr() as usize).saturating_sub(code.as_ptr() as usize);
        code.get(..offset)
            .map_or(0, |before| before.chars().count())
            + 1
    };
    let expected = |what: &str, found: &str| match found.chars().next() {
        Some(_) => format!("expected {what} at character {}", position(found)),
        None => format!("expected {what} at the end"),
    };
    match error {
        Error::Io(errors) => errors
            .into_iter()
            .map(|(_, message)| message)
            .collect::<Vec<_>>()
            .join("; "),
        Error::Lex(errors) => errors
            .into_iter()
            .map(|(expect, found)| expected(expect.as_str(), found))
            .collect::<Vec<_>>()
            .join("; "),
        Error::Parse(errors) => errors
            .into_iter()
            .map(|(expect, found)| expected(expect.as_str(), found))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

impl fmt::Debug for Jq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jq({:?})", self.source)
    }
}

impl PartialEq for Jq {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl<'de> serde::Deserialize<'de> for Jq {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jq(code: &str) -> Jq {
        code.parse().unwrap()
    }

    #[test]
    fn filters_narrow_documents() {
        let input = json!({"releases": [{"tag_name": "1.91.0", "draft": false, "x": 1}]});
        let filter = jq(".releases | map({tag_name})");
        assert_eq!(
            filter.run_one(&input).unwrap(),
            json!([{"tag_name": "1.91.0"}])
        );
    }

    #[test]
    fn outputs_collapse_to_one_value() {
        let input = json!([1, 2]);
        assert_eq!(jq(".[]").run_one(&input).unwrap(), json!([1, 2]));
        assert_eq!(jq(".[0]").run_one(&input).unwrap(), json!(1));
        assert_eq!(jq("empty").run_one(&input).unwrap(), Value::Null);
    }

    #[test]
    fn big_numbers_and_unicode_survive_the_round_trip() {
        let input: Value =
            serde_json::from_str(r#"{"n": 12345678901234567890, "s": "héllo ✓"}"#).unwrap();
        assert_eq!(jq(".").run_one(&input).unwrap(), input);
    }

    #[test]
    fn numbers_keep_their_digits_through_filters() {
        let input: Value = serde_json::from_str(
            r#"{"wei":1000000000000000000001,"x":0.12345678901234567891,"f":1e+22,"h":1.5,"n":7}"#,
        )
        .unwrap();
        let check = |code: &str, expected: &str| {
            assert_eq!(
                jq(code).run_one(&input).unwrap().to_string(),
                expected,
                "{code}"
            );
        };
        check(".wei", "1000000000000000000001");
        check(".x", "0.12345678901234567891");
        check(
            "{wei, x}",
            r#"{"wei":1000000000000000000001,"x":0.12345678901234567891}"#,
        );
        check(
            "[.[]]",
            r#"[1e+22,1.5,7,1000000000000000000001,0.12345678901234567891]"#,
        );
        // Integers of any size add, subtract and multiply exactly.
        check(".wei + 1", "1000000000000000000002");
        check(".wei * .wei", "1000000000000000000002000000000000000000001");
        check(".wei | tostring", r#""1000000000000000000001""#);
        check(".x | tostring", r#""0.12345678901234567891""#);
        // Numbers an f64 holds are f64s, as they always were.
        check(".f | tostring", r#""1e22""#);
        check(".h * 2", "3.0");
        check(".n / 2", "3.5");
        // The limitation: decimals beyond an f64 are computed and compared
        // as f64s.
        check(".x * 1", "0.12345678901234568");
        check(".x == 0.12345678901234567892", "true");
        // Integers too long to compute with quickly are kept as text.
        let long = format!("{{\"n\":1{}1}}", "0".repeat(5000));
        let mut input: Value = serde_json::from_str(&long).unwrap();
        number::canonicalise(&mut input);
        assert_eq!(jq(".").run_one(&input).unwrap(), input);
        assert_eq!(
            jq(".n + 1").run_one(&input).unwrap_err(),
            "the filter produced `Infinity`, which is not JSON"
        );
    }

    #[test]
    fn compile_errors_say_what_is_wrong() {
        for (code, expected) in [
            (".a[", "expected closing bracket"),
            (".a | foo(1)", "undefined filter `foo`"),
            (". as $x | $y", "undefined variable `$y`"),
            ("{a:}", "expected term"),
        ] {
            let error = code.parse::<Jq>().unwrap_err();
            assert!(error.starts_with(&format!("invalid jq filter `{code}`")));
            assert!(error.contains(expected), "{code}: {error}");
        }
    }

    #[test]
    fn run_time_errors_are_errors_not_panics() {
        let error = jq(".a[0]").run(&json!({"a": 1.5})).unwrap_err();
        assert!(error.contains("cannot index"), "{error}");
        let error = jq("error(\"boom\")").run(&json!(null)).unwrap_err();
        assert!(error.contains("boom"), "{error}");
    }
}
