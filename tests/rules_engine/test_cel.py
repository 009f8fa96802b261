"""CEL conditions: compiling, converting variables, evaluating, caching, and the abuse bounds.

Pure unit tests: no database. The abuse tests are security tests: each one
fails (or hangs until pytest-timeout) if its bound is removed.
"""

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any

import pytest

from rules_engine import cel
from rules_engine.cel import (
    FUNCTIONS,
    VARIABLES,
    Activation,
    CelCompileError,
    CelError,
    CelEvaluationError,
    CelProgram,
    build_activation,
    clear_program_cache,
    compile_expression,
    program_for,
    validate_expression,
)

CREATED = datetime(2025, 6, 3, 12, 30, tzinfo=UTC)


def variables(**overrides: Any) -> dict[str, Any]:
    event = {
        "type": "order.shipped",
        "id": "evt_1",
        "actor": "user-7",
        "tenant_data": {"region": "eu"},
        "created_at": CREATED,
        "payload": {"total": 129.5, "currency": "EUR", "items": [{"sku": "A-1", "qty": 2}]},
    }
    subscriber = {
        "id": "user-1",
        "email": "ada@example.com",
        "phone": None,
        "locale": "de-DE",
        "timezone": "Europe/Berlin",
        "data": {"tags": ["vip", "beta"], "orders": 12},
    }
    tenant = {"slug": "alpha", "name": "Alpha", "plan": "pro"}
    found: dict[str, Any] = {"event": event, "subscriber": subscriber, "tenant": tenant}
    for name, value in overrides.items():
        found[name] = value
    return found


def payload(**values: Any) -> dict[str, Any]:
    return variables(event={**variables()["event"], "payload": values})


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    clear_program_cache()
    yield
    clear_program_cache()


def compile_error(source: str) -> str:
    with pytest.raises(CelCompileError) as caught:
        compile_expression(source)
    assert isinstance(caught.value, CelError)
    return caught.value.message


def evaluation_error(source: str, values: dict[str, Any] | Activation) -> str:
    program = compile_expression(source)
    with pytest.raises(CelEvaluationError) as caught:
        program.matches(values)
    assert isinstance(caught.value, CelError)
    return caught.value.message


# --- Compiling -----------------------------------------------------------------------------


def test_compiles_a_typical_condition() -> None:
    source = 'event.payload.total > 100 && subscriber.locale.startsWith("de")'
    program = compile_expression(source)
    assert isinstance(program, CelProgram)
    assert program.source == source
    validate_expression(source)  # returns None, raises nothing


def test_syntax_error_has_the_compilers_message_without_the_echoed_source() -> None:
    message = compile_error("event.payload.total > > 1")
    assert message.startswith("Syntax error: extraneous input '>'")
    assert "(line 1, column 23)" in message
    assert "Failed to parse" not in message
    assert "\n" not in message
    assert compile_error("1 +").startswith("Syntax error: mismatched input '<EOF>'")


def test_validate_expression_raises_the_compile_error() -> None:
    with pytest.raises(CelCompileError):
        validate_expression("event.type ==")


@pytest.mark.parametrize(
    ("source", "name"),
    [("foo == 1", "foo"), ("os.system('rm -rf /')", "os"), ("request.user != ''", "request")],
)
def test_unknown_top_level_variable_is_a_compile_error(source: str, name: str) -> None:
    message = compile_error(source)
    assert message == f"unknown variable '{name}': conditions can use event, subscriber, tenant"


def test_all_three_variables_and_comprehension_variables_are_known() -> None:
    compile_expression(
        "event.type != '' && subscriber.id != '' && tenant.slug != '' && "
        "event.payload.items.exists(item, item.qty > 1) && [1, 2].all(n, n > 0)"
    )


def test_unknown_function_is_a_compile_error() -> None:
    assert compile_error("subscriber.email.lowerAscii() == 'x'") == "unknown function 'lowerAscii'"


