"""The template sandbox: what tenant templates can not reach, the bounds that
keep a worker alive, and what they render. Pure unit tests, no database."""

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from markupsafe import Markup

from channels_delivery.catalogue import Channel
from rules_engine import templating
from rules_engine.templating import (
    CHANNEL_FIELDS,
    CHANNEL_REQUIRED_ONE_OF,
    MAX_CALL_DEPTH,
    MAX_VALUE_LENGTH,
    FieldSpec,
    RenderContext,
    TemplateError,
    TemplateRenderError,
    TemplateSyntaxProblem,
    render_fields,
    render_text,
    validate_template,
)

CREATED_AT = "2024-03-05T14:30:00Z"  # 15:30 in Berlin, 09:30 in New York
# Generous next to the 100 ms budget the bound tests run with: a slow CI
# machine must not flake, while a render that ignored the bound would run
# for minutes or exhaust memory.
BOUND_SECONDS = 2.0


def make_context(locale: str = "en", timezone: str = "UTC", **payload: Any) -> RenderContext:
    return RenderContext(
        event={
            "type": "order.shipped",
            "id": "evt_1",
            "payload": {"order": {"id": 42, "total": 1234.5}, **payload},
            "actor": None,
            "tenant_data": {},
            "created_at": CREATED_AT,
        },
        subscriber={
            "id": "sub_1",
            "email": "ann@example.com",
            "phone": "",
            "name": 'Ann "<b>" & Co',
            "locale": locale,
            "timezone": timezone,
            "data": {"plan": "pro"},
        },
        tenant={"slug": "acme", "name": "Acme"},
        locale=locale,
        timezone=timezone,
    )


@pytest.fixture
def ctx() -> RenderContext:
    return make_context()


@pytest.fixture
def fast_bound(settings: Any) -> None:
    settings.HERALD_TEMPLATE_RENDER_TIMEOUT_MS = 100


@pytest.fixture
def timed() -> Callable[[], float]:
    start = time.monotonic()
    return lambda: time.monotonic() - start


def fails(source: str, context: RenderContext, **options: Any) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        render_text(source, context, **options)
    return caught.value


# --- the sandbox: nothing outside the context is reachable -------------------

ATTACKS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ (1).__class__ }}",
    "{{ range.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ config.__class__.__init__.__globals__['os'] }}",
    "{{ request.application.__globals__.__builtins__.__import__('os') }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ event.__class__ }}",
    "{{ event['__class__'] }}",
    "{{ event.items.__self__ }}",
    "{{ '{0.__class__.__mro__}'.format('a') }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{x.__class__}'.format_map({'x': 1}) }}",
    "{{ ''|attr('__class__') }}",
    "{{ ['a']|map(attribute='__class__')|list }}",
    "{{ event.payload.update({'hacked': 1}) }}",
    "{{ subscriber.data.clear() }}",
    "{{ __import__('os').system('id') }}",
    "{{ open('/etc/passwd').read() }}",
    "{{ os.system('id') }}",
    "{% set x = event.payload.order.pop('id') %}",
]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("source", ATTACKS)
def test_attacks_fail_with_a_render_error(
    source: str, strict: bool, ctx: RenderContext, timed: Callable[[], float]
) -> None:
    error = fails(source, ctx, strict=strict)
    assert isinstance(error, TemplateRenderError)
    assert error.message.startswith("line 1: ")
    assert timed() < BOUND_SECONDS
    assert ctx.event["payload"] == {"order": {"id": 42, "total": 1234.5}}
    assert ctx.subscriber["data"] == {"plan": "pro"}


def test_an_unsafe_attribute_names_what_was_refused(ctx: RenderContext) -> None:
    error = fails("Hi\n\n{{ ''.__class__ }}", ctx)
    assert error.message == (
        "line 3: not allowed: access to attribute '__class__' of a 'str' object is not allowed"
    )


@pytest.mark.parametrize(
    "name", ["config", "request", "settings", "os", "open", "import", "sys", "environ"]
)
def test_server_names_are_not_there(name: str, ctx: RenderContext, settings: Any) -> None:
    error = fails(f"{{{{ {name} }}}}", ctx, strict=True)
    assert error.message == f"line 1: '{name}' is undefined"
    # Lenient: an unknown name is just missing; nothing of the server shows.
    assert render_text(f"{{{{ {name} }}}}{{{{ {name}.SECRET_KEY }}}}", ctx) == ""
    assert settings.SECRET_KEY not in render_text("{{ settings.SECRET_KEY }}", ctx)


