//! jq filters, by the jaq crates: compiled once when the config is read,
//! run on every response. Pure, no IO.
//!
//! A filter that does not compile is a config error; one that fails on a
//! response is an error for that poll.
//!
//! jaq is not quite jq: `prelude.jq` defines what jq has and jaq lacks
//! (`trimstr`, `pick`, `tostream`, ...) or where jaq answers differently
//! (`setpath` on `null`, `del` of several indexes, `join`), and
//! [`rewrite`] changes what jaq's parser reads so that updates make missing
//! paths, division by zero fails and `?//` destructures, as in jq. A filter
//! sees no environment: `$ENV` and `env` are `{}`. Computed numbers are
//! written as jq writes them (`6`, not `6.0`). docs/configuration.md lists
//! what still differs.
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

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use jaq_core::load::parse::{Def, Term};
use jaq_core::load::{Arena, File, Lexer, Loader, Parser};
use jaq_core::{Compiler, Ctx, ValT as _, Vars, data};
use jaq_json::{Num, Val};
use serde_json::{Number, Value};

use crate::{locks, number};

mod rewrite;

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
        // `$ENV`: a filter sees none of the daemon's environment.
        let globals = Vars::new([Val::obj(Default::default())]);
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, globals);
        let mut values = Vec::new();
        for output in self.filter.id.run((ctx, to_jaq(input))) {
            let output = match output {
                Ok(output) => output,
                // Not `jaq_core::unwrap_valr`: on `halt` it ends the process.
                Err(exception) => match exception.get_err() {
                    Ok(error) => return Err(error.to_string()),
                    Err(exception) => match exception.get_halt() {
                        // As jq stops: with the outputs so far.
                        Ok(0) => break,
                        Ok(code) => return Err(format!("the filter halted with exit code {code}")),
                        Err(_) => return Err("the filter stopped unexpectedly".to_string()),
                    },
                },
            };
            let mut value = from_jaq(&output)
                .map_err(|()| format!("the filter produced `{output}`, which is not JSON"))?;
            number::canonicalise(&mut value);
            values.push(value);
        }
        Ok(values)
    }

    /// The one value the filter yields, as `select`, `key` and `when` want:
    /// see [`collapse`].
    pub fn run_one(&self, input: &Value) -> Result<Value, String> {
        Ok(collapse(self.run(input)?))
    }
}