# One call of every function compile_expression accepts: the list must match the library.
FUNCTION_SAMPLES = {
    "size": "size('abc') == 3",
    "contains": "'abc'.contains('b')",
    "startsWith": "'abc'.startsWith('a')",
    "endsWith": "'abc'.endsWith('c')",
    "matches": "'abc'.matches('^a.c$')",
    "int": "int('7') == 7",
    "uint": "uint(7) == 7u",
    "double": "double(1) == 1.0",
    "string": "string(7) == '7'",
    "bytes": "bytes('a') == b'a'",
    "timestamp": "timestamp('2025-06-03T12:30:00Z') == event.created_at",
    "duration": "duration('90m') == duration('1h30m')",
    "dyn": "dyn(1) == 1",
    "type": "type(1) == int",
    "getFullYear": "event.created_at.getFullYear() == 2025",
    "getMonth": "event.created_at.getMonth() == 5",
    "getDayOfYear": "event.created_at.getDayOfYear() == 153",
    "getDayOfMonth": "event.created_at.getDayOfMonth() == 2",
    "getDate": "event.created_at.getDate() == 3",
    "getDayOfWeek": "event.created_at.getDayOfWeek() == 2",
    "getHours": "event.created_at.getHours() == 12",
    "getMinutes": "event.created_at.getMinutes() == 30",
    "getSeconds": "event.created_at.getSeconds() == 0",
    "getMilliseconds": "event.created_at.getMilliseconds() == 0",
}


def test_every_allowed_function_exists_in_the_library() -> None:
    assert set(FUNCTION_SAMPLES) == FUNCTIONS
    for name, source in FUNCTION_SAMPLES.items():
        assert compile_expression(source).matches(variables()) is True, name


def test_type_names_can_be_compared() -> None:
    for name, value in [("int", "1"), ("string", "'a'"), ("map", "{}"), ("null_type", "null")]:
        assert compile_expression(f"type({value}) == {name}").matches({}) is True
    assert compile_expression("type(event.payload.total) == double").matches(variables())


def test_non_string_source_is_a_compile_error() -> None:
    assert compile_error(42) == "the condition must be a string"  # type: ignore[arg-type]


# --- The empty condition -------------------------------------------------------------------


@pytest.mark.parametrize("source", ["", "   ", "\n\t"])
def test_empty_condition_always_matches(source: str) -> None:
    program = compile_expression(source)
    assert program.native is None
    assert program.matches(variables()) is True
    assert program.matches({}) is True
    assert program.evaluate({}) is True
    assert program_for(("rule", 1), source).matches({}) is True


# --- Typical conditions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "locale", "expected"),
    [(129.5, "de-DE", True), (99, "de-DE", False), (129.5, "fr-FR", False), (101, "de", True)],
)
def test_total_and_locale(total: float, locale: str, expected: bool) -> None:
    values = payload(total=total)
    values["subscriber"] = {**values["subscriber"], "locale": locale}
    program = compile_expression('event.payload.total > 100 && subscriber.locale.startsWith("de")')
    assert program.matches(values) is expected


def test_membership_in_a_list() -> None:
    program = compile_expression('"vip" in subscriber.data.tags')
    assert program.matches(variables()) is True
    values = variables()
    values["subscriber"] = {**values["subscriber"], "data": {"tags": ["beta"]}}
    assert program.matches(values) is False


def test_has_tests_for_an_optional_key() -> None:
    program = compile_expression("has(event.payload.coupon) && event.payload.coupon == 'SUMMER'")
    assert program.matches(payload(total=1)) is False
    assert program.matches(payload(coupon="SUMMER")) is True
    assert compile_expression("!has(event.payload.coupon)").matches(payload()) is True


def test_timestamps_and_durations() -> None:
    values = variables()
    cases = {
        "event.created_at > timestamp('2025-01-01T00:00:00Z')": True,
        "event.created_at < timestamp('2025-06-03T12:29:59Z')": False,
        "event.created_at - timestamp('2025-06-03T12:00:00Z') == duration('30m')": True,
        "event.created_at + duration('24h') > timestamp('2025-06-04T00:00:00Z')": True,
    }
    for source, expected in cases.items():
        assert compile_expression(source).matches(values) is expected, source