@pytest.mark.parametrize(
    ("source", "tag"),
    [
        ("{% include '/etc/passwd' %}", "include"),
        ("{% extends 'base.html' %}", "extends"),
        ("{% import 'os' as os %}", "import"),
        ("{% from 'macros' import x %}", "from ... import"),
    ],
)
def test_templates_can_not_load_files(source: str, tag: str, ctx: RenderContext) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        validate_template("Hello\n" + source)
    assert caught.value.message == (
        f"line 2: {{% {tag} %}} is not available: a template can not load other templates"
    )
    with pytest.raises(TemplateSyntaxProblem):
        render_text(source, ctx)


# --- bounds: every runaway stops quickly with a readable error ---------------

RUNAWAYS = [
    ("{% for i in range(10**9) %}{% endfor %}", "Range too big"),
    (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "rendering took longer than 100 ms",
    ),
    (
        "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
        "rendering took longer than 100 ms",
    ),
    (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        "rendering took longer than 100 ms",
    ),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "nested too deeply"),
    ("{% for x in [1, 2] recursive %}{{ loop([1, 2]) }}{% endfor %}", "nested too deeply"),
    ("{{ 'x' * 10**9 }}", "a value would be longer than"),
    ("{{ [1] * 10**9 }}", "a list would have more than 100000 items"),
    ("{{ ('x' * 1000000) + ('x' * 1000000) }}", "a value would be longer than"),
    ("{{ 2 ** 100000 }}", "a number would be larger than 4096 bits"),
    ("{{ 10 ** (10 ** 10) }}", "a number would be larger than 4096 bits"),
    ("{{ '%0999999999d' % 1 }}", "widths and precisions above 1000 are refused"),
    ("{{ '%.999999999f' % 1 }}", "widths and precisions above 1000 are refused"),
    ("{{ '%*d' % (999999999, 1) }}", "'*' widths are not supported"),
    ("{{ '%0999999999d'|format(1) }}", "widths and precisions above 1000 are refused"),
    ("{{ '{:>999999999}'.format(1) }}", "widths and precisions above 1000 are refused"),
    ("{{ '{:{}}'.format(1, 999999999) }}", "nested fields in a format spec"),
    ("{{ '{0:>999999999}'.format_map([1]) }}", "widths and precisions above 1000"),
    ("{{ 'x'.center(10**9) }}", "a value would be longer than"),
    ("{{ 'x'.ljust(10**9) }}", "a value would be longer than"),
    ("{{ '1'.zfill(10**9) }}", "a value would be longer than"),
    ("{{ ('\t' * 1000).expandtabs(10**6) }}", "a value would be longer than"),
    ("{{ ('x' * 2000).replace('', 'y' * 2000) }}", "a value would be longer than"),
    ("{{ ('y' * 100000).join('x' * 100000) }}", "a value would be longer than"),
    ("{{ 'ab'.translate({97: 'x' * 100000}) }}", "translate() is not available"),
    ("{{ (1).to_bytes(10**9, 'big') }}", "a value would be longer than"),
    ("{{ (1).from_bytes(('x' * 100000).encode(), 'big') }}", "larger than 4096 bits"),
    ("{{ 'x'|center(10**9) }}", "a value would be longer than"),
    ("{{ ('a\n' * 1000)|indent(10**6) }}", "a value would be longer than"),
    ("{{ range(100000)|join('x' * 100000) }}", "join's result would be longer than"),
    ("{{ ('x' * 2000)|replace('', 'y' * 2000) }}", "replace's result would be longer"),
    ("{{ range(1)|batch(10**9, 'x')|list }}", "a list would have more than 100000 items"),
    ("{{ range(1)|slice(10**9)|list }}", "a list would have more than 100000 items"),
    ("{{ ('a ' * 1000)|wordwrap(1, wrapstring='x' * 100000) }}", "at most 200 characters"),
    ("{{ 'a.co b.co'|urlize(target='x' * 100000) }}", "at most 200"),
    ("{{ [[1] * 100000] * 100000|sum(start=[]) }}", "sum adds numbers only"),
    ("{{ {'a': 1}|tojson(indent=10**9) }}", "tojson's indent must be between 0 and 8"),
    ("{% set a = 'x' * 1000000 %}{{ [a] * 100000 }}", "a value would be longer than"),
    ("{% set a = 'x' * 1000000 %}{{ ([a] * 100000)|string }}", "a value would be longer"),
    ("{% set a = 'x' * 1000000 %}{{ ([a] * 100000)|tojson }}", "a value would be longer"),
    ("{% set a = 'x' * 1000000 %}{{ ([a] * 100000)|pprint }}", "a value would be longer"),
    ("{% set a = 'x' * 1000000 %}{{ '%s' % ([a] * 100000,) }}", "a value would be longer"),
    ("{% set a = 'x' * 1000000 %}{{ '{}'.format([a] * 100000) }}", "a value would be longer"),
    ("{% set a = 'x' * 1000000 %}{{ a ~ a }}", "a value would be longer than"),
    (
        "{% set a = 'x' * 1000000 %}{% set ns = namespace(l=[a] * 100000) %}{{ ns }}",
        "a value would be longer than",
    ),
    (
        "{% set ns = namespace(x=2) %}{% for i in range(64) %}"
        "{% set ns.x = ns.x * ns.x %}{% endfor %}",
        "a number would be larger than 4096 bits",
    ),
    (
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "a value would be longer than",
    ),
    (
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "a value would be longer than",
    ),
    (
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
        "{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}",
        "longer than",
    ),
    (
        "{% set a = 'x' * 1000 %}{% set b %}{% for i in range(2000) %}{{ a }}{% endfor %}"
        "{% endset %}",
        "a block would be longer than",
    ),
    (
        "{% set a = 'x' * 1000 %}"
        "{% macro m() %}{% for i in range(2000) %}{{ a }}{% endfor %}{% endmacro %}"
        "{{ m()|length }}",
        "a block would be longer than",
    ),
    (
        "{% set a = 'x' * 1000 %}"
        "{% filter upper %}{% for i in range(2000) %}{{ a }}{% endfor %}{% endfilter %}",
        "a block would be longer than",
    ),
]