/// The outputs of a filter as one value: one output is itself, and any
/// other number of outputs is the array of them, so that none is `[]`.
/// (`.items[] | select(.open)` matching nothing is then `[]`, as matching
/// two is `[a, b]`, and a change from two to none reads as two removals;
/// `null` would also be what `.missing` gives.)
pub fn collapse(mut outputs: Vec<Value>) -> Value {
    match outputs.len() {
        1 => outputs.pop().unwrap_or(Value::Null),
        _ => Value::Array(outputs),
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
/// An integral `f64` written as a float (`1.0`, `100.0`) is its text too,
/// which jaq computes with as that `f64`: passed through, it keeps its
/// text (and the document its hash), where a computed `6.0` is written
/// `6`, as jq writes it ([`jq_float`]).
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
        // Computed, this `f64` would be written without its `.0`.
        let integral = float.fract() == 0.0 && !jq_float(float).contains('e');
        return match integral {
            true => Num::Dec(number.as_str().to_string().into()),
            false => Num::Float(float),
        };
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

/// A jaq value as serde_json's; `Err` for what JSON cannot hold: byte
/// strings, keys that are not strings, NaN and infinities (which jq would
/// write as `null` and as ±1.7976931348623157e+308, hiding the mistake).
fn from_jaq(value: &Val) -> Result<Value, ()> {
    Ok(match value {
        Val::Null => Value::Null,
        Val::Bool(value) => Value::Bool(*value),
        Val::Num(number) => Value::Number(json_number(number)?),
        Val::TStr(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        Val::BStr(_) => return Err(()),
        Val::Arr(items) => Value::Array(items.iter().map(from_jaq).collect::<Result<_, _>>()?),
        Val::Obj(members) => Value::Object(
            members
                .iter()
                .map(|(key, value)| match key {
                    Val::TStr(key) => {
                        Ok((String::from_utf8_lossy(key).into_owned(), from_jaq(value)?))
                    }
                    _ => Err(()),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A jaq number as JSON: integers and decimal texts as they are, a
/// computed `f64` as jq writes it, integral ones without `.0` (`6`,
/// `18446744073709552000`, but `1e+17` past 17 digits of zeros).
fn json_number(number: &Num) -> Result<Number, ()> {
    let text = match number {
        Num::Int(integer) => return Ok(Number::from(*integer)),
        Num::BigInt(_) | Num::Dec(_) => number.to_string(),
        Num::Float(float) if !float.is_finite() => return Err(()),
        Num::Float(float) => jq_float(*float),
    };
    text.parse().map_err(|_| ())
}

/// jq's text for a finite `f64`: its shortest digits, written out in full
/// when it is an integer that needs at most 15 zeros after them.
fn jq_float(float: f64) -> String {
    let scientific = format!("{float:e}");
    if float.fract() == 0.0
        && let Some((mantissa, exponent)) = scientific.split_once('e')
        && let Ok(exponent) = exponent.parse::<usize>()
    {
        let (sign, mantissa) = match mantissa.strip_prefix('-') {
            Some(digits) => ("-", digits),
            None => ("", mantissa),
        };
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        let zeros = (exponent + 1).saturating_sub(digits.len());
        if zeros <= 15 {
            return format!("{sign}{digits}{}", "0".repeat(zeros));
        }
    }
    Num::Float(float).to_string()
}

impl FromStr for Jq {
    type Err = String;

    /// Compiles `code`, or takes the filter compiled from the same code
    /// while that is still in use: a config's endpoints often share one
    /// filter, and a reload compiles them all again.
    fn from_str(code: &str) -> Result<Self, String> {
        let filter = match cached(code) {
            Some(filter) => filter,
            None => {
                let filter = Arc::new(
                    compile(code)
                        .map_err(|detail| format!("invalid jq filter `{code}`: {detail}"))?,
                );
                remember(code, &filter);
                filter
            }
        };
        Ok(Jq {
            source: code.into(),
            filter,
        })
    }
}

/// jaq's definitions and ours ([`prelude.jq`](prelude.jq)), parsed once.
static PRELUDE: LazyLock<Vec<Def<&'static str>>> = LazyLock::new(|| {
    let ours = jaq_core::load::parse(include_str!("prelude.jq"), |parser| parser.defs())
        // A mistake in the file fails every test of this module.
        .expect("prelude.jq parses");
    jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .chain(ours)
        .collect()
});

/// The name the filter is defined under, after the prelude.
const MAIN: &str = "__pollhook_main";

fn compile(code: &str) -> Result<Filter, String> {
    // jaq does not know `?//`; jq reads `.a?//1` as one, jaq as `.a? // 1`,
    // which filters written for jaq may use: so `?//` is rewritten only
    // when the filter does not parse as it is.
    let marked = rewrite::alternatives_marked(code);
    let term = match (parse(code), &marked) {
        (Ok(term), _) => term,
        (Err(error), None) => return Err(describe_load_error(code, code, error, |offset| offset)),
        (Err(_), Some((marked, at))) => parse(marked).map_err(|error| {
            describe_load_error(marked, code, error, |offset| {
                rewrite::offset_as_written(offset, at)
            })
        })?,
    };
    let main = rewrite::term(term)?;
    let mut defs: Vec<Def<&str>> = PRELUDE.clone();
    defs.push(Def {
        name: MAIN,
        args: Vec::new(),
        body: main,
    });
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(
            &arena,
            File {
                code: MAIN,
                path: (),
            },
        )
        .map_err(|errors| {
            errors
                .into_iter()
                .map(|(_, error)| describe_load_error(MAIN, MAIN, error, |offset| offset))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    // `env` is the daemon's environment, which holds secrets: the prelude
    // defines it as `$ENV`, which is `{}`.
    let funs = jaq_core::funs()
        .chain(jaq_std::funs().filter(|(name, _, _)| *name != "env"))
        .chain(jaq_json::funs());
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(["$ENV"])
        .compile(modules)
        .map_err(|errors| {
            errors
                .into_iter()
                .flat_map(|(_, undefined)| undefined)
                .map(|(name, kind)| format!("undefined {} `{name}`", kind.as_str()))
                .collect::<Vec<_>>()
                .join("; ")
        })
}

/// The filter's term, or what jaq's lexer or parser found wrong.
fn parse(code: &str) -> Result<Term<&str>, jaq_core::load::Error<&str>> {
    use jaq_core::load::{Error, lex::Token};
    let tokens = Lexer::new(code).lex().map_err(Error::Lex)?;
    Parser::new(&tokens)
        .parse(|parser| parser.term())
        .map_err(|errors| {
            Error::Parse(
                errors
                    .into_iter()
                    .map(|(expect, found)| (expect, Token::opt_as_str(found, code)))
                    .collect(),
            )
        })
}

/// Compiled filters by their code, while some `Jq` holds them.
struct Compiled {
    filters: HashMap<String, Weak<Filter>>,
    /// When the map has this many entries, those no longer held are removed.
    sweep_at: usize,
}

static COMPILED: LazyLock<Mutex<Compiled>> = LazyLock::new(|| {
    Mutex::new(Compiled {
        filters: HashMap::new(),
        sweep_at: 64,
    })
});

fn cached(code: &str) -> Option<Arc<Filter>> {
    locks::lock(&COMPILED)
        .filters
        .get(code)
        .and_then(Weak::upgrade)
}

fn remember(code: &str, filter: &Arc<Filter>) {
    let mut compiled = locks::lock(&COMPILED);
    compiled
        .filters
        .insert(code.to_string(), Arc::downgrade(filter));
    if compiled.filters.len() >= compiled.sweep_at {
        compiled
            .filters
            .retain(|_, filter| filter.strong_count() > 0);
        compiled.sweep_at = (compiled.filters.len() * 2).max(64);
    }
}

/// A lex or parse error in `code`, with the character position it was
/// found at in `written`, the code as the user wrote it (`as_written` maps
/// a byte offset in `code` there).
fn describe_load_error(
    code: &str,
    written: &str,
    error: jaq_core::load::Error<&str>,
    as_written: impl Fn(usize) -> usize,
) -> String {
    use jaq_core::load::Error;
    let position = |found: &str| {
        let offset = (found.as_ptr() as usize).saturating_sub(code.as_ptr() as usize);
        written
            .get(..as_written(offset))
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
        // None is the array of none, not `null` (which `.[5]` gives).
        assert_eq!(jq("empty").run_one(&input).unwrap(), json!([]));
        assert_eq!(
            jq(".[] | select(. > 5)").run_one(&input).unwrap(),
            json!([])
        );
        assert_eq!(jq(".[5]").run_one(&input).unwrap(), Value::Null);
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
        // A computed integral f64 is written as jq writes it.
        check(".h * 2", "3");
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

    /// Runs `code` on `input` (JSON text) and compares its outputs, as
    /// JSON text, with jq's.
    fn check(cases: &[(&str, &str, &[&str])]) {
        for (code, input, expected) in cases {
            let mut input: Value = serde_json::from_str(input).unwrap();
            number::canonicalise(&mut input);
            let outputs: Vec<String> = jq(code)
                .run(&input)
                .unwrap_or_else(|error| panic!("{code}: {error}"))
                .iter()
                .map(Value::to_string)
                .collect();
            assert_eq!(outputs, *expected, "{code} on {input}");
        }
    }

    fn fails(code: &str, input: Value, expected: &str) {
        let error = jq(code).run(&input).unwrap_err();
        assert!(error.contains(expected), "{code}: {error}");
    }

    #[test]
    fn computed_integral_numbers_are_written_as_jq_writes_them() {
        check(&[
            ("10 / . * 3", "5", &["6"]),
            ("sqrt", "16", &["4"]),
            (". * 2", "1.5", &["3"]),
            ("-(. * 2)", "1.5", &["-3"]),
            (". / 4", "2", &["0.5"]),
            // Up to 17 significant digits, then 15 zeros: jq writes these
            // in full, and further ones with an exponent. (jq's
            // `18446744073709552000` is beyond a u64: its canonical text is
            // that of the f64, as for the same number in a response.)
            ("pow(2; 64)", "null", &["1.8446744073709552e+19"]),
            (". * 10", "1.5e15", &["15000000000000000"]),
            (". * 1", "1e300", &["1e+300"]),
            // Passed through, a number keeps its text: `1.0` was written
            // `1.0` before, and its document keeps its hash.
            (".", "1.0", &["1.0"]),
            ("[.[] | ., . + 0]", "[100.0, 7]", &["[100.0,100,7,7]"]),
            ("{a: 1.0}", "null", &[r#"{"a":1.0}"#]),
            // Exact integers stay exact, whatever their size.
            (
                ". + 1",
                "123456789012345678901234567890",
                &["123456789012345678901234567891"],
            ),
            ("tostring", "100.0", &[r#""100.0""#]),
        ]);
    }

    #[test]
    fn no_outputs_and_several_are_arrays_one_is_itself() {
        let input = json!({"items": [{"id": 1, "open": false}, {"id": 2, "open": false}]});
        let open = jq(".items[] | select(.open) | .id");
        assert_eq!(open.run(&input).unwrap(), Vec::<Value>::new());
        assert_eq!(open.run_one(&input).unwrap(), json!([]));
        let all = jq(".items[] | .id");
        assert_eq!(all.run_one(&input).unwrap(), json!([1, 2]));
        assert_eq!(jq(".items[0].id").run_one(&input).unwrap(), json!(1));
        assert_eq!(jq(".missing").run_one(&input).unwrap(), Value::Null);
    }

    #[test]
    fn trimstr_and_join_answer_as_jq() {
        check(&[
            (
                "[.[] | trimstr(\"ab\")]",
                r#"["abxab", "ab", "xab", "abab", "a"]"#,
                &[r#"["x","","x","","a"]"#],
            ),
            (
                "join(\"-\")",
                r#"["a", 1, null, true, 2.5]"#,
                &[r#""a-1--true-2.5""#],
            ),
            ("join(\",\")", "[]", &[r#""""#]),
        ]);
        fails("join(\",\")", json!([[1]]), "cannot join with array");
    }

    #[test]
    fn pick_keeps_the_paths_it_is_given() {
        check(&[
            (
                "pick(.a, .b.c)",
                r#"{"a": 1, "b": {"c": 2, "d": 3}, "e": 4}"#,
                &[r#"{"a":1,"b":{"c":2}}"#],
            ),
            ("pick(.[2], .[0])", "[1, 2, 3, 4]", &["[1,null,3]"]),
            ("pick(.x.y)", "null", &[r#"{"x":{"y":null}}"#]),
        ]);
    }

    #[test]
    fn streams_go_to_events_and_back() {
        check(&[
            (
                "[tostream]",
                r#"{"a": [1, {"b": 2}], "c": []}"#,
                &[r#"[[["a",0],1],[["a",1,"b"],2],[["a",1,"b"]],[["a",1]],[["c"],[]],[["c"]]]"#],
            ),
            ("[tostream]", "3", &["[[[],3]]"]),
            (
                "fromstream(tostream) == .",
                r#"{"a": [1, {"b": 2}], "c": [], "d": null}"#,
                &["true"],
            ),
            (
                "[fromstream(.[] | tostream)]",
                "[1, [2], {}]",
                &["[1,[2],{}]"],
            ),
            (
                "[1 | truncate_stream([[0], 1], [[1, 0], 2], [[1, 0]], [[1]])]",
                "null",
                &["[[[0],2],[[0]]]"],
            ),
            (
                "fromstream(1 | truncate_stream([[0], 1], [[1, 0], 2], [[1, 0]], [[1]]))",
                "null",
                &["[2]"],
            ),
        ]);
    }

    #[test]
    fn paths_are_made_where_they_are_missing() {
        check(&[
            (
                "setpath([\"a\", 0, \"b\"]; 1)",
                "null",
                &[r#"{"a":[{"b":1}]}"#],
            ),
            ("setpath([2]; 1)", "[0]", &["[0,null,1]"]),
            ("setpath([]; 1)", "null", &["1"]),
            ("getpath([\"a\", \"b\"])", "null", &["null"]),
            (
                "[getpath([\"a\", 0], [\"b\"])]",
                r#"{"a": [5]}"#,
                &["[5,null]"],
            ),
            (".a.b |= 5", "null", &[r#"{"a":{"b":5}}"#]),
            (".a.b.c = 1", "{}", &[r#"{"a":{"b":{"c":1}}}"#]),
            (".n += 1", "null", &[r#"{"n":1}"#]),
            (".[3] = 4", "[1]", &["[1,null,null,4]"]),
            (".a //= 2", "null", &[r#"{"a":2}"#]),
            (".a[1] += 1", "null", &[r#"{"a":[null,1]}"#]),
            (
                "reduce .[] as $word (null; .[$word] += 1)",
                r#"["a", "b", "a"]"#,
                &[r#"{"a":2,"b":1}"#],
            ),
            // The right side sees the input as it was, once per output.
            (".a = .", "null", &[r#"{"a":null}"#]),
            (
                "(.a, .b) = (1, 2)",
                "null",
                &[r#"{"a":1,"b":1}"#, r#"{"a":2,"b":2}"#],
            ),
            // Paths that exist are updated as before.
            (".[] |= . + 1", "[1, 2]", &["[2,3]"]),
            (
                "(.. | numbers) |= -.",
                r#"{"a": [1, {"b": 2}]}"#,
                &[r#"{"a":[-1,{"b":-2}]}"#],
            ),
            ("del(.[0, 2])", "[1, 2, 3, 4]", &["[2,4]"]),
            ("del(.a.b)", "{}", &["{}"]),
            (
                "delpaths([[\"a\"], [\"b\", 0]])",
                r#"{"a": 1, "b": [2, 3]}"#,
                &[r#"{"b":[3]}"#],
            ),
        ]);
        fails(".a.b = 1", json!({"a": 5}), "cannot index");
        fails(".[2000000] = 1", json!([]), "array index 2000000 too large");
    }

    #[test]
    fn env_is_empty_whatever_the_daemon_has() {
        assert!(std::env::var_os("PATH").is_some());
        check(&[
            ("$ENV", "null", &["{}"]),
            ("env", "null", &["{}"]),
            ("$ENV.PATH, env.PATH", "null", &["null", "null"]),
        ]);
    }

    #[test]
    fn destructuring_alternatives_try_each_pattern() {
        check(&[
            (
                ".[] as {a: $a} ?// [$a, $b] | [$a, $b]",
                r#"[{"a": 1}, [2, 3]]"#,
                &["[1,null]", "[2,3]"],
            ),
            // An error in the body tries the next pattern too.
            (
                ".[] as [$a] ?// $b | if $a != null then error(\"no\") else [$a, $b] end",
                "[[3]]",
                &["[null,[3]]"],
            ),
            (". as {$a} ?// [$a] ?// $a | $a", "[7]", &["7"]),
            // An array pattern does not match an object (jaq would index
            // it with 0 as `null`).
            (
                ".[] as [$a] ?// {$a} ?// {b: [$a]} | $a",
                r#"[[1], {"a": 2}, {"b": [3]}]"#,
                &["1", "2", "null"],
            ),
            // Without destructuring, `?//` is `? //` as jaq always read it.
            (".a?//1", "5", &["1"]),
            ("\"?//\" as $x ?// [$x] | $x", "null", &[r#""?//""#]),
        ]);
        // An error in the last alternative is the filter's.
        fails(". as [$a] ?// {$a} | $a", json!(5), "cannot index");
        let error = "[. as $x ?// $y]".parse::<Jq>().unwrap_err();
        assert!(error.contains("`?//` needs a pattern"), "{error}");
        // Positions in errors are in the filter as written.
        let code = ". as [$a] ?// [$b] | {a:}";
        let error = code.parse::<Jq>().unwrap_err();
        let at = code.find('}').unwrap() + 1;
        assert!(
            error.contains(&format!("expected term at character {at}")),
            "{error}"
        );
    }

    #[test]
    fn division_by_zero_is_an_error_as_in_jq() {
        check(&[
            (".[] | (1 / .)?", "[1, 0, -1]", &["1", "-1"]),
            ("try (1 / .) catch \"zero\"", "0", &[r#""zero""#]),
            (
                "[infinite > 1e308, (nan | isnan)]",
                "null",
                &["[true,true]"],
            ),
            ("\"a,b\" / \",\"", "null", &[r#"["a","b"]"#]),
        ]);
        fails(". /= 0", json!(1), "cannot divide by zero");
    }

    #[test]
    fn jq_builtins_jaq_lacks_are_defined() {
        check(&[
            ("[.[] | IN(2, 3)]", "[1, 2]", &["[false,true]"]),
            (
                "INDEX(.id)",
                r#"[{"id": 1}, {"id": "x"}]"#,
                &[r#"{"1":{"id":1},"x":{"id":"x"}}"#],
            ),
            (
                "@csv",
                r#"[1, "a\"b", null, true]"#,
                &[r#""1,\"a\"\"b\",,true""#],
            ),
            ("@tsv", r#"["a\tb", "c\\d", 1]"#, &[r#""a\\tb\tc\\\\d\t1""#]),
            ("format(\"csv\")", r#"["x"]"#, &[r#""\"x\"""#]),
            ("[inputs]", "1", &["[]"]),
            (
                "[have_decnum, have_literal_numbers]",
                "null",
                &["[true,true]"],
            ),
        ]);
        fails("input", json!(1), "No more inputs");
    }

    #[test]
    fn halt_ends_the_filter_not_the_daemon() {
        check(&[
            ("1, halt, 2", "null", &["1"]),
            ("halt_error(0)", "null", &[]),
        ]);
        fails(
            "1, halt(3)",
            json!(null),
            "the filter halted with exit code 3",
        );
        // Without writing the input to the daemon's stderr.
        fails("\"message\" | halt_error", json!(null), "message");
    }

    #[test]
    fn one_code_is_compiled_once_while_in_use() {
        let code = ".compiled_once | map(. + 1)";
        let first = jq(code);
        let second = jq(code);
        assert!(Arc::ptr_eq(&first.filter, &second.filter));
        let other = jq(".compiled_once | map(. + 2)");
        assert!(!Arc::ptr_eq(&first.filter, &other.filter));
    }
}
