"""Tenant templates and rule conditions against the attacks the unit suites
(tests/rules_engine/test_templating.py and test_cel.py) do not already try:
the sandbox's own helpers (cycler, joiner, namespace, macros, loop, self),
attribute access smuggled through filters and format strings, template text
arriving as data, blow-ups through helpers, and CEL inputs that make the Rust
library overflow, panic or spin. Each is refused with a readable error within
a bounded time, and nothing crashes the process."""

import time
from collections.abc import Callable
from typing import Any

import pytest

from rules_engine.cel import CelError, CelEvaluationError, compile_expression
from rules_engine.templating import (
    RenderContext,
    TemplateRenderError,
    TemplateSyntaxProblem,
    render_text,
)
from tests.rules_engine.test_templating import make_context

BOUND_SECONDS = 3.0


@pytest.fixture
def timed() -> Callable[[], float]:
    start = time.monotonic()
    return lambda: time.monotonic() - start


@pytest.fixture
def ctx() -> RenderContext:
    return make_context(note="{{ 7 * 7 }}{% raw %}{{ ''.__class__ }}")


def refused(source: str, ctx: RenderContext, *, strict: bool = True) -> str:
    with pytest.raises(TemplateRenderError) as caught:
        render_text(source, ctx, strict=strict)
    return caught.value.message


# --- the sandbox's own helpers ----------------------------------------------------------

HELPER_ESCAPES = [
    ("{{ cycler(1, 2).next.__func__ }}", "'__func__' of a 'method'"),
    ("{{ cycler(1, 2).__init__ }}", "'__init__' of a 'Cycler'"),
    ("{{ joiner().__call__.__globals__ }}", "'__call__' of a 'Joiner'"),
    ("{{ joiner(',').__class__.__init__ }}", "'__class__' of a 'Joiner'"),
    ("{{ namespace().__class__.__init__.__globals__ }}", "'__class__' of a 'Namespace'"),
    ("{% set ns = namespace() %}{{ ns._Namespace__attrs }}", "'_Namespace__attrs'"),
    ("{% macro m() %}{% endmacro %}{{ m.__class__ }}", "'__class__' of a 'Macro'"),
    ("{% macro m() %}{% endmacro %}{{ m._func.__globals__ }}", "'_func' of a 'Macro'"),
    ("{% macro m() %}{% endmacro %}{{ m._environment }}", "'_environment' of a 'Macro'"),
    ("{% for x in [1] %}{{ loop.__class__ }}{% endfor %}", "'__class__' of a 'LoopContext'"),
    ("{% for x in [1] %}{{ loop._iterator }}{% endfor %}", "'_iterator' of a 'LoopContext'"),
    ("{{ self.__dict__ }}", "'__dict__' of a 'TemplateReference'"),
    ("{{ dict(a=1).__class__ }}", "'__class__' of a 'dict'"),
]


@pytest.mark.parametrize(("source", "named"), HELPER_ESCAPES)
def test_helpers_lead_nowhere(
    source: str, named: str, ctx: RenderContext, timed: Callable[[], float]
) -> None:
    message = refused(source, ctx)
    assert message.startswith("line 1: not allowed: access to attribute ")
    assert named in message
    assert timed() < BOUND_SECONDS


# --- attribute access smuggled in --------------------------------------------------------

SMUGGLED = [
    "{{ ''|attr('__cl' ~ 'ass__') }}",  # a name built at render time
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",  # escapes in the literal
    "{{ event['\\x5f\\x5fclass\\x5f\\x5f'] }}",
    "{{ ['x']|map('attr', '__class__')|list }}",
    "{{ [event]|selectattr('__class__')|list }}",
    "{{ [event]|sort(attribute='__class__')|list }}",
    "{{ [event]|groupby('__class__')|list }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ '{0[__class__]}'.format(event) }}",
    "{{ '{0.payload.__class__}'.format(event) }}",
]


@pytest.mark.parametrize("source", SMUGGLED)
def test_attribute_names_built_or_passed_indirectly_are_checked(
    source: str, ctx: RenderContext, timed: Callable[[], float]
) -> None:
    message = refused(source, ctx)
    assert "not allowed: access to attribute '__" in message
    assert timed() < BOUND_SECONDS


@pytest.mark.parametrize(
    "source", ["{{ ''.format.__self__ }}", "{{ '{0.gi_frame}'.format(cycler) }}"]
)
def test_lenient_rendering_of_a_refused_attribute_shows_nothing(
    source: str, ctx: RenderContext
) -> None:
    assert render_text(source, ctx) == ""
    with pytest.raises(TemplateRenderError):
        render_text(source, ctx, strict=True)