def test_comprehension_over_the_payload() -> None:
    program = compile_expression("event.payload.items.exists(i, i.sku == 'A-1' && i.qty >= 2)")
    assert program.matches(variables()) is True
    assert program.matches(payload(items=[{"sku": "B", "qty": 5}])) is False


def test_event_tenant_and_actor_fields() -> None:
    program = compile_expression(
        "event.type == 'order.shipped' && event.actor == 'user-7' && "
        "event.tenant_data.region == 'eu' && tenant.plan == 'pro' && tenant.slug == 'alpha'"
    )
    assert program.matches(variables()) is True


# --- Converting Python values ------------------------------------------------------------------


def test_plain_json_values_convert_both_ways() -> None:
    data = {
        "s": "x",
        "i": -3,
        "f": 2.5,
        "b": True,
        "n": None,
        "l": [1, "a", None],
        "d": {"k": [{}]},
    }
    assert compile_expression("event.payload").evaluate(payload(**data)) == data
    checks = (
        "event.payload.s == 'x' && event.payload.i == -3 && event.payload.f == 2.5 && "
        "event.payload.b && event.payload.n == null && size(event.payload.l) == 3 && "
        "event.payload.d.k[0] == {}"
    )
    assert compile_expression(checks).matches(payload(**data)) is True


def test_aware_datetime_is_a_timestamp_in_any_zone() -> None:
    plus_two = datetime(2025, 6, 3, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    values = variables(event={**variables()["event"], "created_at": plus_two})
    program = compile_expression("event.created_at == timestamp('2025-06-03T12:30:00Z')")
    assert program.matches(values) is True
    assert compile_expression("event.created_at").evaluate(values) == CREATED


def test_naive_datetime_is_taken_as_utc() -> None:
    values = variables(event={**variables()["event"], "created_at": datetime(2025, 6, 3, 12, 30)})
    assert compile_expression("event.created_at").evaluate(values) == CREATED


def test_decimal_becomes_a_double() -> None:
    values = payload(total=Decimal("129.99"))
    assert compile_expression("event.payload.total > 129.5").matches(values) is True
    assert compile_expression("event.payload.total").evaluate(values) == pytest.approx(129.99)


def test_uuid_becomes_its_string_and_tuple_a_list() -> None:
    event_id = uuid.uuid4()
    values = variables(event={**variables()["event"], "id": event_id, "payload": {"t": (1, 2)}})
    assert compile_expression("event.id").evaluate(values) == str(event_id)
    assert compile_expression("event.payload.t").evaluate(values) == [1, 2]


def test_timedelta_is_a_duration_and_bytes_stay_bytes() -> None:
    values = payload(wait=timedelta(minutes=5), raw=b"\x00\x01")
    program = compile_expression(
        "event.payload.wait == duration('5m') && size(event.payload.raw) == 2"
    )
    assert program.matches(values) is True


def test_subclasses_become_their_base_type() -> None:
    class Plan(StrEnum):
        PRO = "pro"

    values = variables(tenant={"slug": "alpha", "name": "Alpha", "plan": Plan.PRO})
    assert compile_expression("tenant.plan == 'pro'").matches(values) is True
    assert type(compile_expression("tenant.plan").evaluate(values)) is str


def test_integers_beyond_64_bits_become_doubles() -> None:
    assert compile_expression("event.payload.n").evaluate(payload(n=2**70)) == float(2**70)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"tags": {"a"}}, "event.payload.tags is a set, which conditions can not use"),
        ({"when": object()}, "event.payload.when is a object, which conditions can not use"),
        ({"items": [1, datetime.now(UTC).date()]}, "event.payload.items[1] is a date"),
        ({(1, 2): "x"}, "event.payload has a key of type tuple; keys must be strings"),
    ],
)
def test_unsupported_values_name_where_they_are(value: dict[Any, Any], message: str) -> None:
    with pytest.raises(CelEvaluationError) as caught:
        build_activation(payload(**{"x": 1}) | {"event": {"payload": value}})
    assert message in caught.value.message


def test_values_nested_too_deeply_are_refused() -> None:
    deep: dict[str, Any] = {}
    for _ in range(cel.MAX_VALUE_DEPTH + 5):
        deep = {"d": deep}
    with pytest.raises(CelEvaluationError, match="nested more than 64 levels deep"):
        build_activation({"event": deep})