@pytest.mark.usefixtures("fast_bound")
@pytest.mark.parametrize(("source", "problem"), RUNAWAYS)
def test_runaway_templates_stop_within_the_bound(
    source: str, problem: str, ctx: RenderContext, timed: Callable[[], float]
) -> None:
    error = fails(source, ctx)
    assert isinstance(error, TemplateRenderError)
    assert problem in error.message
    assert timed() < BOUND_SECONDS


# N calls inside one another, each adding one pair of brackets.
NESTED_MACRO = "{% macro f(n) %}({% if n %}{{ f(n - 1) }}{% endif %}){% endmacro %}{{ f(N - 1) }}"
NESTED_LOOP = (
    "{% set ns = namespace(tree=[]) %}{% for i in range(N) %}{% set ns.tree = [ns.tree] %}"
    "{% endfor %}{% for c in ns.tree recursive %}({{ loop(c) }}){% endfor %}"
)


@pytest.mark.parametrize("source", [NESTED_MACRO, NESTED_LOOP], ids=["macro", "loop"])
def test_calls_nest_up_to_a_counted_depth(source: str, ctx: RenderContext) -> None:
    # Counted by the sandbox, so the answer is the same on a slow machine, from
    # a deep caller stack, or with the render deadline still far away.
    deepest = source.replace("N", str(MAX_CALL_DEPTH))
    assert render_text(deepest, ctx) == "(" * MAX_CALL_DEPTH + ")" * MAX_CALL_DEPTH

    def from_deep_stack(frames: int) -> TemplateError:
        if frames:
            return from_deep_stack(frames - 1)
        return fails(source.replace("N", str(MAX_CALL_DEPTH + 1)), ctx)

    # 250 frames: deeper than a Celery worker calls from, far from the 1,000 limit.
    error = from_deep_stack(250)
    assert error.message == (
        f"line 1: nested too deeply: more than {MAX_CALL_DEPTH} macro or loop calls inside one"
        " another (a macro or loop calling itself?)"
    )
    # The count is per render: a refused render leaves nothing behind.
    assert render_text(deepest, ctx).count("(") == MAX_CALL_DEPTH


@pytest.mark.usefixtures("fast_bound")
def test_output_stops_at_the_cap(ctx: RenderContext, timed: Callable[[], float]) -> None:
    source = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    error = fails(source, ctx, max_length=1000)
    assert error.message == "the text is longer than 1000 characters"
    # Without a field cap, MAX_VALUE_LENGTH still applies.
    error = fails(source, ctx)
    assert error.message in (
        f"the text is longer than {MAX_VALUE_LENGTH} characters",
        "line 1: rendering took longer than 100 ms (a loop that runs too long?)",
    )
    assert timed() < 2 * BOUND_SECONDS


def test_the_render_timeout_is_a_setting(ctx: RenderContext, settings: Any) -> None:
    settings.HERALD_TEMPLATE_RENDER_TIMEOUT_MS = 30
    start = time.monotonic()
    error = fails(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", ctx
    )
    assert error.message == "line 1: rendering took longer than 30 ms (a loop that runs too long?)"
    assert time.monotonic() - start < BOUND_SECONDS


def test_deep_nesting_is_a_syntax_problem() -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        validate_template("{{" + "(" * 5000 + "1" + ")" * 5000 + "}}")
    assert caught.value.message == "the template is nested too deeply to compile"


def test_the_source_length_is_capped_when_saved(settings: Any, ctx: RenderContext) -> None:
    settings.HERALD_TEMPLATE_MAX_SOURCE_LENGTH = 100
    validate_template("x" * 100)
    with pytest.raises(TemplateSyntaxProblem) as caught:
        validate_template("x" * 101)
    assert caught.value.message == "the template is 101 characters long; the limit is 100"
    # A template saved under a larger limit still renders.
    assert render_text("x" * 101, ctx) == "x" * 101


