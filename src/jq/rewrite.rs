//! What jaq's parser reads, rewritten so that jaq runs it as jq would: pure.
//!
//! - Updates (`l |= f`, `l = r`, `l += r`, `l //= r`, ...) first make the
//!   paths of `l` exist, as jq does (`null | .a.b = 1` is `{"a":{"b":1}}`,
//!   `[1] | .[2] = 3` is `[1,null,3]`): `l |= f` becomes
//!   `_pollhook_prepare(l) | l |= f`, and `l = r` becomes
//!   `r as $v | _pollhook_prepare(l) | l = $v`, so that `r` still sees the
//!   input as it was. `_pollhook_prepare` (in `prelude.jq`) changes nothing
//!   when every path is there already.
//! - A division's divisor goes through `_pollhook_divisor`, which fails on
//!   zero, as jq does (jaq's `1 / 0` is infinity, which JSON cannot hold).
//! - Destructuring alternatives, `e as P1 ?// P2 | body`, which jaq's parser
//!   does not know: [`alternatives_marked`] writes each `?//` as
//!   `| __pollhook_alt |`, which jaq parses as a pipe through the marker,
//!   and [`term`] turns that back into jq's meaning: bind `P1` and run
//!   `body`; if either fails, bind `P2` and run `body`; and so on, every
//!   variable of every pattern being `null` where its pattern does not bind
//!   it. An error in the last alternative is the filter's error.

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Def, Pattern, Term};
use jaq_core::ops::Math;
use jaq_core::path::{Part, Path};

/// What a `?//` is written as for jaq's parser.
const ALTERNATIVE: &str = " | __pollhook_alt | ";
const MARKER: &str = "__pollhook_alt";
/// Names the rewritten filter binds; no filter has a reason to use them.
const RIGHT: &str = "$__pollhook_right";
const VALUE: &str = "$__pollhook_value";
const INPUT: &str = "$__pollhook_input";

