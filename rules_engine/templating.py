"""Tenant-authored message templates: Jinja2 in a sandbox, with bounds.

Templates are written by tenant admins and rendered per recipient inside
Celery workers, so a template is untrusted code running next to every
tenant's data. Jinja's ``ImmutableSandboxedEnvironment`` keeps it away from
Python internals, files and settings; on top of that this module bounds what
the sandbox leaves open, because one template must not stall or exhaust a
worker:

- **time**: every loop iteration, call, operator, attribute lookup and output
  chunk checks a per-render deadline (``HERALD_TEMPLATE_RENDER_TIMEOUT_MS``).
  Loops are instrumented when compiled, since an empty nested loop calls no
  sandbox hook at all.
- **size**: output stops at the field's cap; ``*``, ``**``, ``+``, ``%``,
  ``~``, ``str.format``, the growing string methods and filters are checked
  *before* they build a value, so ``"x" * 10**9`` never allocates; a value is
  never turned into text when that text would pass ``MAX_VALUE_LENGTH``.
- **reach**: unsafe attributes raise instead of rendering as empty (the
  sandbox's default would hide the attempt); there is no loader, so
  ``include``/``extends``/``import`` are refused when the template is saved.

Missing values render as "" unless the template version is strict. Dates and
numbers are formatted with babel in the recipient's locale and timezone. In
JSON fields (a webhook body) every ``{{ value }}`` is JSON-escaped, so a
subscriber's name can not break out of its quotes; ``|tojson`` writes a whole
value.
"""