def test_the_default_limits(settings: Any) -> None:
    assert settings.HERALD_TEMPLATE_RENDER_TIMEOUT_MS == 200
    assert settings.HERALD_TEMPLATE_MAX_SOURCE_LENGTH == 100 * 1024


# --- what the guards leave working -------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "{{ 7 % 3 }} {{ 2 ** 10 }} {{ 6 * 7 }} {{ 7 // 2 }} {{ 1 - 3 }} {{ 1 / 4 }}",
            "1 1024 42 3 -2 0.25",
        ),
        ("{{ '%s-%05d' % ('a', 42) }} {{ '%(n)s'|format(n=1) }}", "a-00042 1"),
        ("{{ '{:,}'.format(1234567) }} {{ '{:>4}|'.format('a') }}", "1,234,567    a|"),
        (
            "{{ 'ab' * 3 }} {{ [1] * 3 }} {{ 'a' + 'b' }} {{ [1] + [2] }}",
            "ababab [1, 1, 1] ab [1, 2]",
        ),
        (
            "{{ 'a-b'.replace('-', '+') }} {{ ', '.join(['a', 'b']) }} {{ 'x'.center(5) }}|",
            "a+b a, b   x  |",
        ),
        (
            "{{ ['a', 'b']|join(', ') }} {{ 'a b'|replace(' ', '_') }} {{ 'x'|center(3) }}|",
            "a, b a_b  x |",
        ),
        (
            "{% for x in [1, 2, 3] %}"
            "{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}",
            "1/3,2/3,3/3",
        ),
        ("{% for x in [1, 2, 3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}", "1"),
        ("{% for x in [] %}x{% else %}empty{% endfor %}", "empty"),
        ("{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}", "a=1"),
        ("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{% endfor %}", "24"),
        (
            "{% for n in [{'v': 1, 'c': [{'v': 2, 'c': []}]}] recursive %}"
            "{{ n.v }}{{ loop(n.c) }}{% endfor %}",
            "12",
        ),
        (
            "{% set ns = namespace(total=0) %}{% for i in range(4) %}"
            "{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }}",
            "6",
        ),
        ("{% macro hi(name) %}Hi {{ name }}{% endmacro %}{{ hi('Bo') }}", "Hi Bo"),
        (
            "{{ [3, 1, 2]|sort|join }} {{ [1, 2]|sum }} {{ 'abc'|upper }} {{ range(3)|list }}",
            "123 3 ABC [0, 1, 2]",
        ),
        ("{{ event.payload.order.id ~ '/' ~ tenant.slug }}", "42/acme"),
        ("{{ event.payload['order']['total'] }} {{ subscriber.data.plan }}", "1234.5 pro"),
        ("{{ locale }} {{ timezone }}", "en UTC"),
    ],
)
def test_ordinary_templates_render(source: str, expected: str, ctx: RenderContext) -> None:
    assert render_text(source, ctx) == expected


def test_dunder_keys_of_payloads_still_read(ctx: RenderContext) -> None:
    context = make_context(__typename="Order", _id="abc")
    assert render_text("{{ event.payload.__typename }} {{ event.payload._id }}", context) == (
        "Order abc"
    )


# --- escaping ----------------------------------------------------------------


def test_html_is_autoescaped_and_text_is_not(ctx: RenderContext) -> None:
    source = "<p>{{ subscriber.name }}</p>"
    assert render_text(source, ctx, html=True) == "<p>Ann &#34;&lt;b&gt;&#34; &amp; Co</p>"
    assert render_text(source, ctx) == '<p>Ann "<b>" & Co</p>'
    # ``~`` keeps escaping: the sandbox re-implements it, so check it here.
    assert render_text("{{ '<i>' ~ subscriber.name }}", ctx, html=True) == (
        "&lt;i&gt;Ann &#34;&lt;b&gt;&#34; &amp; Co"
    )
    assert render_text("{{ '<i>'|safe ~ '<' }}", ctx, html=True) == "<i>&lt;"


def test_render_fields_escapes_only_email_html(ctx: RenderContext) -> None:
    source = "{{ subscriber.name }}"
    email = render_fields(
        "email", {"subject": source, "html": source, "text": source, "preheader": source}, ctx
    )
    assert email == {
        "subject": 'Ann "<b>" & Co',
        "html": "Ann &#34;&lt;b&gt;&#34; &amp; Co",
        "text": 'Ann "<b>" & Co',
        "preheader": 'Ann "<b>" & Co',
    }
    assert render_fields("sms", {"text": source}, ctx) == {"text": 'Ann "<b>" & Co'}
    assert render_fields("chat", {"text": source}, ctx) == {"text": 'Ann "<b>" & Co'}