/// `code` with every `?//` outside strings and comments written as
/// [`ALTERNATIVE`], and the byte offsets in `code` of those written; `None`
/// when there is none.
pub fn alternatives_marked(code: &str) -> Option<(String, Vec<usize>)> {
    let bytes = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut at_offsets = Vec::new();
    // How many `(` are open in each interpolation `\(...)` we are inside.
    let mut interpolations: Vec<usize> = Vec::new();
    let mut in_string = false;
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if in_string {
            match byte {
                b'\\' if bytes.get(at + 1) == Some(&b'(') => {
                    interpolations.push(0);
                    in_string = false;
                    at += 2;
                }
                b'\\' => at += 2,
                b'"' => {
                    in_string = false;
                    at += 1;
                }
                _ => at += 1,
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'#' => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            b'(' => {
                if let Some(open) = interpolations.last_mut() {
                    *open += 1;
                }
            }
            b')' => match interpolations.last_mut() {
                Some(0) => {
                    interpolations.pop();
                    in_string = true;
                }
                Some(open) => *open -= 1,
                None => {}
            },
            b'?' if code[at..].starts_with("?//") => {
                out.push_str(&code[copied..at]);
                out.push_str(ALTERNATIVE);
                at_offsets.push(at);
                at += 3;
                copied = at;
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    if at_offsets.is_empty() {
        return None;
    }
    out.push_str(&code[copied..]);
    Some((out, at_offsets))
}

/// Where `offset` in the marked code is in the code as written.
pub fn offset_as_written(offset: usize, marked_at: &[usize]) -> usize {
    let grown = ALTERNATIVE.len() - "?//".len();
    let mut shift = 0;
    for &at in marked_at {
        let marked = at + shift;
        if offset < marked {
            break;
        }
        if offset < marked + ALTERNATIVE.len() {
            return at;
        }
        shift += grown;
    }
    offset - shift
}

/// The filter as jq means it; an error for a `?//` that does not separate
/// destructuring patterns.
pub fn term(term: Term<&str>) -> Result<Term<&str>, String> {
    Ok(match term {
        Term::BinOp(left, BinaryOp::Pipe(Some(first)), right) => {
            let left = self::term(*left)?;
            let mut patterns = vec![first];
            let mut body = *right;
            while let Some((pattern, rest)) = alternative(&mut body)? {
                patterns.push(pattern);
                body = rest;
            }
            let body = self::term(body)?;
            match patterns.len() {
                1 => pipe_as(left, patterns.remove(0), body),
                _ => destructure(left, patterns, body),
            }
        }
        Term::BinOp(left, op, right) => {
            let left = self::term(*left)?;
            let mut right = self::term(*right)?;
            if matches!(
                op,
                BinaryOp::Math(Math::Div) | BinaryOp::UpdateMath(Math::Div)
            ) {
                right = pipe(right, Term::Call("_pollhook_divisor", Vec::new()));
            }
            match op {
                BinaryOp::Update => pipe(prepare(&left), update(left, op, right)),
                BinaryOp::Assign | BinaryOp::UpdateMath(_) | BinaryOp::UpdateAlt => pipe_as(
                    right,
                    Pattern::Var(RIGHT),
                    pipe(prepare(&left), update(left, op, Term::Var(RIGHT))),
                ),
                op => Term::BinOp(Box::new(left), op, Box::new(right)),
            }
        }
        Term::Call(MARKER, args) if args.is_empty() => {
            return Err(
                "`?//` must stand between the patterns of `... as $x ?// [$y] | ...`".into(),
            );
        }
        Term::Call(name, args) => Term::Call(name, terms(args)?),
        Term::Str(format, parts) => Term::Str(
            format,
            parts
                .into_iter()
                .map(|part| {
                    Ok(match part {
                        StrPart::Term(inner) => StrPart::Term(self::term(inner)?),
                        StrPart::Str(text) => StrPart::Str(text),
                        StrPart::Char(c) => StrPart::Char(c),
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
        Term::Arr(inner) => Term::Arr(inner.map(|inner| boxed(*inner)).transpose()?),
        Term::Obj(entries) => Term::Obj(
            entries
                .into_iter()
                .map(|(key, value)| Ok((self::term(key)?, value.map(self::term).transpose()?)))
                .collect::<Result<_, String>>()?,
        ),
        Term::Neg(inner) => Term::Neg(boxed(*inner)?),
        Term::Label(name, inner) => Term::Label(name, boxed(*inner)?),
        Term::Fold(kind, source, pattern, args) => {
            Term::Fold(kind, boxed(*source)?, pattern, terms(args)?)
        }
        Term::TryCatch(body, catch) => {
            Term::TryCatch(boxed(*body)?, catch.map(|catch| boxed(*catch)).transpose()?)
        }
        Term::IfThenElse(branches, otherwise) => Term::IfThenElse(
            branches
                .into_iter()
                .map(|(condition, then)| Ok((self::term(condition)?, self::term(then)?)))
                .collect::<Result<_, String>>()?,
            otherwise.map(|otherwise| boxed(*otherwise)).transpose()?,
        ),
        Term::Def(defs, body) => Term::Def(
            defs.into_iter()
                .map(|def| {
                    Ok(Def {
                        name: def.name,
                        args: def.args,
                        body: self::term(def.body)?,
                    })
                })
                .collect::<Result<_, String>>()?,
            boxed(*body)?,
        ),
        Term::Path(head, Path(parts)) => Term::Path(
            boxed(*head)?,
            Path(
                parts
                    .into_iter()
                    .map(|(part, opt)| {
                        let part = match part {
                            Part::Index(index) => Part::Index(self::term(index)?),
                            Part::Range(from, to) => Part::Range(
                                from.map(self::term).transpose()?,
                                to.map(self::term).transpose()?,
                            ),
                        };
                        Ok((part, opt))
                    })
                    .collect::<Result<_, String>>()?,
            ),
        ),
        term @ (Term::Id | Term::Recurse | Term::Num(_) | Term::Break(_) | Term::Var(_)) => term,
    })
}

fn boxed(inner: Term<&str>) -> Result<Box<Term<&str>>, String> {
    term(inner).map(Box::new)
}

fn terms(list: Vec<Term<&str>>) -> Result<Vec<Term<&str>>, String> {
    list.into_iter().map(term).collect()
}

/// A destructuring pattern and the term it binds for.
type Alternative<'s> = (Pattern<&'s str>, Term<&'s str>);

/// The next alternative pattern at the head of `body` (`__pollhook_alt |
/// P | rest`), and the rest.
fn alternative<'s>(body: &mut Term<&'s str>) -> Result<Option<Alternative<'s>>, String> {
    let Term::BinOp(head, BinaryOp::Pipe(None), _) = body else {
        return Ok(None);
    };
    if !matches!(&**head, Term::Call(MARKER, args) if args.is_empty()) {
        return Ok(None);
    }
    let Term::BinOp(_, _, after) = std::mem::take(body) else {
        unreachable!("matched above");
    };
    let (pattern, rest) = match *after {
        Term::BinOp(pattern, BinaryOp::Pipe(None), rest) => (*pattern, *rest),
        _ => return Err("`?//` needs a pattern and then `| ...`".into()),
    };
    Ok(Some((as_pattern(pattern)?, rest)))
}

/// A pattern that jaq's parser read as a term.
fn as_pattern(term: Term<&str>) -> Result<Pattern<&str>, String> {
    let not_a_pattern = || "what follows `?//` must be a pattern such as `$x`, `[$x]` or `{$x}`";
    match term {
        Term::Var(name) => Ok(Pattern::Var(name)),
        Term::Arr(None) => Ok(Pattern::Arr(Vec::new())),
        Term::Arr(Some(items)) => {
            let mut list = Vec::new();
            split_commas(*items, &mut list);
            Ok(Pattern::Arr(
                list.into_iter().map(as_pattern).collect::<Result<_, _>>()?,
            ))
        }
        Term::Obj(entries) => entries
            .into_iter()
            .map(|(key, value)| match (key, value) {
                (Term::Var(name), None) => Ok((key_text(&name[1..]), Pattern::Var(name))),
                (key, Some(value)) => Ok((key, as_pattern(value)?)),
                _ => Err(not_a_pattern().to_string()),
            })
            .collect::<Result<_, _>>()
            .map(Pattern::Obj),
        _ => Err(not_a_pattern().to_string()),
    }
}

fn split_commas<'s>(term: Term<&'s str>, out: &mut Vec<Term<&'s str>>) {
    match term {
        Term::BinOp(left, BinaryOp::Comma, right) => {
            split_commas(*left, out);
            split_commas(*right, out);
        }
        term => out.push(term),
    }
}

fn key_text(text: &str) -> Term<&str> {
    Term::Str(None, vec![StrPart::Str(text)])
}

/// `value as P1 ?// P2 ... | body`, as jq runs it.
fn destructure<'s>(
    value: Term<&'s str>,
    patterns: Vec<Pattern<&'s str>>,
    body: Term<&'s str>,
) -> Term<&'s str> {
    let mut names: Vec<&'s str> = Vec::new();
    for pattern in &patterns {
        collect_vars(pattern, &mut names);
    }
    // Every variable is bound, to `null` unless this pattern binds it.
    let attempt = |pattern: Pattern<&'s str>| {
        let check = array_check(&pattern);
        let bound = pipe_as(Term::Var(VALUE), pattern, body.clone());
        let bound = match check {
            // The check yields nothing, or fails.
            Some(check) => Term::BinOp(
                Box::new(pipe(Term::Var(VALUE), check)),
                BinaryOp::Comma,
                Box::new(bound),
            ),
            None => bound,
        };
        names.iter().rev().fold(bound, |inner, name| {
            pipe_as(Term::Call("null", Vec::new()), Pattern::Var(name), inner)
        })
    };
    let mut patterns = patterns.into_iter().rev();
    let last = patterns.next().map(attempt).unwrap_or_default();
    let attempts = patterns.fold(last, |otherwise, pattern| {
        Term::TryCatch(
            Box::new(attempt(pattern)),
            Some(Box::new(pipe(Term::Var(INPUT), otherwise))),
        )
    });
    pipe_as(
        value,
        Pattern::Var(VALUE),
        pipe_as(Term::Id, Pattern::Var(INPUT), attempts),
    )
}

/// A filter that fails where jq's destructuring with `pattern` would and
/// jaq's would not, and else yields nothing: jaq indexes an object with a
/// number as `null` (`{} | .[0]`), so `[$a]` would bind an object, where
/// jq fails and goes on to the next pattern. `None` when the pattern has
/// no array in it (under keys written as strings).
fn array_check<'s>(pattern: &Pattern<&'s str>) -> Option<Term<&'s str>> {
    let checks: Vec<Term<&'s str>> = match pattern {
        Pattern::Var(_) => return None,
        Pattern::Arr(items) => std::iter::once(Term::Call("_pollhook_array_pattern", Vec::new()))
            .chain(items.iter().enumerate().filter_map(|(index, item)| {
                let check = array_check(item)?;
                Some(pipe(index_by(Term::Num(INDEXES.get(index)?)), check))
            }))
            .collect(),
        Pattern::Obj(entries) => entries
            .iter()
            .filter(|(key, _)| matches!(key, Term::Str(None, _)))
            .filter_map(|(key, value)| Some(pipe(index_by(key.clone()), array_check(value)?)))
            .collect(),
    };
    checks
        .into_iter()
        .reduce(|left, right| Term::BinOp(Box::new(left), BinaryOp::Comma, Box::new(right)))
}

