"""CEL conditions for rules: compile once when saved, cache per rule version, evaluate per event.

A condition sees three variables (``VARIABLES``): ``event`` (``type``,
``payload``, ``actor``, ``tenant_data``, ``created_at``, ``id``), ``subscriber``
(``id``, ``email``, ``phone``, ``locale``, ``timezone``, ``data``) and
``tenant`` (``slug``, ``name``, ``plan``). An **empty (or blank) condition
compiles to a program that always returns true**: a rule without a condition
matches every event.

The library (``common-expression-language``, Rust) is fast but has no limits
of its own, and a tenant's expression is untrusted input. So:

- before the Rust parser sees a source, ``_scan`` caps its length
  (``HERALD_CEL_MAX_LENGTH``), its bracket nesting (``MAX_NESTING``) and its
  operator chains (``MAX_CHAIN``): a deep parse tree overflows the native stack
  and kills the whole process (a chain of 16,000 ``+`` does, on the main
  thread's 8 MiB stack; 2,000 do on a 1 MiB thread stack);
- compiling checks that every variable is one of ``VARIABLES`` and every
  function is one the library has, so a typo fails when the rule is saved;
- evaluation can not be interrupted in this process (the library holds the GIL
  and never checks signals), so a program runs here only when its cost is
  bounded: no comprehension macro (``all``, ``exists``, ``exists_one``,
  ``map``, ``filter``) and (operators + 1)² * the activation's size within
  ``INLINE_BUDGET``. Everything else runs in a helper process
  (``rules_engine.cel_sandbox``) with a wall-clock deadline
  (``HERALD_CEL_TIMEOUT_MS``) and an address-space limit
  (``HERALD_CEL_MEMORY_MB``).

Converting Python values for the library costs far more than evaluating a
typical condition (about 110 µs per event against 3 µs per condition; see the
CEL section of docs/benchmarks.md), so build the variables once per event with
``build_activation`` and evaluate every rule against that ``Activation``.
Passing a plain dict to ``evaluate``/``matches`` works, but converts it again
on every call.

A comprehension variable is known only by name: ``[1].all(x, true) && x == 1``
compiles, and fails when evaluated ("unknown variable or function 'x'").
"""

from __future__ import annotations

import itertools
import pickle
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

import cel
from django.conf import settings

from rules_engine import cel_sandbox

VARIABLES = ("event", "subscriber", "tenant")

MAX_NESTING = 32
"""Brackets ``()``, ``[]`` and ``{}`` nested deeper than this are refused."""
MAX_CHAIN = 100
"""Operators chained without ``&&``, ``||``, ``?``, ``:`` or a comma between them
(``a.b.c + d * e ...``), summed over the enclosing brackets."""
MAX_VALUE_DEPTH = 64
"""Variables nested deeper than this (dicts and lists) are refused."""
INLINE_BUDGET = 10_000_000
"""(operators + 1)² * activation size up to which a comprehension-free program runs
in this process. A condition of 10 operators over a 500-value event costs 60,500."""

# Functions the library implements natively (others arrive as "undefined" at
# evaluation). Operators are named like ``_+_``, ``!_`` and ``@in``.
FUNCTIONS = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches",
        "int", "uint", "double", "string", "bytes", "timestamp", "duration", "dyn", "type",
        "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate",
        "getDayOfWeek", "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
# Type names a condition may compare with ``type(x)``; the library resolves them as
# identifiers, so they look like variables to the check.
TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


class CelError(Exception):
    """A condition could not be compiled or evaluated; ``message`` is fit to show a tenant."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CelCompileError(CelError):
    """The expression is invalid, too long, nested too deeply or uses an unknown name."""


class CelEvaluationError(CelError):
    """Evaluation failed: no such key, a type mismatch, a non-bool condition, too costly."""


# --- Variables ------------------------------------------------------------------------------

_activation_tokens = itertools.count(1)


@dataclass(frozen=True, eq=False)
class Activation:
    """The variables of one evaluation, converted for the library once.

    Build it with ``build_activation``; one activation serves any number of
    programs (every rule of an event).
    """

    variables: Mapping[str, Any]
    """The variables as plain Python values (what a condition sees)."""
    size: int
    """Values in the variables, strings counted by length / 16: the cost bound's input size."""
    context: cel.Context = field(repr=False)
    token: int = field(default_factory=lambda: next(_activation_tokens), repr=False)

    @cached_property
    def pickled(self) -> bytes:
        """The variables for the helper process (built on first use only)."""
        return pickle.dumps(dict(self.variables), protocol=pickle.HIGHEST_PROTOCOL)