def test_a_namespace_key_named_like_a_dunder_is_only_a_key(ctx: RenderContext) -> None:
    """Setting ``ns.__class__`` stores a value; it does not retype the namespace."""
    source = "{% set ns = namespace() %}{% set ns.__class__ = 1 %}{{ ns.__class__ }}"
    message = refused(source, ctx)
    assert "'__class__' of a 'Namespace'" in message


# --- template text that arrives as data, and {% raw %} ----------------------------------


def test_template_syntax_in_the_payload_is_printed_not_run(ctx: RenderContext) -> None:
    note = "{{ 7 * 7 }}{% raw %}{{ ''.__class__ }}"
    assert render_text("{{ event.payload.note }}", ctx) == note
    assert render_text("{{ event.payload.note|safe }}", ctx) == note
    # Even when a template builds template text, it is rendered once.
    assert render_text("{% set x %}{{ '{{' }} 7*7 {{ '}}' }}{% endset %}{{ x }}", ctx) == (
        "{{ 7*7 }}"
    )


def test_raw_blocks_print_attacks_as_text(ctx: RenderContext) -> None:
    source = "{% raw %}{{ ''.__class__.__mro__ }}{% endraw %}"
    assert render_text(source, ctx, strict=True) == "{{ ''.__class__.__mro__ }}"


@pytest.mark.parametrize(
    "source",
    [
        "{% raw %}{% endraw %}{{ ''.__class__ }}",
        "{{ '{% raw %}' }}{{ ''.__class__ }}",
        "{{ '{% endraw %}' }}{{ ''.__class__ }}",
    ],
)
def test_raw_markers_do_not_hide_what_follows(source: str, ctx: RenderContext) -> None:
    assert "'__class__' of a 'str'" in refused(source, ctx)


def test_an_unclosed_raw_block_is_a_syntax_problem(ctx: RenderContext) -> None:
    with pytest.raises(TemplateSyntaxProblem):
        render_text("{% raw %}{{ ''.__class__ }}", ctx)


# --- blow-ups through helpers and filters --------------------------------------------------

HELPER_BOMBS = [
    ("{{ cycler(*range(10**6)) }}", "Range too big"),
    ("{{ range(10**18)|length }}", "Range too big"),
    ("{{ range(0, 10**18, 10**12)|list|length }}", "Range too big"),
    ("{{ {}.fromkeys(range(100000), 'x' * 1000000) }}", "a value would be longer than"),
    ("{{ ('<' * 500000)|e }}", "a value would be longer than"),
    ("{{ ('<' * 900000)|e|e }}", "a value would be longer than"),
    ("{{ ('\\u00ff' * 1000000)|urlencode }}", "a value would be longer than"),
    ("{{ 'x'.encode('utf-32') * 10**8 }}", "a value would be longer than"),
    ("{{ ('x ' * 500000).split() * 100 }}", "a list would have more than 100000 items"),
    ("{{ 'abc'|batch(10**9)|list }}", "a list would have more than 100000 items"),
    ("{{ 'x'|reverse * 10**9 }}", "a value would be longer than"),
    ("{{ 99999999999999999999999 ** 999 }}", "a number would be larger than 4096 bits"),
    ("{{ '%s' % (('x' * 100000),) * 1000 }}", "a value would be longer than"),
]


@pytest.mark.parametrize(("source", "problem"), HELPER_BOMBS)
def test_blow_ups_through_helpers_stop_within_the_bound(
    source: str, problem: str, ctx: RenderContext, timed: Callable[[], float], settings: Any
) -> None:
    settings.HERALD_TEMPLATE_RENDER_TIMEOUT_MS = 100
    assert problem in refused(source, ctx, strict=False)
    assert timed() < BOUND_SECONDS


MUTUAL_RECURSION = [
    "{% macro a(n) %}{{ b(n) }}{% endmacro %}{% macro b(n) %}{{ a(n) }}{% endmacro %}{{ a(1) }}",
    "{% macro m() %}{{ caller() }}{% endmacro %}"
    "{% macro r() %}{% call m() %}{{ r() }}{% endcall %}{% endmacro %}{{ r() }}",
    "{% macro a() %}{% for x in [1] recursive %}{{ a() }}{% endfor %}{% endmacro %}{{ a() }}",
]