def test_variables_add_names_such_as_a_layouts_content(ctx: RenderContext) -> None:
    body = render_text("<p>{{ subscriber.name }}</p>", ctx, html=True)
    page = render_text(
        "<main>{{ content }}</main>",
        ctx,
        html=True,
        variables={"content": Markup(body)},  # noqa: S704 (rendered, so escaped)
    )
    assert page == "<main><p>Ann &#34;&lt;b&gt;&#34; &amp; Co</p></main>"
    with pytest.raises(ValueError, match="may not replace"):
        render_text("x", ctx, variables={"event": {}})


# --- strict and lenient ------------------------------------------------------


def test_lenient_renders_missing_values_as_empty(ctx: RenderContext) -> None:
    source = "[{{ order }}][{{ event.payload.missing.deeper }}][{{ subscriber.nope }}]"
    assert render_text(source, ctx) == "[][][]"
    assert render_text("{% for x in nothing %}x{% endfor %}{{ nothing|length }}", ctx) == "0"


def test_strict_names_the_missing_value_and_its_line(ctx: RenderContext) -> None:
    error = fails("Hello\n\n{{ order }}", ctx, strict=True)
    assert isinstance(error, TemplateRenderError)
    assert error.message == "line 3: 'order' is undefined"
    assert error.field is None
    error = fails("{{ event.payload.missing }}", ctx, strict=True)
    assert error.message == "line 1: 'dict object' has no attribute 'missing'"


def test_errors_at_render_time_carry_the_line(ctx: RenderContext) -> None:
    assert fails("a\nb\n{{ 1 / 0 }}", ctx).message == (
        "line 3: ZeroDivisionError: division by zero"
    )
    assert fails("a\n{{ 'soon'|datetime }}", ctx).message.startswith(
        "line 2: datetime: expected a date and time"
    )


# --- syntax problems ---------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Hello\n{{ name }\n", "line 2: unexpected '}'"),
        ("a\nb\n{% if x %}", "line 3: Unexpected end of template."),
        ("{{ x|no_such_filter }}", "line 1: No filter named 'no_such_filter'."),
        ("{% for x %}", "line 1: expected token 'in', got 'end of statement block'"),
    ],
)
def test_syntax_problems_name_their_line(source: str, message: str) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        validate_template(source)
    assert caught.value.message.startswith(message)
    assert caught.value.field is None


def test_validate_accepts_good_templates() -> None:
    validate_template("Hi {{ subscriber.name|title }} {{ event.created_at|datetime('short') }}")
    validate_template("<p>{{ x }}</p>", html=True)
    with pytest.raises(TemplateSyntaxProblem):
        validate_template(123)  # type: ignore[arg-type]


# --- babel filters, in two locales and a timezone ----------------------------

NOW = datetime.now(UTC)
FILTER_CASES = [
    ("{{ event.created_at|datetime }}", "Mar 5, 2024, 3:30:00\u202fPM", "05.03.2024, 15:30:00"),
    ("{{ event.created_at|datetime('short') }}", "3/5/24, 3:30\u202fPM", "05.03.24, 15:30"),
    ("{{ event.created_at|datetime('yyyy-MM-dd HH:mm') }}", "2024-03-05 15:30", "2024-03-05 15:30"),
    ("{{ event.created_at|date }}", "Mar 5, 2024", "05.03.2024"),
    ("{{ event.created_at|date('long') }}", "March 5, 2024", "5. März 2024"),
    ("{{ '2024-03-05T23:30:00Z'|date }}", "Mar 6, 2024", "06.03.2024"),  # past midnight in Berlin
    ("{{ '2024-03-05'|date }}", "Mar 5, 2024", "05.03.2024"),  # a date is not shifted
    ("{{ event.created_at|time }}", "3:30:00\u202fPM", "15:30:00"),
    ("{{ event.created_at|time('short') }}", "3:30\u202fPM", "15:30"),
    ("{{ 1709649000|datetime }}", "Mar 5, 2024, 3:30:00\u202fPM", "05.03.2024, 15:30:00"),
    ("{{ '2024-03-05T14:30:00'|time }}", "3:30:00\u202fPM", "15:30:00"),  # naive is UTC
    ("{{ event.payload.past|timeago }}", "3 days ago", "vor 3 Tagen"),
    ("{{ event.payload.future|timeago }}", "in 2 hours", "in 2 Stunden"),
    ("{{ event.payload.past|timeago('week') }}", "1 week ago", "vor 1 Woche"),
    ("{{ 1234567.891|number }}", "1,234,567.891", "1.234.567,891"),
    ("{{ 1234.5|number('#,##0.00') }}", "1,234.50", "1.234,50"),
    ("{{ '1234.5'|number }}", "1,234.5", "1.234,5"),
    ("{{ 1234.5|currency('EUR') }}", "€1,234.50", "1.234,50\xa0€"),
    ("{{ 1234.5|currency('usd') }}", "$1,234.50", "1.234,50\xa0$"),
    ("{{ 0.256|percent }}", "26%", "26\xa0%"),
    ("{{ missing|datetime }}{{ missing|number }}{{ missing|currency('EUR') }}", "", ""),
]