def build_activation(variables: Mapping[str, Any]) -> Activation:
    """Check and convert ``variables`` (names from ``VARIABLES``) for evaluation.

    Values may be dicts (string, int or bool keys), lists and tuples, str, int,
    float, bool, None, bytes, Decimal (becomes a double), UUID (becomes its
    string), timedelta (a duration) and datetime (a timestamp; a naive datetime
    is taken as UTC, as Django stores them). Anything else raises
    ``CelEvaluationError`` naming where it is. Integers beyond 64 bits become
    doubles, as they do in JSON.
    """
    unknown = sorted(set(variables) - set(VARIABLES))
    if unknown:
        raise ValueError(f"unknown CEL variable {unknown[0]!r}; expected {', '.join(VARIABLES)}")
    counter = [0]
    converted = {}
    for name, value in variables.items():
        try:
            converted[name] = _convert(value, 0, counter)
        except _Unusable as error:
            raise CelEvaluationError(
                f"{name}{''.join(reversed(error.path))}{error.reason}"
            ) from None
    try:
        context = cel.Context(converted)
    except Exception as error:  # the conversion above should make this unreachable
        raise CelEvaluationError(f"the variables can not be used: {error}") from None
    return Activation(variables=converted, size=counter[0], context=context)


class _Unusable(Exception):
    """A value conditions can not use; ``path`` grows (innermost first) as it unwinds."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


_AS_IS = frozenset({type(None), bool, int, float, timedelta})


def _convert(value: Any, depth: int, counter: list[int]) -> Any:
    counter[0] += 1
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is str or kind is bytes:
        counter[0] += len(value) // 16
        return value
    if depth >= MAX_VALUE_DEPTH:
        raise _Unusable(f" is nested more than {MAX_VALUE_DEPTH} levels deep")
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise _Unusable(f" has a key of type {type(key).__name__}; keys must be strings")
            try:
                converted[key] = _convert(item, depth + 1, counter)
            except _Unusable as error:
                error.path.append(f".{key}")
                raise
        return converted
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_convert(item, depth + 1, counter))
            except _Unusable as error:
                error.path.append(f"[{index}]")
                raise
        return items
    if isinstance(value, str | bytes | bool | int | float | timedelta):  # subclasses
        return _convert(_base_value(value), depth, counter)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise _Unusable(
        f" is a {type(value).__name__}, which conditions can not use "
        "(use dicts, lists, strings, numbers, booleans, null or datetimes)"
    )


def _base_value(value: Any) -> Any:
    """A subclass's value as its base type (a str enum member becomes its str)."""
    for base in (bool, int, float, str, bytes):
        if isinstance(value, base):
            return base(value)
    return timedelta(seconds=value.total_seconds())


# --- Programs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CelProgram:
    """A compiled condition. Build it with ``compile_expression`` or ``program_for``."""

    source: str
    native: cel.Program | None = field(default=None, repr=False, compare=False)
    """The library's program; None for the empty condition, which is always true."""
    cost: int | None = field(default=None, repr=False, compare=False)
    """(operators + 1)², or None when the cost depends on the data (comprehensions)."""
    uses: frozenset[str] = field(default=frozenset(), compare=False)
    """The variables (of ``VARIABLES``) the expression reads: a condition that does
    not read ``subscriber`` is evaluated once per event, not per recipient."""

    def evaluate(self, variables: Mapping[str, Any] | Activation) -> Any:
        """The expression's value as plain Python values (bool, int, float, str, bytes,
        None, list, dict, datetime, timedelta); ``CelEvaluationError`` on failure."""
        if self.native is None:
            return True
        activation = variables if isinstance(variables, Activation) else build_activation(variables)
        try:
            if self.cost is not None and self.cost * max(activation.size, 1) <= INLINE_BUDGET:
                return cel_sandbox.execute(self.native, activation.context)
            return cel_sandbox.sandbox().evaluate(
                source=self.source,
                token=activation.token,
                variables=activation.pickled,
                timeout=settings.HERALD_CEL_TIMEOUT_MS / 1000,
                memory_bytes=settings.HERALD_CEL_MEMORY_MB * 1024 * 1024,
            )
        except cel_sandbox.Failure as failure:
            raise CelEvaluationError(failure.message) from None

    def matches(self, variables: Mapping[str, Any] | Activation) -> bool:
        """Whether the condition holds; a result that is not a bool is an error."""
        result = self.evaluate(variables)
        if result is True or result is False:
            return result
        raise CelEvaluationError(
            f"condition must return true or false, got {cel_type_name(result)}"
        )