@pytest.mark.parametrize("source", MUTUAL_RECURSION)
def test_recursion_through_other_macros_and_callers_stops(
    source: str, ctx: RenderContext, timed: Callable[[], float]
) -> None:
    assert "nested too deeply" in refused(source, ctx, strict=False)
    assert timed() < BOUND_SECONDS


def test_lipsum_is_not_there(ctx: RenderContext) -> None:
    """Jinja's lipsum(n) builds n paragraphs: a memory bomb in one call."""
    assert refused("{{ lipsum(10**9) }}", ctx) == "line 1: 'lipsum' is undefined"


# --- CEL: inputs that make the library overflow, panic or spin -----------------------------

VARIABLES = {
    "event": {"type": "x", "payload": {"s": "a" * 100_000, "ids": list(range(1000))}},
    "subscriber": {},
    "tenant": {},
}

OVERFLOWS = [
    ("-9223372036854775808 / -1 == 1", "overflow"),  # i64::MIN / -1 panics unchecked Rust
    ("-9223372036854775808 % -1 == 0", "overflow"),
    ("9223372036854775807 + 1 > 0", "overflow"),
    ("18446744073709551615u + 1u > 0u", "overflow"),
    ("int(1e300) > 0", "overflow"),
    ("uint(-1) == 1u", "overflow"),
    ("int('99999999999999999999') > 0", "too large"),
    ("timestamp('9999-12-31T23:59:59Z') + duration('100000h') > timestamp(0)", "overflow"),
    ("timestamp('0000-01-01T00:00:00Z') - duration('1h') < timestamp(0)", "overflow"),
    ("'a'.matches('(a{1000}){1000}')", "not a valid regex"),  # past the regex size limit
]


@pytest.mark.parametrize(("source", "problem"), OVERFLOWS)
def test_overflows_and_oversized_regexes_are_evaluation_errors(
    source: str, problem: str, timed: Callable[[], float]
) -> None:
    program = compile_expression(source)
    with pytest.raises(CelEvaluationError) as caught:
        program.matches(VARIABLES)
    message = caught.value.message
    assert problem in message.lower()
    assert "\n" not in message
    assert len(message) <= 300
    assert timed() < BOUND_SECONDS


def test_catastrophic_backtracking_is_not_possible(timed: Callable[[], float]) -> None:
    """The library's regex engine is linear-time: the classic ReDoS pattern over
    100,000 characters answers at once instead of running for ages."""
    program = compile_expression(
        "event.payload.s.matches('^(a+)+$') && !(event.payload.s + 'b').matches('^(a+)+$')"
    )
    assert program.matches(VARIABLES) is True
    assert timed() < BOUND_SECONDS


@pytest.mark.parametrize(
    "source",
    [
        # 1,000 copies of a 100,000-character string: 100 MB built in a comprehension.
        "size(event.payload.ids.map(x, event.payload.s)) > 0",
        # A million copies.
        "event.payload.ids.map(x, event.payload.ids.map(y, event.payload.s)).size() > 0",
        # A string doubled in a comprehension over the payload.
        "event.payload.ids.all(x, size(event.payload.s + event.payload.s + event.payload.s) > 0)"
        " && event.payload.ids.exists(x, event.payload.ids.all(y, y >= 0 && x >= 0) && false)",
    ],
)
def test_string_bombs_in_comprehensions_are_stopped(
    source: str, settings: Any, timed: Callable[[], float]
) -> None:
    settings.HERALD_CEL_TIMEOUT_MS = 200
    program = compile_expression(source)
    with pytest.raises(CelError) as caught:
        program.matches(VARIABLES)
    assert caught.value.message.startswith(("evaluation took longer", "evaluation was stopped"))
    assert timed() < BOUND_SECONDS * 2
    # The helper process was replaced: the next costly evaluation works.
    assert compile_expression("event.payload.ids.exists(x, x == 999)").matches(VARIABLES)


def test_a_source_full_of_string_literals_is_bounded_by_length(settings: Any) -> None:
    """Length, not content, is what the compiler is protected by: 4,096
    characters of string concatenations compile and run at once."""
    source = " || ".join(["'" + "x" * 60 + "' + 'y' == 'z'"] * 50)
    assert len(source) <= settings.HERALD_CEL_MAX_LENGTH
    started = time.monotonic()
    assert compile_expression(source).matches(VARIABLES) is False
    assert time.monotonic() - started < BOUND_SECONDS