def test_only_the_three_variables_can_be_given() -> None:
    assert VARIABLES == ("event", "subscriber", "tenant")
    with pytest.raises(ValueError, match="unknown CEL variable 'request'"):
        build_activation({"request": {}})


# --- Results and evaluation errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [("1 + 1", "int"), ("'x'", "string"), ("null", "null"), ("[true]", "list"), ("2.5", "double")],
)
def test_a_condition_must_return_a_bool(source: str, kind: str) -> None:
    assert evaluation_error(source, variables()) == (
        f"condition must return true or false, got {kind}"
    )


def test_evaluate_returns_plain_values() -> None:
    assert compile_expression("1 + 1").evaluate({}) == 2
    assert compile_expression("{'a': [1u, 2.5]}").evaluate({}) == {"a": [1, 2.5]}


def test_missing_key_names_the_key() -> None:
    assert evaluation_error("event.payload.coupon == 'x'", variables()) == "no such key: coupon"


def test_type_mismatch_is_an_evaluation_error() -> None:
    message = evaluation_error("event.payload.currency > 1", variables())
    assert message.startswith("no such overload")


def test_other_runtime_errors_are_short_and_readable() -> None:
    values = variables()
    assert evaluation_error("event.payload.total / 0 > 1", payload(total=1)) == "division by zero"
    assert evaluation_error("event.payload.items[5].qty > 1", values).startswith("index out of")
    message = evaluation_error("subscriber.email.matches('(')", values)
    assert "not a valid regex" in message
    assert "\n" not in message
    assert "Traceback" not in message
    assert len(message) <= 200


def test_a_variable_that_was_not_given_is_an_evaluation_error() -> None:
    message = evaluation_error("subscriber.locale == 'de'", {"event": variables()["event"]})
    assert message.startswith("unknown variable or function 'subscriber'")


# --- One activation, many programs --------------------------------------------------------------


def test_one_activation_serves_many_programs() -> None:
    activation = build_activation(variables())
    assert isinstance(activation, Activation)
    sources = [
        "event.payload.total > 100",
        "'vip' in subscriber.data.tags",
        "tenant.plan == 'free'",
    ]
    assert [compile_expression(s).matches(activation) for s in sources] == [True, True, False]