@pytest.mark.parametrize(("source", "english", "german"), FILTER_CASES)
def test_filters_format_for_the_locale_and_timezone(source: str, english: str, german: str) -> None:
    payload = {
        "past": NOW - timedelta(days=3, minutes=1),
        "future": NOW + timedelta(hours=2, minutes=1),
    }
    assert render_text(source, make_context("en", "Europe/Berlin", **payload)) == english
    assert render_text(source, make_context("de", "Europe/Berlin", **payload)) == german


def test_datetimes_accept_datetimes_iso_strings_and_timestamps() -> None:
    moment = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
    context = make_context("en", "America/New_York", at=moment, naive=moment.replace(tzinfo=None))
    source = (
        "{{ event.payload.at|datetime }}|{{ event.payload.naive|datetime }}|"
        "{{ event.created_at|datetime }}|{{ 1709649000|datetime }}|{{ '1709649000'|datetime }}"
    )
    assert render_text(source, context) == "|".join(["Mar 5, 2024, 9:30:00\u202fAM"] * 5)


def test_locales_and_timezones_fall_back() -> None:
    assert render_text("{{ 1234.5|number }}", make_context("pt-BR")) == "1.234,5"
    assert render_text("{{ 1234.5|number }}", make_context("de_AT")) == "1.234,5"
    assert render_text("{{ 1234.5|number }}", make_context("xx-YY")) == "1,234.5"
    assert render_text("{{ event.created_at|time }}", make_context("de", "Not/AZone")) == (
        "14:30:00"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ 'soon'|datetime }}", "datetime: expected a date and time"),
        (
            "{{ none|date }}",
            "date: expected a date and time (a datetime, an ISO-8601 string or a Unix"
            " timestamp), got none (null)",
        ),
        ("{{ [1]|time }}", "time: expected a date and time"),
        ("{{ '2024-03-05'|time }}", "time: '2024-03-05' is a date without a time"),
        (
            "{{ (10**20)|datetime }}",
            "datetime: 100000000000000000000 is not a usable Unix timestamp",
        ),
        ("{{ event.created_at|datetime(5) }}", "datetime: the format must be text"),
        ("{{ event.created_at|timeago('fortnight') }}", "timeago: the granularity must be one of"),
        ("{{ 'abc'|number }}", "number: expected a number, got str 'abc'"),
        ("{{ true|number }}", "number: expected a number, got bool"),
        ("{{ '1e999999999'|number }}", "number: '1e999999999' is not a number that can be"),
        ("{{ 'nan'|percent }}", "percent: 'nan' is not a number that can be formatted"),
        ("{{ 5|currency('XYZ') }}", "currency: 'XYZ' is not an ISO 4217 currency code"),
        ("{{ 5|currency(none) }}", "currency: None is not an ISO 4217 currency code"),
        ("{{ 5|number(['#']) }}", "number: the format must be a pattern"),
    ],
)
def test_bad_filter_input_is_a_readable_render_error(
    source: str, message: str, ctx: RenderContext
) -> None:
    error = fails(source, ctx)
    assert isinstance(error, TemplateRenderError)
    assert error.message.startswith(f"line 1: {message}")


def test_filters_raise_on_missing_values_when_strict(ctx: RenderContext) -> None:
    assert fails("{{ missing|datetime }}", ctx, strict=True).message == (
        "line 1: 'missing' is undefined"
    )


# --- channels: the catalogue, caps, JSON, URLs -------------------------------


def test_every_channel_has_fields() -> None:
    assert set(CHANNEL_FIELDS) == set(Channel.values)
    for channel, specs in CHANNEL_FIELDS.items():
        required = [name for name, spec in specs.items() if spec.required]
        assert required or channel in CHANNEL_REQUIRED_ONE_OF, channel
        assert all(spec.max_length > 0 for spec in specs.values())
    for channel, group in CHANNEL_REQUIRED_ONE_OF.items():
        assert set(group) <= set(CHANNEL_FIELDS[channel])


def test_the_field_table_matches_what_channels_accept() -> None:
    caps = {
        channel: {name: spec.max_length for name, spec in specs.items()}
        for channel, specs in CHANNEL_FIELDS.items()
    }
    assert caps["email"]["subject"] == 998
    assert caps["sms"] == {"text": 1600}
    assert caps["chat"]["text"] == 40_000
    assert caps["in_app"] == {"title": 200, "body": 5000, "action_url": 2048}
    assert caps["webhook"] == {"body": 256 * 1024}
    assert caps["push"] == {"title": 200, "body": 2000, "icon": 2048, "url": 2048}
    html_fields = [
        (channel, name)
        for channel, specs in CHANNEL_FIELDS.items()
        for name, spec in specs.items()
        if spec.html
    ]
    assert html_fields == [("email", "html")]
    assert CHANNEL_FIELDS["webhook"]["body"].json
    assert CHANNEL_FIELDS["chat"]["blocks"].json