import functools
import json
import math
import re
import string
import threading
import time
import types
import zoneinfo
from collections import OrderedDict
from collections.abc import (
    Callable,
    Generator,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from collections.abc import Set as AbstractSet
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dt_time
from decimal import Decimal, InvalidOperation
from enum import Enum
from types import MappingProxyType
from typing import Any, Literal, NoReturn, cast, get_args
from urllib.parse import urlsplit

import jinja2
import jinja2.filters
from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from django.conf import settings
from jinja2 import nodes
from jinja2.runtime import Context, LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from channels_delivery.catalogue import Channel

# The largest text any single value, block or output may become. Above every
# channel's cap, so it only bites on values that could never be sent.
MAX_VALUE_LENGTH = 1024 * 1024
# The most items ``*``/``+`` may build into one list, as jinja caps range().
MAX_SEQUENCE_LENGTH = 100_000
# Integers past this many bits are no amount or count anyone sends.
MAX_INT_BITS = 4096
# Widths and precisions in format strings ("%10s", "{:>10}", "%_10d").
MAX_FORMAT_WIDTH = 1000
# Arguments a filter repeats into its output (urlize's target, indent's prefix).
MAX_REPEATED_ARGUMENT_LENGTH = 200
MAX_FILTER_FORMAT_LENGTH = 100
# Macro and recursive-loop calls inside one another. Counted, not left to
# Python's recursion limit, so the refusal does not depend on how deep the
# caller's stack already is or on how fast the machine reaches the limit.
MAX_CALL_DEPTH = 50
# Compiled templates kept per process, keyed by (cache_key, mode, strict).
TEMPLATE_CACHE_SIZE = 512
# How jinja names a template made from a string in tracebacks (for line numbers).
_TEMPLATE_FILENAME = "<template>"


# --- errors ------------------------------------------------------------------


class TemplateError(Exception):
    """A template that can not be compiled or rendered. ``message`` is meant
    for the tenant admin ("line 3: unexpected '}'"); ``field`` names the
    template field when one is known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)

    def in_field(self, field: str) -> "TemplateError":
        """The same problem, attributed to ``field``."""
        return type(self)(self.message, field=field)


class TemplateSyntaxProblem(TemplateError):
    """Refused when saved (and when rendered): the source does not compile."""


class TemplateRenderError(TemplateError):
    """Rendering failed: an undefined value in strict mode, a sandbox
    violation, bad input to a filter, output too long, or too slow."""


class _Refused(Exception):
    """Raised inside a render by a guard; becomes a TemplateRenderError."""


class _TooSlow(Exception):
    pass


# --- the channel catalogue ---------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """One field of a channel's template. ``max_length`` counts characters of
    the rendered text. ``html`` fields are autoescaped; ``json`` fields must
    render to JSON, with substituted values JSON-escaped; ``url`` fields must
    render to an http(s) URL or a path; ``single_line`` fields have line
    breaks folded into spaces (a subject can not carry a header break)."""

    required: bool
    max_length: int
    html: bool = False
    json: bool = False
    url: bool = False
    single_line: bool = False


CHANNEL_FIELDS: Mapping[str, Mapping[str, FieldSpec]] = MappingProxyType(
    {
        Channel.EMAIL.value: MappingProxyType(
            {
                # RFC 5322's line limit.
                "subject": FieldSpec(required=True, max_length=998, single_line=True),
                "html": FieldSpec(required=False, max_length=512 * 1024, html=True),
                "text": FieldSpec(required=False, max_length=512 * 1024),
                "preheader": FieldSpec(required=False, max_length=500, single_line=True),
            }
        ),
        # Ten concatenated segments, the most gateways (Twilio) accept.
        Channel.SMS.value: MappingProxyType({"text": FieldSpec(required=True, max_length=1600)}),
        Channel.CHAT.value: MappingProxyType(
            {
                # Slack truncates message text past 40,000 characters.
                "text": FieldSpec(required=True, max_length=40_000),
                "blocks": FieldSpec(required=False, max_length=100_000, json=True),
            }
        ),
        Channel.IN_APP.value: MappingProxyType(
            {
                "title": FieldSpec(required=True, max_length=200, single_line=True),
                "body": FieldSpec(required=False, max_length=5000),
                "action_url": FieldSpec(
                    required=False, max_length=2048, url=True, single_line=True
                ),
            }
        ),
        Channel.WEBHOOK.value: MappingProxyType(
            {"body": FieldSpec(required=True, max_length=256 * 1024, json=True)}
        ),
        Channel.PUSH.value: MappingProxyType(
            {
                "title": FieldSpec(required=True, max_length=200, single_line=True),
                "body": FieldSpec(required=False, max_length=2000),
                "icon": FieldSpec(required=False, max_length=2048, url=True, single_line=True),
                "url": FieldSpec(required=False, max_length=2048, url=True, single_line=True),
            }
        ),
    }
)

# At least one field of each group must render to something.
CHANNEL_REQUIRED_ONE_OF: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {Channel.EMAIL.value: ("html", "text")}
)


# --- what a template sees ----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RenderContext:
    """The variables of one render: ``event``, ``subscriber`` and ``tenant``
    (plus ``locale`` and ``timezone``), and how to format dates and numbers."""

    event: Mapping[str, Any]  # type, id, payload, actor, tenant_data, created_at
    subscriber: Mapping[str, Any]  # id, email, phone, name, locale, timezone, data
    tenant: Mapping[str, Any]  # slug, name
    locale: str = "en"  # the subscriber's locale (or the template's fallback)
    timezone: str = "UTC"


class _Mode(Enum):
    TEXT = "text"
    HTML = "html"
    JSON = "json"


# --- per-render state (deadline, locale, timezone) ---------------------------


@dataclass(kw_only=True)
class _RenderState:
    deadline: float
    timeout_ms: int
    locale: Locale
    zone: tzinfo
    ticks: int = 0
    depth: int = 0  # macro and recursive-loop calls currently open


_STATE: ContextVar[_RenderState | None] = ContextVar("herald_template_render", default=None)


def _tick() -> None:
    """Counts one step of the current render and enforces its deadline."""
    state = _STATE.get()
    if state is None:  # compiling, not rendering
        return
    state.ticks += 1
    if not state.ticks & 7 and time.monotonic() > state.deadline:
        raise _TooSlow(state.timeout_ms)


def _render_state() -> _RenderState:
    state = _STATE.get()
    if state is None:
        raise RuntimeError("template filters run only inside render_text()")
    return state


# --- size guards -------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, jinja2.Undefined):
        return "an undefined value"
    if value is None:
        return "none (null)"
    text = repr(value) if isinstance(value, str | int | float | Decimal) else ""
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}".strip()


def _namespace_attrs(value: object) -> Mapping[str, Any]:
    # Jinja keeps a namespace's attributes in a private dict; its repr prints them.
    attrs = object.__getattribute__(value, "_Namespace__attrs")
    return attrs if isinstance(attrs, Mapping) else {}


def _weight(value: object, limit: int = MAX_VALUE_LENGTH) -> int:
    """Roughly how long str(value) is, counted without building it. Shared
    references count every time: str() repeats them. Stops past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, Context | jinja2.Undefined):
            total += 1
        elif isinstance(item, Mapping):
            total += 4 * len(item) + 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | AbstractSet | KeysView | ValuesView | ItemsView):
            total += 2 * len(item) + 2
            stack.extend(item)
        elif isinstance(item, jinja2.utils.Namespace):
            stack.append(_namespace_attrs(item))
        else:
            total += 8
    return total


def _check_weight(*values: object) -> None:
    for value in values:
        if _weight(value) > MAX_VALUE_LENGTH:
            raise _Refused(f"a value would be longer than {MAX_VALUE_LENGTH} characters as text")


def _check_length(length: int, what: str = "a value") -> None:
    if length > MAX_VALUE_LENGTH:
        raise _Refused(f"{what} would be longer than {MAX_VALUE_LENGTH} characters")


def _check_result(value: object) -> None:
    if isinstance(value, str | bytes):
        _check_length(len(value))
    elif isinstance(value, int):
        # int.from_bytes() builds any size; dividing such numbers takes minutes.
        _check_int_bits(value.bit_length())


def _check_count(count: int) -> None:
    if count > MAX_SEQUENCE_LENGTH:
        raise _Refused(f"a list would have more than {MAX_SEQUENCE_LENGTH} items")


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refused(f"{what} must be a whole number, not {_describe(value)}")
    return value