def cel_type_name(value: Any) -> str:
    """The CEL name of a plain value's type (``int``, ``string``, ``map`` ...)."""
    names: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "bool"),
        (int, "int"),
        (float, "double"),
        (str, "string"),
        (bytes, "bytes"),
        (type(None), "null"),
        ((list, tuple), "list"),
        (dict, "map"),
        (datetime, "timestamp"),
        (timedelta, "duration"),
    ]
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def compile_expression(source: str) -> CelProgram:
    """Compile and check a condition; ``CelCompileError`` with the compiler's message."""
    if not isinstance(source, str):
        raise CelCompileError("the condition must be a string")
    limit = settings.HERALD_CEL_MAX_LENGTH
    if len(source) > limit:
        raise CelCompileError(
            f"expression is too long: {len(source):,} characters, at most {limit:,}"
        )
    if not source.strip():
        return CelProgram(source=source, native=None, cost=0)
    shape = _scan(source)
    try:
        native = cel.compile(source)
        variables = native.variables()
        functions = native.functions()
    except Exception as error:
        raise CelCompileError(_compiler_message(str(error))) from None
    except BaseException as error:
        if not cel_sandbox.is_panic(error):
            raise
        raise CelCompileError(
            "the expression could not be compiled (internal error in CEL)"
        ) from None
    for name in variables:
        if name not in VARIABLES and name not in TYPE_NAMES and name not in shape.bound_names:
            raise CelCompileError(
                f"unknown variable '{name}': conditions can use {', '.join(VARIABLES)}"
            )
    for name in functions:
        if name not in FUNCTIONS and not name.startswith(("_", "@", "!")):
            raise CelCompileError(f"unknown function '{name}'")
    cost = None if shape.comprehensions else (shape.operators + 1) ** 2 + shape.regex_cost
    uses = frozenset(name for name in variables if name in VARIABLES)
    return CelProgram(source=source, native=native, cost=cost, uses=uses)


def validate_expression(source: str) -> None:
    """Raise ``CelCompileError`` when ``source`` is not a valid condition (for validators)."""
    compile_expression(source)


# The first error follows the library's echo of the source; the others start a line.
_COMPILER_ERROR = re.compile(r"(?:^|: )ERROR: <input>:(\d+):(\d+): ([^\n]*)", re.MULTILINE)


def _compiler_message(text: str) -> str:
    """The library's message without its echo of the whole source."""
    found = _COMPILER_ERROR.findall(text)
    if not found:
        return "invalid expression"
    parts = [f"{message} (line {line}, column {column})" for line, column, message in found[:3]]
    more = len(found) - 3
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


# --- The cache ---------------------------------------------------------------------------------

_cache: OrderedDict[Hashable, tuple[str, CelProgram | CelCompileError]] = OrderedDict()
_cache_lock = threading.Lock()


def program_for(key: Hashable, source: str) -> CelProgram:
    """``compile_expression(source)``, cached under ``key`` (``(rule_id, rule_version)``).

    The same key and source give the same object; the cache keeps the
    ``HERALD_CEL_CACHE_SIZE`` most recently used keys. An invalid source is
    cached too, so a bad rule costs one compile, not one per event.
    """
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None and entry[0] == source:
            _cache.move_to_end(key)
            return _unpack(entry[1])
    result: CelProgram | CelCompileError
    try:
        result = compile_expression(source)
    except CelCompileError as error:
        result = error
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None and entry[0] == source:  # another thread was faster
            result = entry[1]
        _cache[key] = (source, result)
        _cache.move_to_end(key)
        while len(_cache) > max(1, settings.HERALD_CEL_CACHE_SIZE):
            _cache.popitem(last=False)
    return _unpack(result)


