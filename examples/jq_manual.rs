//! How many of jq's own manual examples pollhook's jq answers as jq does.
//!
//! jq keeps the examples of its manual as a test file, `tests/man.test` in
//! jqlang/jq: blocks of a filter, an input and the expected outputs, one
//! JSON value a line. This runs each block through [`Jq`], the filter
//! `select`, `items`, `key` and `when` use, on the input canonicalised as
//! `select` sees it, and compares the outputs with jq's:
//!
//! ```text
//! cargo run --example jq_manual -- path/to/jq/tests/man.test
//! ```
//!
//! A block is *runnable* unless jq expects an error (`%%FAIL`) or the
//! filter needs something outside the filter and its one input: more
//! inputs (`input`, `inputs`), where it is (`$__loc__`, `input_filename`,
//! `input_line_number`, `$__prog_args`), the clock or the time zone (`now`,
//! `localtime`, `strflocaltime`), the process's environment (`$ENV`, `env`:
//! jq's tests expect `PAGER=less`) or modules (`import`, `include`,
//! `get_search_list`). Skipped blocks are listed with the reason.
//!
//! Outputs are compared in full, as the list of values (so two outputs are
//! not taken for one array of two), each value with its numbers in
//! canonical text ([`pollhook::number`]), which is what a document holds:
//! `6.0` is not `6`.

use std::process::ExitCode;

use serde_json::Value;

use pollhook::jq::Jq;
use pollhook::number;

/// Names a filter cannot use here, and why.
const OUTSIDE_A_FILTER: &[(&str, &str)] = &[
    ("input", "reads further inputs"),
    ("inputs", "reads further inputs"),
    ("input_filename", "needs the input's file"),
    ("input_line_number", "needs the input's file"),
    ("$__loc__", "needs the filter's file and line"),
    ("$__prog_args", "needs the command line"),
    ("now", "reads the clock"),
    ("localtime", "depends on the time zone"),
    ("strflocaltime", "depends on the time zone"),
    (
        "$ENV",
        "reads the process's environment (jq's tests set `PAGER`)",
    ),
    (
        "env",
        "reads the process's environment (jq's tests set `PAGER`)",
    ),
    ("import", "loads modules"),
    ("include", "loads modules"),
    ("get_search_list", "loads modules"),
];

struct Example {
    line: usize,
    filter: String,
    input: String,
    outputs: Vec<String>,
    fails: bool,
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: jq_manual PATH/TO/man.test");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("cannot read `{path}`: {error}");
            return ExitCode::from(2);
        }
    };
    let examples = parse(&text);
    let mut runnable = 0;
    let mut passed = 0;
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    for example in &examples {
        if example.fails {
            skipped.push((example, "jq expects an error".to_string()));
            continue;
        }
        if let Some(reason) = outside_a_filter(&example.filter) {
            skipped.push((example, reason));
            continue;
        }
        runnable += 1;
        match run(example) {
            Ok(()) => passed += 1,
            Err(why) => failed.push((example, why)),
        }
    }
    println!("skipped {} of {} examples:", skipped.len(), examples.len());
    for (example, reason) in &skipped {
        println!("  line {}: {}  ({reason})", example.line, example.filter);
    }
    println!("\nfailed {}:", failed.len());
    for (example, why) in &failed {
        println!(
            "  line {}: {}\n    input:    {}\n    jq:       {}\n    pollhook: {why}",
            example.line,
            example.filter,
            example.input,
            example.outputs.join(", "),
        );
    }
    println!("\n{passed} of {runnable} runnable examples give jq's answer");
    ExitCode::SUCCESS
}

/// Blocks of jq's test format: a filter line (or `%%FAIL` and a filter),
/// an input line, then output lines up to a blank line; `#` starts a
/// comment line.
fn parse(text: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    loop {
        while lines
            .peek()
            .is_some_and(|(_, line)| line.trim().is_empty() || line.starts_with('#'))
        {
            lines.next();
        }
        let Some((number, first)) = lines.next() else {
            break;
        };
        let fails = first.starts_with("%%FAIL");
        let (line, filter) = match fails {
            true => match lines.next() {
                Some((number, filter)) => (number, filter),
                None => break,
            },
            false => (number, first),
        };
        let mut rest = Vec::new();
        while let Some((_, next)) = lines.next_if(|(_, line)| !line.trim().is_empty()) {
            rest.push(next.to_string());
        }
        let input = match fails || rest.is_empty() {
            true => String::new(),
            false => rest.remove(0),
        };
        examples.push(Example {
            line: line + 1,
            filter: filter.to_string(),
            input,
            outputs: rest,
            fails,
        });
    }
    examples
}

/// Why the filter cannot run here, if it cannot: the first name it uses
/// (outside its string literals) that needs more than a filter.
fn outside_a_filter(filter: &str) -> Option<String> {
    let names = names(filter);
    OUTSIDE_A_FILTER.iter().find_map(|(name, reason)| {
        names
            .iter()
            .any(|used| used == name)
            .then(|| format!("`{name}` {reason}"))
    })
}

/// The identifiers and `$variables` of a filter, leaving out object keys
/// after a `.` and the text of string literals (but not the filters
/// interpolated into them).
fn names(filter: &str) -> Vec<String> {
    let chars: Vec<char> = filter.chars().collect();
    let mut names = Vec::new();
    // How many `(` are open in each interpolation we are inside of; an empty
    // stack and `in_string` false is plain code.
    let mut interpolations: Vec<usize> = Vec::new();
    let mut in_string = false;
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if in_string {
            match c {
                '\\' if chars.get(at + 1) == Some(&'(') => {
                    interpolations.push(0);
                    in_string = false;
                    at += 2;
                }
                '\\' => at += 2,
                '"' => {
                    in_string = false;
                    at += 1;
                }
                _ => at += 1,
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' => {
                if let Some(open) = interpolations.last_mut() {
                    *open += 1;
                }
            }
            ')' => match interpolations.last_mut() {
                Some(0) => {
                    interpolations.pop();
                    in_string = true;
                }
                Some(open) => *open -= 1,
                None => {}
            },
            c if c == '$' || c == '_' || c.is_ascii_alphabetic() => {
                let start = at;
                at += 1;
                while at < chars.len() && (chars[at] == '_' || chars[at].is_ascii_alphanumeric()) {
                    at += 1;
                }
                let after_dot = start > 0 && chars[start - 1] == '.';
                if !after_dot {
                    names.push(chars[start..at].iter().collect());
                }
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    names
}

/// Runs one example; what pollhook gave instead, if it differs.
fn run(example: &Example) -> Result<(), String> {
    let canonical = |text: &str| -> Result<Value, String> {
        let mut value: Value =
            serde_json::from_str(text).map_err(|error| format!("`{text}` is not JSON: {error}"))?;
        number::canonicalise(&mut value);
        Ok(value)
    };
    let input = canonical(&example.input)?;
    let expected = example
        .outputs
        .iter()
        .map(|text| canonical(text))
        .collect::<Result<Vec<_>, _>>()?;
    let filter: Jq = example.filter.parse()?;
    let outputs = filter.run(&input)?;
    match outputs == expected {
        true => Ok(()),
        false => Err(outputs
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", ")),
    }
}