def _check_int_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise _Refused(f"a number would be larger than {MAX_INT_BITS} bits")


_PERCENT_SPEC = re.compile(
    r"%(?:\([^)]*\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?."
)
_STRFTIME_WIDTH = re.compile(r"%[-_0^#]*(\d+)")


def _check_widths(numbers: Iterable[str], what: str) -> None:
    for number in numbers:
        if number == "*":
            raise _Refused(f"{what}: '*' widths are not supported")
        if number and int(number) > MAX_FORMAT_WIDTH:
            raise _Refused(f"{what}: widths and precisions above {MAX_FORMAT_WIDTH} are refused")


def _check_percent_format(fmt: str | bytes) -> None:
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    for match in _PERCENT_SPEC.finditer(text):
        _check_widths((match["width"] or "", match["precision"] or ""), "'%' formatting")


def _check_format_string(fmt: str) -> None:
    for _literal, _field, spec, _conversion in string.Formatter().parse(fmt):
        if not spec:
            continue
        if "{" in spec:
            raise _Refused("format(): nested fields in a format spec are not supported")
        _check_widths(re.findall(r"\d+", spec), "format()")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            _check_int_bits(left.bit_length() + right.bit_length())
            return
        if isinstance(right, int):
            sequence, count = left, right
        elif isinstance(left, int):
            sequence, count = right, left
        else:
            return
        if isinstance(sequence, str | bytes):
            _check_length(len(sequence) * count)
        elif isinstance(sequence, list | tuple):
            _check_count(len(sequence) * count)
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_int_bits(left.bit_length() * right)
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            _check_length(len(left) + len(right))
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            _check_count(len(left) + len(right))
    elif operator == "%" and isinstance(left, str | bytes):
        _check_percent_format(left)
        _check_weight(right)


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name)