def text_of_length(spec: FieldSpec, length: int) -> str:
    """A template rendering to a valid value of exactly ``length`` characters."""
    if spec.json:
        return f"\"{{{{ 'x' * {length - 2} }}}}\""
    if spec.url:
        prefix = "https://example.com/"
        return f"{prefix}{{{{ 'x' * {length - len(prefix)} }}}}"
    return f"{{{{ 'x' * {length} }}}}"


def minimal_fields(channel: str) -> dict[str, str]:
    fields = {
        name: text_of_length(spec, 10)
        for name, spec in CHANNEL_FIELDS[channel].items()
        if spec.required
    }
    for group in [CHANNEL_REQUIRED_ONE_OF.get(channel, ())]:
        if group:
            fields[group[-1]] = "x"
    return fields


CAPPED_FIELDS = [(channel, name) for channel, specs in CHANNEL_FIELDS.items() for name in specs]


@pytest.mark.parametrize(("channel", "name"), CAPPED_FIELDS)
def test_each_field_is_capped(channel: str, name: str, ctx: RenderContext) -> None:
    spec = CHANNEL_FIELDS[channel][name]
    fields = minimal_fields(channel)
    fields[name] = text_of_length(spec, spec.max_length)
    rendered = render_fields(channel, fields, ctx)
    assert len(rendered[name]) == spec.max_length
    fields[name] = text_of_length(spec, spec.max_length + 1)
    with pytest.raises(TemplateRenderError) as caught:
        render_fields(channel, fields, ctx)
    assert caught.value.field == name
    assert caught.value.message == f"the text is longer than {spec.max_length} characters"


def test_webhook_values_are_json_escaped(ctx: RenderContext) -> None:
    injected = make_context(name='Ann", "admin": true, "x": "')
    body = (
        '{"name": "{{ event.payload.name }}", "id": {{ event.payload.order.id }},'
        ' "order": {{ event.payload.order|tojson }}, "who": {{ subscriber.name|tojson }},'
        ' "missing": {{ nothing|tojson }}, "flag": {{ true }}, "none": {{ none }},'
        ' "when": "{{ event.created_at }}"}'
    )
    rendered = render_fields("webhook", {"body": body}, injected)
    data = json.loads(rendered["body"])
    assert data == {
        "name": 'Ann", "admin": true, "x": "',
        "id": 42,
        "order": {"id": 42, "total": 1234.5},
        "who": 'Ann "<b>" & Co',
        "missing": None,
        "flag": True,
        "none": None,
        "when": CREATED_AT,
    }


def test_webhook_body_must_render_to_json(ctx: RenderContext) -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render_fields("webhook", {"body": '{"name": {{ subscriber.name }}}'}, ctx)
    assert caught.value.field == "body"
    assert caught.value.message == (
        "the rendered text is not valid JSON: Expecting value at line 1 column 10"
        " (write whole values as {{ value|tojson }})"
    )
    with pytest.raises(TemplateRenderError) as caught:
        render_fields("webhook", {"body": '{"m": {{ missing|tojson }}}'}, ctx, strict=True)
    assert caught.value.message == "line 1: 'missing' is undefined"


def test_chat_blocks_are_json(ctx: RenderContext) -> None:
    blocks = '[{"type": "section", "text": {"type": "mrkdwn", "text": "Hi {{ subscriber.name }}"}}]'
    rendered = render_fields("chat", {"text": "Hi", "blocks": blocks}, ctx)
    assert json.loads(rendered["blocks"])[0]["text"]["text"] == 'Hi Ann "<b>" & Co'
    with pytest.raises(TemplateRenderError) as caught:
        render_fields("chat", {"text": "Hi", "blocks": "[{{ subscriber.name }}]"}, ctx)
    assert caught.value.field == "blocks"


@pytest.mark.parametrize(
    ("channel", "field"), [("in_app", "action_url"), ("push", "url"), ("push", "icon")]
)
@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "data:text/html,<script>", "//evil.example", "ftp://x.example/"]
)
def test_url_fields_refuse_other_schemes(
    channel: str, field: str, url: str, ctx: RenderContext
) -> None:
    fields = {"title": "t", field: url}
    with pytest.raises(TemplateRenderError) as caught:
        render_fields(channel, fields, ctx)
    assert caught.value.field == field
    assert "must render to an http(s) URL or a path starting with '/'" in caught.value.message


