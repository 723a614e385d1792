# pollhook's definitions, after jaq's own: what jq has and jaq lacks, and
# where jaq answers differently, jq's answer. Parsed once per process,
# compiled with each filter. Names starting with `_pollhook_` are called
# by the filters `rewrite.rs` makes of `|=`, `=`, `+=`, ...

# A filter has exactly one input and no environment: the daemon's holds
# secrets (`${ENV}` values in the config), so `$ENV` is `{}` and so is `env`.
def input: error("No more inputs");
def inputs: empty;
def env: $ENV;
# `halt` ends the filter with the outputs so far, any other exit code is an
# error; `halt_error` is one with its input as the message, which jq would
# write to stderr (the daemon's log).
def halt_error($exit_code): if $exit_code == 0 then halt else error(.) end;
def halt_error: halt_error(5);

# Numbers keep their literal text, and integers of any size are exact.
def have_literal_numbers: true;
def have_decnum: true;

# Numbers divide by anything but zero (jaq's `nan` and `infinite`, defined
# as `0 / 0` and `1 / 0`, are not rewritten).
def _pollhook_divisor: if type == "number" and . == 0 then error("cannot divide by zero") end;

# Destructuring alternatives: `[$a]` fails on an object, as in jq (jaq's
# `{} | .[0]` is `null`).
def _pollhook_array_pattern:
  if type == "array" or type == "null" then empty
  else error("cannot destructure \(type) as an array") end;

# Strings
def trimstr($s): ltrimstr($s) | rtrimstr($s);
def join($sep):
  reduce .[] as $x (null;
    (if . == null then "" else . + $sep end)
    + ($x | if type == "boolean" or type == "number" then tostring
            elif . == null then ""
            elif type == "string" then .
            else error("cannot join with \(type)") end))
  // "";
def @csv:
  if type != "array" then error("\(type) cannot be csv-formatted, only an array") end
  | map(if type == "string" then "\"" + gsub("\""; "\"\"") + "\""
        elif type == "number" or type == "boolean" then tojson
        elif . == null then ""
        else error("\(type) is not valid in a csv row") end)
  | join(",");
def @tsv:
  if type != "array" then error("\(type) cannot be tsv-formatted, only an array") end
  | map(if type == "string" then gsub("\\\\"; "\\\\") | gsub("\t"; "\\t") | gsub("\n"; "\\n") | gsub("\r"; "\\r")
        elif type == "number" or type == "boolean" then tojson
        elif . == null then ""
        else error("\(type) is not valid in a tsv row") end)
  | join("\t");
def format($f):
  if   $f == "text"   then @text   elif $f == "json"    then @json
  elif $f == "csv"    then @csv    elif $f == "tsv"     then @tsv
  elif $f == "html"   then @html   elif $f == "uri"     then @uri
  elif $f == "sh"     then @sh     elif $f == "base64"  then @base64
  elif $f == "base64d" then @base64d
  else error("\($f) is not a valid format") end;

# SQL-style operators
def IN(s): any(s == .; .);
def IN(src; s): any(src == s; .);
def INDEX(stream; f): reduce stream as $row ({}; .[$row | f | tostring] = $row);
def INDEX(f): INDEX(.[]; f);
def JOIN($index; f): [.[] | [., $index[f]]];
def JOIN($index; stream; f): stream | [., $index[f]];
def JOIN($index; stream; f; g): stream | [., $index[f]] | g;

# Paths. jq creates what a path needs: `null | .a[1] = 1` is
# `{"a":[null,1]}`. jaq only follows paths that exist, so before an update
# each of its paths is made to exist up to its last step: null becomes an
# object or an array, and an array is padded with nulls to the index.

# True when every step of `$p` but the last finds a container of the right
# kind, and an array index is within the array: jaq can then update it.
def _pollhook_ready($p):
  def ok($i):
    if $i == ($p | length) then true
    else $p[$i] as $k
      | if ($k | type) == "string" then
          type == "object" and ($i + 1 == ($p | length) or (.[$k] | ok($i + 1)))
        elif ($k | type) == "number" then
          type == "array" and $k < length and (.[$k] | ok($i + 1))
        else true end
    end;
  ok(0);

# Makes the containers `$p` needs. An array grows by at most a million
# elements: a response's `.[.n] = 1` should not take all memory.
def _pollhook_make($p):
  def make($i):
    if $i == ($p | length) then .
    else $p[$i] as $k
      | if . == null then (if ($k | type) == "string" then {} else [] end) end
      | if ($k | type) == "number" and type == "array" and $k >= length then
          if $k - length >= 1000000 then error("array index \($k) too large") end
          | . + [range(length; $k + 1) | null]
        end
      | if $i + 1 < ($p | length) and (($k | type) == "string" or ($k | type) == "number") then
          .[$k] |= make($i + 1)
        end
    end;
  make(0);

def _pollhook_ensure($p): if _pollhook_ready($p) then . else _pollhook_make($p) end;
def _pollhook_prepare(paths): reduce path(paths) as $p (.; _pollhook_ensure($p));

def setpath($p; $x): _pollhook_ensure($p) | getpath($p) = $x;
# jq deletes the paths last first, so that deleting `.[1]` does not move
# `.[2]`; a path that is not there is no deletion (but one through a
# number or a string is an error, as in jq).
def delpaths($ps):
  reduce ($ps | sort | reverse)[] as $p (.;
    if _pollhook_ready($p) then getpath($p) |= empty else (getpath($p) | empty), . end);
def del(f): delpaths([path(f)]);
def pick(f): . as $in | reduce path(f) as $p (null; setpath($p; $in | getpath($p)));

# Streams: a value as `[path, leaf]` events, each container closed by
# `[path of its last child]`.
def tostream:
  def events($p):
    if (type == "array" or type == "object") and length > 0 then
      . as $v
      | (if type == "array" then [range(length)] else keys_unsorted end) as $keys
      | ($keys[] as $k | $v[$k] | events($p + [$k])), [$p + [$keys[-1]]]
    else [$p, .] end;
  events([]);
def fromstream(events):
  foreach events as $e ({value: null, done: false};
    if .done then {value: null, done: false} end
    | if ($e | length) == 2 then
        setpath(["value"] + $e[0]; $e[1]) | .done = ($e[0] | length) == 0
      else .done = ($e[0] | length) == 1 end;
    if .done then .value else empty end);
def truncate_stream(events):
  . as $depth | null | events
  | if (.[0] | length) > $depth then .[0] |= .[$depth:] else empty end;