def _unpack(result: CelProgram | CelCompileError) -> CelProgram:
    if isinstance(result, CelCompileError):
        raise CelCompileError(result.message)
    return result


def clear_program_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --- The scan before the parser ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Shape:
    operators: int
    comprehensions: bool
    regex_cost: int
    bound_names: frozenset[str]


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>(?:[rR][bB]?|[bB][rR]?)?(?:'''|\"\"\"|'|"))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[uU]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]{}])
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_CHAINING = frozenset({"==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", ".", "in"})
_BREAKING = frozenset({"&&", "||", "?", ":", ","})
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def _scan(source: str) -> _Shape:
    """Bound the parse tree's depth, and find comprehensions and their variables."""
    tokens = _tokens(source)
    chains = [0]  # one counter per open bracket
    closers: list[str] = []
    operators = regexes = 0
    comprehensions = False
    bound: set[str] = set()
    previous = ""
    for index, (kind, text) in enumerate(tokens):
        if kind == "op" and text in _CLOSING:
            if previous in ("operand", ")", "]", "}") and text in "([":
                chains[-1] += 1  # a call or an index extends the chain it follows
                operators += 1
            called = tokens[index - 1] if text == "(" and index >= 1 else ("", "")
            if called == ("ident", "matches"):
                regexes += 1
            elif called[1] in _MACROS and index >= 2 and tokens[index - 2] == ("op", "."):
                comprehensions = True
                if index + 2 < len(tokens) and tokens[index + 2] == ("op", ","):
                    bound.add(tokens[index + 1][1])
            closers.append(_CLOSING[text])
            chains.append(0)
            if len(closers) > MAX_NESTING:
                raise CelCompileError(
                    f"expression is nested too deeply: more than {MAX_NESTING} levels of brackets"
                )
        elif kind == "op" and text in (")", "]", "}"):
            if closers and closers[-1] == text:
                closers.pop()
                chains.pop()
        elif text in _CHAINING and kind in ("op", "ident"):
            chains[-1] += 1
            operators += 1
            if sum(chains) > MAX_CHAIN:
                raise CelCompileError(
                    f"expression is too deeply chained: more than {MAX_CHAIN} operators in a "
                    "row (split it with && or ||, or use fewer nested brackets)"
                )
        elif kind == "op" and text in _BREAKING:
            chains[-1] = 0
            operators += 1
        elif kind == "op" and text == "!":
            operators += 1
        previous = _role(kind, text)
    # A regular expression costs up to its length for every character it scans.
    return _Shape(
        operators=operators,
        comprehensions=comprehensions,
        regex_cost=regexes * len(source),
        bound_names=frozenset(bound),
    )


def _role(kind: str, text: str) -> str:
    if kind in ("number", "string") or (kind == "ident" and text != "in"):
        return "operand"
    return text


def _tokens(source: str) -> list[tuple[str, str]]:
    """(kind, text) for every token but spaces and comments; strings become ``("string", "")``."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:  # unreachable: `other` matches any character
            break
        kind = match.lastgroup or "other"
        if kind == "string":
            position = _string_end(source, match.start(), match.group())
            tokens.append(("string", ""))
            continue
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _string_end(source: str, start: int, opening: str) -> int:
    """The index after the string literal that ``opening`` (prefix and quote) starts."""
    quote = opening.lstrip("rRbB")
    raw = "r" in opening.lower().replace(quote, "")
    position = start + len(opening)
    while position < len(source):
        char = source[position]
        if char == "\\" and not raw:
            position += 2
            continue
        if source.startswith(quote, position):
            return position + len(quote)
        if len(quote) == 1 and char in "\r\n":
            break
        position += 1
    line = source.count("\n", 0, start) + 1
    column = start - (source.rfind("\n", 0, start) + 1) + 1
    raise CelCompileError(f"unterminated string (line {line}, column {column})")


__all__ = [
    "FUNCTIONS",
    "TYPE_NAMES",
    "VARIABLES",
    "Activation",
    "CelCompileError",
    "CelError",
    "CelEvaluationError",
    "CelProgram",
    "build_activation",
    "cel_type_name",
    "clear_program_cache",
    "compile_expression",
    "program_for",
    "validate_expression",
]