@pytest.fixture
def helper_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every program runs in the helper process, as costly ones do."""
    monkeypatch.setattr(cel, "INLINE_BUDGET", -1)


@pytest.mark.usefixtures("helper_only")
def test_the_helper_process_gives_the_same_results_and_errors() -> None:
    values = variables()
    assert compile_expression("event.created_at").evaluate(values) == CREATED
    assert compile_expression("event.payload").evaluate(values) == values["event"]["payload"]
    assert compile_expression("'vip' in subscriber.data.tags").matches(values) is True
    assert evaluation_error("event.payload.coupon == 'x'", values) == "no such key: coupon"
    assert evaluation_error("1 + 1", values) == "condition must return true or false, got int"


@pytest.mark.usefixtures("helper_only")
def test_the_helper_follows_the_activation_it_is_given() -> None:
    first, second = build_activation(payload(n=1)), build_activation(payload(n=2))
    program = compile_expression("event.payload.n")
    assert [program.evaluate(a) for a in (first, second, first, first)] == [1, 2, 1, 1]


# --- The cache ---------------------------------------------------------------------------------


def test_same_key_gives_the_same_program() -> None:
    program = program_for((7, 1), "event.type == 'a'")
    assert program_for((7, 1), "event.type == 'a'") is program


def test_a_new_version_gives_a_new_program() -> None:
    first = program_for((7, 1), "event.type == 'a'")
    second = program_for((7, 2), "event.type == 'b'")
    assert second is not first
    assert second.source == "event.type == 'b'"
    assert program_for((7, 1), "event.type == 'a'") is first


def test_a_key_reused_with_another_source_recompiles() -> None:
    program_for((7, 1), "event.type == 'a'")
    assert program_for((7, 1), "event.type == 'b'").source == "event.type == 'b'"


def test_the_cache_keeps_the_most_recently_used(settings: Any) -> None:
    settings.HERALD_CEL_CACHE_SIZE = 2
    one = program_for(1, "true")
    two = program_for(2, "true")
    assert program_for(1, "true") is one  # 1 is now the most recent
    program_for(3, "true")  # evicts 2
    assert program_for(1, "true") is one
    assert program_for(2, "true") is not two


def test_an_invalid_source_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = cel.compile_expression

    def counting(source: str) -> CelProgram:
        calls.append(source)
        return real(source)

    monkeypatch.setattr(cel, "compile_expression", counting)
    for _ in range(3):
        with pytest.raises(CelCompileError, match="Syntax error"):
            program_for(("bad", 1), "1 +")
    assert calls == ["1 +"]


# --- Abuse bounds (security) ---------------------------------------------------------------------


def test_source_longer_than_the_setting_is_refused(settings: Any) -> None:
    assert settings.HERALD_CEL_MAX_LENGTH == 4096
    longest = "event.type == '" + "x" * (4096 - 16) + "'"
    assert len(longest) == 4096
    compile_expression(longest)
    assert compile_error(longest + " ") == "expression is too long: 4,097 characters, at most 4,096"
    settings.HERALD_CEL_MAX_LENGTH = 10
    assert compile_error("event.type == 'abc'").startswith("expression is too long")


@pytest.mark.parametrize(("opening", "closing"), [("(", ")"), ("[", "]"), ("size(", ")")])
def test_deep_nesting_is_refused_before_the_parser(
    settings: Any, opening: str, closing: str
) -> None:
    # 100,000 levels make the library panic or overflow the native stack; the
    # scan refuses them before the parser runs.
    settings.HERALD_CEL_MAX_LENGTH = 10_000_000
    source = opening * 100_000 + "1" + closing * 100_000
    assert compile_error(source) == (
        "expression is nested too deeply: more than 32 levels of brackets"
    )


def test_thirty_two_levels_of_brackets_are_allowed() -> None:
    assert compile_expression("(" * 32 + "true" + ")" * 32).matches({}) is True
    assert compile_error("(" * 33 + "true" + ")" * 33).startswith("expression is nested too deeply")


@pytest.mark.parametrize(
    "source",
    [
        "+".join(["1"] * 30_000) + " > 0",  # a left-deep tree: segfaults the library
        "event" + ".a" * 30_000 + " == 1",
        "event" + "[0]" * 30_000 + " == 1",
        "1 + (" * 20 + "1" + " + 1" * 90 + ")" * 20 + " > 0",
    ],
)
def test_long_operator_chains_are_refused(settings: Any, source: str) -> None:
    settings.HERALD_CEL_MAX_LENGTH = 10_000_000
    assert compile_error(source).startswith("expression is too deeply chained")


def test_chains_split_by_and_or_are_allowed() -> None:
    # 360 operators in all, but never more than 3 in a row.
    source = " || ".join(f"event.payload.total == {n}" for n in range(120))
    assert len(source) <= 4096
    assert compile_expression(source).matches(payload(total=119)) is True


def test_brackets_and_quotes_inside_strings_and_comments_do_not_count() -> None:
    source = (
        "event.type != '((((((((((((((((((((((((((((((((((((\\'' && "
        'event.type != r"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\" // ((((((((((((((((((((((((((((((\n'
        "&& event.type != '''" + "+" * 200 + "'''"
    )
    assert compile_expression(source).matches(variables()) is True
    assert compile_error("event.type == 'abc") == "unterminated string (line 1, column 15)"


# The deepest shapes the scan accepts, run by the library itself in a thread
# with a 512 KiB stack (Linux gives threads 8 MiB): in a child process, so
# that an overflow fails this test instead of killing pytest.
DEEPEST_ACCEPTED = [
    "(" * 32 + "+".join(["1"] * 100) + ")" * 32,
    "1+(" * 32 + "1" + ")" * 32,
    "size(" * 32 + "'x'" + ")" * 32,
    "[" * 32 + "1" + "]" * 32,
    "event" + ".a" * 100,
    "event.a.b.c.d.e + (" * 16 + "1" + ")" * 16,
]
SMALL_STACK_PROGRAM = """
import sys, threading
import cel
threading.stack_size(512 * 1024)
def run():
    for source in sys.argv[1:]:
        try:
            cel.compile(source).execute({"event": {}})
        except Exception:
            pass  # an evaluation error is fine; a crash is not