def _check_string_method(
    owner: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Refuses a str/bytes method call whose result would be too long; returns
    the arguments to call it with (join's iterable, read once)."""
    if name in ("translate", "maketrans"):
        raise _Refused(f"{name}() is not available in templates")
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_length(_as_int(_argument(args, kwargs, 0, "width"), f"{name}()'s width"))
    elif name == "expandtabs":
        tabsize = _argument(args, kwargs, 0, "tabsize")
        tabsize = 8 if tabsize is None else _as_int(tabsize, "expandtabs()'s tabsize")
        tab = "\t" if isinstance(owner, str) else b"\t"
        _check_length(len(owner) + owner.count(tab) * max(tabsize, 0))  # type: ignore[arg-type]
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str | bytes) and isinstance(new, str | bytes):
            count = _argument(args, kwargs, 2, "count")
            hits = owner.count(old) if old else len(owner) + 1  # type: ignore[arg-type]
            if isinstance(count, int) and count >= 0:
                hits = min(hits, count)
            _check_length(len(owner) + hits * (len(new) - len(old)))
    elif name == "join" and args:
        items = list(args[0])
        _check_count(len(items))
        _check_length(len(owner) * max(len(items) - 1, 0) + _weight(items))
        return (items, *args[1:])
    return args


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    if not isinstance(obj, types.BuiltinMethodType | types.MethodType):
        return args
    owner = obj.__self__
    name = obj.__name__
    if isinstance(owner, str | bytes):
        return _check_string_method(owner, name, args, kwargs)
    if isinstance(owner, int) and name == "to_bytes":
        length = _argument(args, kwargs, 0, "length")
        if length is not None:
            _check_length(_as_int(length, "to_bytes()'s length"))
    elif isinstance(owner, date | dt_time) and name == "strftime":
        fmt = _argument(args, kwargs, 0, "format")
        if isinstance(fmt, str):
            _check_widths(_STRFTIME_WIDTH.findall(fmt), "strftime()")
    return args


# --- the sandbox -------------------------------------------------------------


def _refuse_probe(obj: Any, name: Any) -> None:
    # A lenient undefined answers every lookup with itself, so a probe like
    # ``lipsum.__globals__`` would pass as "". Real payload keys never start
    # with "__" on a value that is missing, so such a lookup is an attempt.
    if isinstance(obj, jinja2.Undefined) and isinstance(name, str) and name.startswith("__"):
        raise SecurityError(f"access to attribute {name!r} is not allowed")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, made to fail loudly and to stay within bounds."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        args = _check_call(obj, args, kwargs)
        if isinstance(obj, Macro | LoopContext):
            result = _nested_call(super().call, context, obj, args, kwargs)
        else:
            result = super().call(context, obj, *args, **kwargs)
        _check_result(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        _refuse_probe(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        _refuse_probe(obj, argument)
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # The default renders an unsafe attribute as empty; an attempt to
        # reach Python internals should fail the render where it is seen.
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt: str = value.__self__
        sandboxed = wrapper

        @functools.wraps(sandboxed)
        def bounded(*args: Any, **kwargs: Any) -> str:
            _tick()
            _check_format_string(fmt)
            _check_weight(args, kwargs)
            result = sandboxed(*args, **kwargs)
            _check_result(result)
            return result

        return bounded

    def concat(self, parts: Iterable[str]) -> str:
        """Joins a block's buffer (macros, ``{% set %}`` and filter blocks),
        which fills without passing a hook."""
        buffer = list(parts)
        _check_length(sum(map(len, buffer)), "a block")
        return "".join(buffer)


def _nested_call(
    call: Callable[..., Any],
    context: Context,
    obj: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    state = _STATE.get()
    if state is None:
        return call(context, obj, *args, **kwargs)
    if state.depth >= MAX_CALL_DEPTH:
        raise _Refused(
            f"nested too deeply: more than {MAX_CALL_DEPTH} macro or loop calls inside"
            " one another (a macro or loop calling itself?)"
        )
    state.depth += 1
    try:
        return call(context, obj, *args, **kwargs)
    finally:
        state.depth -= 1


_LOOP_GUARD = "_herald_loop"
_CONCAT = "_herald_concat"
_LOADING_TAGS: dict[type[nodes.Node], str] = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}


class _Instrument(NodeTransformer):
    """Routes every loop through the deadline and every ``~`` through the size
    guard: neither passes a sandbox hook on its own."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 (jinja's visitor names)
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_GUARD, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        operands = nodes.List(list(node.nodes), lineno=node.lineno)
        return nodes.Filter(operands, _CONCAT, [], [], None, None, lineno=node.lineno)


@jinja2.pass_context
def _loop_guard(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _tick()
        yield item


@jinja2.pass_context
def _concat(context: Context, operands: list[Any]) -> str:
    _tick()
    _check_weight(operands)
    if context.eval_ctx.autoescape:
        return markup_join(operands)
    return str_join(operands)


# --- filters -----------------------------------------------------------------

# Filters that never turn their input into text; every other filter's input
# is weighed first, so e.g. ``[big] * 100000 | string`` is refused unbuilt.
_NON_TEXT_FILTERS = frozenset(
    {
        "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float",
        "groupby", "int", "items", "last", "length", "list", "map", "max", "min", "random",
        "reject", "rejectattr", "reverse", "round", "select", "selectattr", "slice", "sort",
        "sum", "unique",
    }
)  # fmt: skip


def _bounded(func: Callable[..., Any], *, weigh_input: bool) -> Callable[..., Any]:
    """A filter that counts toward the deadline and can not return an
    oversized string. ``functools.wraps`` keeps jinja's pass_context marks."""

    @functools.wraps(func)
    def filter_(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if weigh_input:
            _check_weight(args, kwargs)
        result = func(*args, **kwargs)
        _check_result(result)
        return result

    return filter_


def _short_argument(value: object, what: str) -> None:
    if isinstance(value, str | bytes) and len(value) > MAX_REPEATED_ARGUMENT_LENGTH:
        raise _Refused(f"{what} may be at most {MAX_REPEATED_ARGUMENT_LENGTH} characters")


def _center(value: Any, width: int = 80) -> str:
    _check_length(_as_int(width, "center's width"))
    return jinja2.filters.do_center(value, width)


def _indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    prefix = width if isinstance(width, str) else " " * _as_int(width, "indent's width")
    text = str(value)
    _check_length(len(text) + (text.count("\n") + 1) * len(prefix))
    return jinja2.filters.do_indent(value, width, first, blank)


@jinja2.pass_eval_context
def _join(
    eval_ctx: nodes.EvalContext, value: Iterable[Any], d: str = "", attribute: Any = None
) -> str:
    items = list(value)
    _check_count(len(items))
    _check_length(len(str(d)) * max(len(items) - 1, 0) + _weight(items), "join's result")
    return jinja2.filters.do_join(eval_ctx, items, d, attribute)


@jinja2.pass_eval_context
def _replace(
    eval_ctx: nodes.EvalContext, value: Any, old: Any, new: Any, count: int | None = None
) -> str:
    text, old_text, new_text = str(value), str(old), str(new)
    hits = text.count(old_text) if old_text else len(text) + 1
    if count is not None:
        hits = min(hits, max(_as_int(count, "replace's count"), 0))
    _check_length(len(text) + hits * (len(new_text) - len(old_text)), "replace's result")
    return jinja2.filters.do_replace(eval_ctx, value, old, new, count)


@jinja2.pass_environment
def _wordwrap(
    environment: jinja2.Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    if _as_int(width, "wordwrap's width") < 1:
        raise _Refused("wordwrap's width must be at least 1")
    _short_argument(wrapstring, "wordwrap's wrapstring")
    return jinja2.filters.do_wordwrap(
        environment, s, width, break_long_words, wrapstring, break_on_hyphens
    )


@jinja2.pass_eval_context
def _urlize(eval_ctx: nodes.EvalContext, value: str, *args: Any, **kwargs: Any) -> str:
    # target, rel and extra_schemes are repeated for every link found.
    for argument in (*args, *kwargs.values()):
        if _weight(argument) > MAX_REPEATED_ARGUMENT_LENGTH:
            raise _Refused(f"urlize's arguments may be at most {MAX_REPEATED_ARGUMENT_LENGTH} long")
    return jinja2.filters.do_urlize(eval_ctx, value, *args, **kwargs)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_percent_format(str(value))
    return jinja2.filters.do_format(value, *args, **kwargs)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _check_count(_as_int(linecount, "batch's size"))
    return jinja2.filters.do_batch(value, linecount, fill_with)


def _slice(value: Iterable[Any], slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _check_count(_as_int(slices, "slice's count"))
    return jinja2.filters.do_slice(value, slices, fill_with)


@jinja2.pass_environment
def _sum(
    environment: jinja2.Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0
) -> Any:
    if isinstance(start, bool) or not isinstance(start, int | float | Decimal):
        raise _Refused("sum adds numbers only; use join for text")
    return jinja2.filters.do_sum(environment, iterable, attribute, start)


@jinja2.pass_eval_context
def _tojson(eval_ctx: nodes.EvalContext, value: Any, indent: int | None = None) -> Markup:
    if isinstance(value, jinja2.Undefined):
        str(value)  # raises in strict mode
        return Markup("null")
    if indent is not None and not 0 <= _as_int(indent, "tojson's indent") <= 8:
        raise _Refused("tojson's indent must be between 0 and 8")
    return jinja2.filters.do_tojson(eval_ctx, value, indent)


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, AbstractSet | KeysView | ValuesView | ItemsView):
        return list(value)
    raise TypeError(f"{type(value).__name__} can not be written as JSON")


# --- babel filters -----------------------------------------------------------

_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _missing_as_text(value: object) -> str | None:
    # An undefined value renders as "" when lenient and raises when strict.
    return str(value) if isinstance(value, jinja2.Undefined) else None


def _as_moment(value: object, filter_name: str) -> datetime | date:
    """A datetime (naive ones are UTC) or a date, from a datetime, an
    ISO-8601 string or a Unix timestamp."""
    moment: datetime | date | None = None
    if isinstance(value, datetime | date):
        moment = value
    elif isinstance(value, str) and len(value) <= 64:
        text = value.strip()
        try:
            if _DATE_ONLY.fullmatch(text):
                moment = date.fromisoformat(text)
            else:
                moment = datetime.fromisoformat(text)
        except ValueError:
            try:
                moment = datetime.fromtimestamp(float(text), tz=UTC)
            except (ValueError, OverflowError, OSError):
                moment = None
    elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(float(value), tz=UTC)
        except (ValueError, OverflowError, OSError):
            raise _Refused(f"{filter_name}: {value!r} is not a usable Unix timestamp") from None
    if moment is None:
        raise _Refused(
            f"{filter_name}: expected a date and time (a datetime, an ISO-8601 string or"
            f" a Unix timestamp), got {_describe(value)}"
        )
    if isinstance(moment, datetime) and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _local_datetime(moment: datetime | date, zone: tzinfo) -> datetime:
    if isinstance(moment, datetime):
        return moment.astimezone(zone)
    return datetime.combine(moment, dt_time(), tzinfo=zone)


def _babel_call(filter_name: str, fmt: object, call: Callable[[], str]) -> str:
    if not isinstance(fmt, str) or len(fmt) > MAX_FILTER_FORMAT_LENGTH:
        raise _Refused(
            f"{filter_name}: the format must be text of at most"
            f" {MAX_FILTER_FORMAT_LENGTH} characters"
        )
    try:
        return call()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _Refused(f"{filter_name}: can not format with {fmt!r} ({exc})") from None


@jinja2.pass_context
def _datetime_filter(context: Context, value: Any, format: str = "medium") -> str:
    if (missing := _missing_as_text(value)) is not None:
        return missing
    state = _render_state()
    moment = _local_datetime(_as_moment(value, "datetime"), state.zone)
    return _babel_call(
        "datetime",
        format,
        lambda: babel_dates.format_datetime(
            moment, format=format, tzinfo=state.zone, locale=state.locale
        ),
    )


@jinja2.pass_context
def _date_filter(context: Context, value: Any, format: str = "medium") -> str:
    if (missing := _missing_as_text(value)) is not None:
        return missing
    state = _render_state()
    moment = _as_moment(value, "date")
    day = moment.astimezone(state.zone).date() if isinstance(moment, datetime) else moment
    return _babel_call(
        "date", format, lambda: babel_dates.format_date(day, format=format, locale=state.locale)
    )


@jinja2.pass_context
def _time_filter(context: Context, value: Any, format: str = "medium") -> str:
    if (missing := _missing_as_text(value)) is not None:
        return missing
    state = _render_state()
    moment = _as_moment(value, "time")
    if not isinstance(moment, datetime):
        raise _Refused(f"time: {value!r} is a date without a time")
    return _babel_call(
        "time",
        format,
        lambda: babel_dates.format_time(
            moment, format=format, tzinfo=state.zone, locale=state.locale
        ),
    )


_Granularity = Literal["year", "month", "week", "day", "hour", "minute", "second"]
_GRANULARITIES: tuple[_Granularity, ...] = get_args(_Granularity)


@jinja2.pass_context
def _timeago_filter(context: Context, value: Any, granularity: str = "second") -> str:
    """ "3 days ago", "in 2 hours": the distance from now, in the locale."""
    if (missing := _missing_as_text(value)) is not None:
        return missing
    unit = next((unit for unit in _GRANULARITIES if unit == granularity), None)
    if unit is None:
        raise _Refused(f"timeago: the granularity must be one of {', '.join(_GRANULARITIES)}")
    state = _render_state()
    moment = _local_datetime(_as_moment(value, "timeago"), state.zone)
    delta: timedelta = moment - datetime.now(UTC)
    return _babel_call(
        "timeago",
        granularity,
        lambda: babel_dates.format_timedelta(
            delta, granularity=unit, add_direction=True, locale=state.locale
        ),
    )


def _as_number(value: object, filter_name: str) -> int | float | Decimal:
    if isinstance(value, int) and not isinstance(value, bool):
        _check_int_bits(value.bit_length())
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"{filter_name}: {value!r} is not a finite number")
        return value
    number: Decimal | None = None
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, str) and len(value) <= 100:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = None
    if number is None:
        raise _Refused(f"{filter_name}: expected a number, got {_describe(value)}")
    # Decimal("1e999999999") is a short string that formats to a billion digits.
    if not number.is_finite() or abs(number.adjusted()) > 300:
        raise _Refused(f"{filter_name}: {value!r} is not a number that can be formatted")
    return number


def _number_format(filter_name: str, fmt: object) -> None:
    if fmt is not None and (not isinstance(fmt, str) or len(fmt) > MAX_FILTER_FORMAT_LENGTH):
        raise _Refused(
            f"{filter_name}: the format must be a pattern of at most"
            f" {MAX_FILTER_FORMAT_LENGTH} characters, like '#,##0.00'"
        )


@jinja2.pass_context
def _number_filter(context: Context, value: Any, format: str | None = None) -> str:
    if (missing := _missing_as_text(value)) is not None:
        return missing
    state = _render_state()
    number = _as_number(value, "number")
    _number_format("number", format)
    return _babel_call(
        "number",
        format or "",
        lambda: babel_numbers.format_decimal(number, format=format, locale=state.locale),
    )


@jinja2.pass_context
def _percent_filter(context: Context, value: Any, format: str | None = None) -> str:
    if (missing := _missing_as_text(value)) is not None:
        return missing
    state = _render_state()
    number = _as_number(value, "percent")
    _number_format("percent", format)
    return _babel_call(
        "percent",
        format or "",
        lambda: babel_numbers.format_percent(number, format=format, locale=state.locale),
    )


@functools.cache
def _currencies() -> frozenset[str]:
    return frozenset(babel_numbers.list_currencies())


@jinja2.pass_context
def _currency_filter(context: Context, value: Any, code: Any, format: str | None = None) -> str:
    if (missing := _missing_as_text(value)) is not None:
        return missing
    state = _render_state()
    number = _as_number(value, "currency")
    currency = code.upper() if isinstance(code, str) else None
    if currency not in _currencies():
        raise _Refused(f"currency: {code!r} is not an ISO 4217 currency code (like 'EUR')")
    _number_format("currency", format)
    return _babel_call(
        "currency",
        format or "",
        lambda: babel_numbers.format_currency(number, currency, format=format, locale=state.locale),
    )


def _filters() -> dict[str, Callable[..., Any]]:
    builtin = dict(jinja2.filters.FILTERS)
    builtin.update(
        {
            "center": _center,
            "indent": _indent,
            "join": _join,
            "replace": _replace,
            "wordwrap": _wordwrap,
            "urlize": _urlize,
            "format": _format,
            "batch": _batch,
            "slice": _slice,
            "sum": _sum,
            "tojson": _tojson,
        }
    )
    filters = {
        name: _bounded(func, weigh_input=name not in _NON_TEXT_FILTERS)
        for name, func in builtin.items()
    }
    babel_filters: dict[str, Callable[..., Any]] = {
        "datetime": _datetime_filter,
        "date": _date_filter,
        "time": _time_filter,
        "timeago": _timeago_filter,
        "number": _number_filter,
        "currency": _currency_filter,
        "percent": _percent_filter,
    }
    filters.update({name: _bounded(f, weigh_input=False) for name, f in babel_filters.items()})
    filters[_LOOP_GUARD] = _loop_guard
    filters[_CONCAT] = _concat
    return filters


# --- output modes ------------------------------------------------------------


def _finalize_text(value: Any) -> Any:
    _check_weight(value)
    return value


def _finalize_json(value: Any) -> Any:
    """``{{ value }}`` in a JSON template: escaped for the inside of a JSON
    string, so no value can break out of its quotes; whole structures, numbers,
    booleans and null as JSON. ``|tojson`` output (Markup) goes in as it is."""
    _check_weight(value)
    if isinstance(value, jinja2.Undefined | Markup):
        return value
    if value is None or isinstance(value, bool | int | float | Mapping | list | tuple):
        return json.dumps(value, default=_json_default)
    text = value.isoformat() if isinstance(value, datetime | date | dt_time) else str(value)
    return json.dumps(text)[1:-1]


@functools.cache
def _environment(mode: _Mode, strict: bool) -> _Sandbox:
    env = _Sandbox(
        autoescape=mode is _Mode.HTML,
        undefined=jinja2.StrictUndefined if strict else jinja2.ChainableUndefined,
        finalize=_finalize_json if mode is _Mode.JSON else _finalize_text,
        extensions=["jinja2.ext.loopcontrols"],
    )
    # lipsum() writes as much text as asked for; nothing a message needs.
    env.globals.pop("lipsum", None)
    env.filters.clear()
    env.filters.update(_filters())
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "default": _json_default}
    return env


# --- compiling ---------------------------------------------------------------


def _located(line: int | None, message: str) -> str:
    return f"line {line}: {message}" if line else message


def _compile(source: str, env: _Sandbox) -> jinja2.Template:
    if not isinstance(source, str):
        raise TemplateSyntaxProblem(f"a template must be text, not {type(source).__name__}")
    try:
        tree = env.parse(source)
        for node in tree.find_all(tuple(_LOADING_TAGS)):
            raise TemplateSyntaxProblem(
                _located(
                    node.lineno,
                    f"{{% {_LOADING_TAGS[type(node)]} %}} is not available:"
                    " a template can not load other templates",
                )
            )
        tree = _Instrument().visit(tree)
        tree.set_environment(env)
        return env.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(_located(exc.lineno, exc.message or str(exc))) from None
    except (RecursionError, MemoryError, SyntaxError):
        raise TemplateSyntaxProblem("the template is nested too deeply to compile") from None


class _TemplateCache:
    """A bounded LRU of compiled templates. Each entry keeps its source, so a
    key reused for different text compiles afresh instead of rendering stale."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, tuple[str, jinja2.Template]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, source: str) -> jinja2.Template | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != source:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, source: str, template: jinja2.Template) -> None:
        with self._lock:
            self._entries[key] = (source, template)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _TemplateCache(TEMPLATE_CACHE_SIZE)


def _template(
    source: str, *, mode: _Mode, strict: bool, cache_key: Hashable | None
) -> jinja2.Template:
    env = _environment(mode, strict)
    if cache_key is None:
        return _compile(source, env)
    key = (cache_key, mode, strict)
    template = _cache.get(key, source)
    if template is None:
        template = _compile(source, env)
        _cache.put(key, source, template)
    return template


def validate_template(source: str, *, html: bool = False) -> None:
    """Compiles ``source`` as a template would be when rendered; raises
    TemplateSyntaxProblem ("line 3: unexpected '}'") when it can not be, when
    it is longer than HERALD_TEMPLATE_MAX_SOURCE_LENGTH, or when it uses
    include/extends/import. (The length is checked here only: a template saved
    under a larger limit still renders.)"""
    limit: int = settings.HERALD_TEMPLATE_MAX_SOURCE_LENGTH
    if isinstance(source, str) and len(source) > limit:
        raise TemplateSyntaxProblem(
            f"the template is {len(source)} characters long; the limit is {limit}"
        )
    _compile(source, _environment(_Mode.HTML if html else _Mode.TEXT, False))


# --- rendering ---------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _babel_locale(tag: str) -> Locale:
    """The closest locale babel knows: ``pt-BR``, then ``pt``, then English."""
    candidates = [tag.replace("-", "_"), tag.replace("-", "_").split("_")[0]]
    for candidate in candidates:
        try:
            return Locale.parse(candidate)
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return Locale("en")


def _zone(name: str) -> tzinfo:
    # Subscribers' timezones are validated when saved; a stale one must not
    # stop delivery, so it falls back to UTC.
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        return UTC


def _template_line(exc: BaseException) -> int | None:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _render_error(exc: Exception, timeout_ms: int) -> TemplateRenderError:
    if isinstance(exc, _TooSlow):
        text = f"rendering took longer than {timeout_ms} ms (a loop that runs too long?)"
    elif isinstance(exc, RecursionError):
        text = "nested too deeply (a macro or loop calling itself?)"
    elif isinstance(exc, MemoryError):
        text = "ran out of memory"
    elif isinstance(exc, SecurityError):
        text = f"not allowed: {exc}"
    elif isinstance(exc, _Refused | jinja2.TemplateError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return TemplateRenderError(_located(_template_line(exc), text))


def _render(
    source: str,
    context: RenderContext,
    *,
    mode: _Mode,
    strict: bool,
    max_length: int | None,
    cache_key: Hashable | None,
    variables: Mapping[str, Any] | None = None,
) -> str:
    template = _template(source, mode=mode, strict=strict, cache_key=cache_key)
    names: dict[str, Any] = {
        "event": context.event,
        "subscriber": context.subscriber,
        "tenant": context.tenant,
        "locale": context.locale,
        "timezone": context.timezone,
    }
    if variables:
        clash = names.keys() & variables.keys()
        if clash:
            raise ValueError(f"variables may not replace {sorted(clash)}")
        names.update(variables)
    limit = MAX_VALUE_LENGTH if max_length is None else min(max_length, MAX_VALUE_LENGTH)
    timeout_ms: int = settings.HERALD_TEMPLATE_RENDER_TIMEOUT_MS
    state = _RenderState(
        deadline=time.monotonic() + timeout_ms / 1000,
        timeout_ms=timeout_ms,
        locale=_babel_locale(context.locale),
        zone=_zone(context.timezone),
    )
    token = _STATE.set(state)
    chunks = cast(Generator[str, None, None], template.generate(names))
    try:
        parts: list[str] = []
        length = 0
        for chunk in chunks:
            length += len(chunk)
            if length > limit:
                raise _Refused(f"the text is longer than {limit} characters")
            parts.append(chunk)
            _tick()
        return "".join(parts)
    except Exception as exc:  # a template must never take its worker down
        raise _render_error(exc, timeout_ms) from exc
    finally:
        chunks.close()
        _STATE.reset(token)


def render_text(
    source: str,
    context: RenderContext,
    *,
    html: bool = False,
    strict: bool = False,
    max_length: int | None = None,
    cache_key: Hashable | None = None,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """Renders one template for one recipient.

    ``html`` autoescapes substituted values. ``strict`` makes a missing value
    an error instead of "". The text may be at most ``max_length`` characters
    (at most MAX_VALUE_LENGTH in any case). ``cache_key`` (e.g.
    ``(template_version_id, field)``) keeps the compiled template for the next
    render. ``variables`` adds top-level names next to ``event``,
    ``subscriber`` and ``tenant``, such as a layout's ``content``.

    Raises TemplateRenderError with a readable message, or
    TemplateSyntaxProblem if the source does not compile.
    """
    return _render(
        source,
        context,
        mode=_Mode.HTML if html else _Mode.TEXT,
        strict=strict,
        max_length=max_length,
        cache_key=cache_key,
        variables=variables,
    )


def _channel_fields(channel: str) -> Mapping[str, FieldSpec]:
    specs = CHANNEL_FIELDS.get(channel)
    if specs is None:
        known = ", ".join(CHANNEL_FIELDS)
        raise TemplateRenderError(f"{channel!r} is not a channel; channels are {known}")
    return specs


_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def _finish_field(text: str, spec: FieldSpec) -> str:
    if spec.single_line:
        text = _LINE_BREAKS.sub(" ", text).strip()
    if spec.json and text.strip():
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateRenderError(
                f"the rendered text is not valid JSON: {exc.msg} at line {exc.lineno}"
                f" column {exc.colno} (write whole values as {{{{ value|tojson }}}})"
            ) from None
        except RecursionError:
            raise TemplateRenderError("the rendered JSON is nested too deeply") from None
    if spec.url and text:
        parts = urlsplit(text)
        is_web = parts.scheme in ("http", "https") and bool(parts.netloc)
        is_path = not parts.scheme and text.startswith("/") and not text.startswith("//")
        if not (is_web or is_path):
            raise TemplateRenderError(
                f"must render to an http(s) URL or a path starting with '/', got {text[:80]!r}"
            )
    return text


def render_fields(
    channel: str,
    fields: Mapping[str, str],
    context: RenderContext,
    *,
    strict: bool = False,
    cache_key: Hashable | None = None,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Renders every field of one channel's template for one recipient, each
    within its FieldSpec (HTML autoescaped, JSON validated, URLs checked,
    length capped). Each field is cached under ``(cache_key, field)``.
    ``variables`` adds top-level names, as in ``render_text`` (a digest's
    ``digest``).

    Raises TemplateRenderError (or TemplateSyntaxProblem) whose ``field``
    names the field; also when a required field is missing or renders empty.
    """
    specs = _channel_fields(channel)
    rendered: dict[str, str] = {}
    for name, source in fields.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(specs)
            raise TemplateRenderError(
                f"{channel} templates have no field {name!r}; they have {known}", field=name
            )
        mode = _Mode.HTML if spec.html else _Mode.JSON if spec.json else _Mode.TEXT
        try:
            text = _render(
                source,
                context,
                mode=mode,
                strict=strict,
                max_length=spec.max_length,
                cache_key=None if cache_key is None else (cache_key, name),
                variables=variables,
            )
            rendered[name] = _finish_field(text, spec)
        except TemplateError as exc:
            raise exc.in_field(name) from exc
    for name, spec in specs.items():
        if spec.required and not rendered.get(name, "").strip():
            raise TemplateRenderError(
                "is required and rendered empty" if name in fields else "is required",
                field=name,
            )
    group = CHANNEL_REQUIRED_ONE_OF.get(channel)
    if group and not any(rendered.get(name, "").strip() for name in group):
        raise TemplateRenderError(
            f"{channel} templates need {' or '.join(group)}; none rendered any text",
            field=group[0],
        )
    return rendered
