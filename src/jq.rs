//! jq filters, by the jaq crates: compiled once when the config is read,
//! run on every response. Pure, no IO.
//!
//! A filter that does not compile is a config error; one that fails on a
//! response is an error for that poll. Values cross from serde_json to jaq
//! and back as JSON, so numbers keep their text and nothing is lost.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde::Deserialize as _;
use serde_json::Value;

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
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, String> {
        let input = Val::deserialize(input).map_err(|error| error.to_string())?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        self.filter
            .id
            .run((ctx, input))
            .map(unwrap_valr)
            .map(|output| {
                let output = output.map_err(|error| error.to_string())?;
                // jaq writes values as JSON; non-finite numbers are not JSON.
                serde_json::from_str(&output.to_string())
                    .map_err(|_| format!("the filter produced `{output}`, which is not JSON"))
            })
            .collect()
    }

    /// The one value the filter yields, as `select`, `key` and `when` want.
    /// Several outputs are collected into an array; none is `null`.
    pub fn run_one(&self, input: &Value) -> Result<Value, String> {
        Ok(collapse(self.run(input)?))
    }
}

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