thread = threading.Thread(target=run)
thread.start()
thread.join()
print("survived")
"""


def test_the_deepest_accepted_expressions_fit_a_small_stack() -> None:
    for source in DEEPEST_ACCEPTED:
        compile_expression(source)  # accepted by the scan
    result = subprocess.run(
        [sys.executable, "-c", SMALL_STACK_PROGRAM, *DEEPEST_ACCEPTED],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "survived"


def assert_stopped_quickly(program: CelProgram, values: dict[str, Any], *, within: float) -> str:
    started = time.monotonic()
    with pytest.raises(CelEvaluationError) as caught:
        program.matches(values)
    assert time.monotonic() - started < within
    return caught.value.message


def test_nested_comprehensions_over_literal_lists_are_stopped(settings: Any) -> None:
    settings.HERALD_CEL_TIMEOUT_MS = 200
    numbers = "[" + ",".join(["1"] * 400) + "]"
    # 400³ = 64 million iterations: about half a minute unbounded.
    source = f"{numbers}.all(x, {numbers}.all(y, {numbers}.all(z, x + y + z > 0)))"
    program = compile_expression(source)
    assert program.cost is None  # the cost depends on the data: it runs in the helper
    message = assert_stopped_quickly(program, {}, within=5.0)
    assert message == "evaluation took longer than 200 ms and was stopped"


def test_nested_comprehensions_over_the_payload_are_stopped(settings: Any) -> None:
    settings.HERALD_CEL_TIMEOUT_MS = 200
    values = payload(ids=list(range(2000)))
    # 2000³ = 8 billion iterations: hours unbounded.
    program = compile_expression(
        "event.payload.ids.all(x, event.payload.ids.all(y, event.payload.ids.all(z, x != -1)))"
    )
    message = assert_stopped_quickly(program, values, within=5.0)
    assert message == "evaluation took longer than 200 ms and was stopped"
    # The killed helper is replaced: the next costly evaluation works.
    quick = compile_expression("event.payload.ids.exists(x, x == 1999)")
    assert quick.matches(values) is True


def test_an_evaluation_that_allocates_too_much_is_stopped(settings: Any) -> None:
    settings.HERALD_CEL_MEMORY_MB = 160  # the helper starts at about 50 MB
    settings.HERALD_CEL_TIMEOUT_MS = 20_000
    values = payload(ids=list(range(100_000)))
    ids = "event.payload.ids"
    program = compile_expression(f"{ids}.map(x, {ids} + {ids} + {ids} + {ids}).size() > 0")
    message = assert_stopped_quickly(program, values, within=15.0)
    assert message == "evaluation was stopped: it needed more memory than allowed"


def test_a_comprehension_free_program_over_a_huge_event_is_bounded(settings: Any) -> None:
    settings.HERALD_CEL_TIMEOUT_MS = 200
    settings.HERALD_CEL_MEMORY_MB = 256
    values = payload(ids=list(range(200_000)))
    group = "(" + " + ".join(["event.payload.ids"] * 8) + ")"
    program = compile_expression("size(" + " + ".join([group] * 8) + ") > 0")
    assert program.cost is not None
    # 64 copies of 200,000 values (12.8 million) would need gigabytes in this
    # process; too costly to run inline, the helper stops it.
    message = assert_stopped_quickly(program, values, within=5.0)
    assert message.startswith(("evaluation took longer", "evaluation was stopped"))


def test_a_typical_condition_runs_inline() -> None:
    program = compile_expression('event.payload.total > 100 && subscriber.locale.startsWith("de")')
    activation = build_activation(variables())
    assert program.cost is not None
    assert program.cost * activation.size <= cel.INLINE_BUDGET