/// Array indexes as number literals, for [`array_check`]; a pattern with
/// more items than this is not checked past them.
const INDEXES: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
];

fn index_by(key: Term<&str>) -> Term<&str> {
    Term::Path(
        Box::new(Term::Id),
        Path(vec![(Part::Index(key), jaq_core::path::Opt::Essential)]),
    )
}

fn collect_vars<'s>(pattern: &Pattern<&'s str>, names: &mut Vec<&'s str>) {
    match pattern {
        Pattern::Var(name) => {
            if !names.contains(name) {
                names.push(name);
            }
        }
        Pattern::Arr(items) => items.iter().for_each(|item| collect_vars(item, names)),
        Pattern::Obj(entries) => entries
            .iter()
            .for_each(|(_, value)| collect_vars(value, names)),
    }
}

fn prepare<'s>(paths: &Term<&'s str>) -> Term<&'s str> {
    Term::Call("_pollhook_prepare", vec![paths.clone()])
}

fn update<'s>(left: Term<&'s str>, op: BinaryOp<&'s str>, right: Term<&'s str>) -> Term<&'s str> {
    Term::BinOp(Box::new(left), op, Box::new(right))
}

fn pipe<'s>(left: Term<&'s str>, right: Term<&'s str>) -> Term<&'s str> {
    Term::BinOp(Box::new(left), BinaryOp::Pipe(None), Box::new(right))
}

fn pipe_as<'s>(
    left: Term<&'s str>,
    pattern: Pattern<&'s str>,
    right: Term<&'s str>,
) -> Term<&'s str> {
    Term::BinOp(
        Box::new(left),
        BinaryOp::Pipe(Some(pattern)),
        Box::new(right),
    )
}