def test_url_fields_take_web_urls_and_paths(ctx: RenderContext) -> None:
    rendered = render_fields(
        "in_app",
        {"title": "Shipped", "action_url": "/orders/{{ event.payload.order.id }}\n"},
        ctx,
    )
    assert rendered["action_url"] == "/orders/42"
    rendered = render_fields(
        "push", {"title": "t", "url": "https://shop.example/o/{{ event.payload.order.id }}"}, ctx
    )
    assert rendered["url"] == "https://shop.example/o/42"


def test_single_line_fields_fold_line_breaks(ctx: RenderContext) -> None:
    rendered = render_fields(
        "email",
        {"subject": "Order\r\n  {{ event.payload.order.id }}\nshipped \n", "text": "a\nb\n"},
        ctx,
    )
    assert rendered == {"subject": "Order 42 shipped", "text": "a\nb"}


def test_required_fields(ctx: RenderContext) -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render_fields("email", {"text": "x"}, ctx)
    assert (caught.value.field, caught.value.message) == ("subject", "is required")
    with pytest.raises(TemplateRenderError) as caught:
        render_fields("email", {"subject": "{{ missing }}", "text": "x"}, ctx)
    assert (caught.value.field, caught.value.message) == (
        "subject",
        "is required and rendered empty",
    )
    with pytest.raises(TemplateRenderError) as caught:
        render_fields("email", {"subject": "Hi", "html": "  ", "text": "{{ nothing }}"}, ctx)
    assert caught.value.field == "html"
    assert caught.value.message == "email templates need html or text; none rendered any text"
    assert render_fields("email", {"subject": "Hi", "html": "<p>x</p>"}, ctx) == {
        "subject": "Hi",
        "html": "<p>x</p>",
    }


def test_unknown_channels_and_fields(ctx: RenderContext) -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render_fields("fax", {"text": "x"}, ctx)
    assert caught.value.message.startswith("'fax' is not a channel; channels are email")
    with pytest.raises(TemplateRenderError) as caught:
        render_fields("sms", {"text": "x", "subject": "y"}, ctx)
    assert caught.value.field == "subject"
    assert caught.value.message == "sms templates have no field 'subject'; they have text"


def test_field_errors_name_the_field_and_line(ctx: RenderContext) -> None:
    with pytest.raises(TemplateSyntaxProblem) as syntax:
        render_fields("email", {"subject": "Hi", "text": "a\nb\n{{ x }"}, ctx)
    assert (syntax.value.field, syntax.value.message) == ("text", "line 3: unexpected '}'")
    assert str(syntax.value) == "text: line 3: unexpected '}'"
    with pytest.raises(TemplateRenderError) as render:
        render_fields(
            "email", {"subject": "Hi", "html": "<p>\n{{ order.id }}</p>"}, ctx, strict=True
        )
    assert (render.value.field, render.value.message) == ("html", "line 2: 'order' is undefined")
    with pytest.raises(TemplateRenderError) as render:
        render_fields("sms", {"text": "{{ ''.__class__ }}"}, ctx)
    assert render.value.field == "text"


# --- the compiled-template cache ---------------------------------------------


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    compile_ = templating._compile

    def counting(source: str, env: Any) -> Any:
        seen.append(source)
        return compile_(source, env)

    monkeypatch.setattr(templating, "_compile", counting)
    return seen


def test_templates_compile_once_per_cache_key(compiles: list[str], ctx: RenderContext) -> None:
    key = ("test-version-1", "text")
    for _ in range(3):
        assert render_text("Hi {{ tenant.name }}", ctx, cache_key=key) == "Hi Acme"
    assert compiles == ["Hi {{ tenant.name }}"]
    # The same key with other text never renders the stale template.
    assert render_text("Bye {{ tenant.name }}", ctx, cache_key=key) == "Bye Acme"
    # Without a key nothing is kept.
    render_text("Hi", ctx)
    render_text("Hi", ctx)
    assert compiles == ["Hi {{ tenant.name }}", "Bye {{ tenant.name }}", "Hi", "Hi"]


def test_render_fields_caches_each_field(compiles: list[str], ctx: RenderContext) -> None:
    fields = {"subject": "S {{ tenant.slug }}", "text": "T"}
    for _ in range(2):
        assert render_fields("email", fields, ctx, cache_key=("test-version-2", "en")) == {
            "subject": "S acme",
            "text": "T",
        }
    assert compiles == ["S {{ tenant.slug }}", "T"]


def test_the_cache_is_bounded() -> None:
    cache = templating._TemplateCache(2)
    env = templating._environment(templating._Mode.TEXT, False)
    for n in range(3):
        cache.put(n, str(n), env.from_string(str(n)))
    assert cache.get(0, "0") is None
    assert cache.get(1, "1") is not None
    assert cache.get(2, "2") is not None
    assert cache.get(2, "other source") is None
