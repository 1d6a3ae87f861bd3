"""Schedules: cron and interval ticks (time zones, seconds, daylight saving), the decision of
what is due, and the tick task on SQLite and PostgreSQL: one run per tick however many beats
send it, pauses, catching up or not, a beat restarted; beat's entry and the CLI."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab
from pydantic import BaseModel

from celery_durable import Durable, Graph, Status
from celery_durable.constants import SCHEDULES_TASK
from celery_durable.engine.schedules import run_id
from celery_durable.errors import InvalidInput, InvalidSchedule, InvalidTags, UnknownSchedule
from celery_durable.persistence.schedule_store import ScheduleRows
from celery_durable.policies.cron import Cron, Every, latest_at_or_before, ticks
from celery_durable.policies.ticks import CATCH_UP_BATCH, LATE_AFTER, due
from celery_durable.testing import embedded_app, in_process_worker
from tests.unit.cli_app import invoke

pytestmark = pytest.mark.timeout(120)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def shown(found: list[datetime]) -> list[str]:
    return [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in found]


# -- cron and intervals ------------------------------------------------------------------------


def test_five_fields_tick_on_the_minute_and_six_on_the_second() -> None:
    assert shown(ticks(Cron("0 3 * * *"), at(2026, 12, 8, 3, 0), 2)) == [
        "2026-12-09T03:00:00Z",
        "2026-12-10T03:00:00Z",
    ]
    assert shown(ticks(Cron("*/2 * * * * *"), at(2026, 12, 8, 3, 0, 1), 3)) == [
        "2026-12-08T03:00:02Z",
        "2026-12-08T03:00:04Z",
        "2026-12-08T03:00:06Z",
    ]
    assert shown(ticks(Cron("15,45 9-10 * * mon-fri"), at(2026, 12, 11, 10, 50), 3)) == [
        "2026-12-14T09:15:00Z",  # Friday 10:50, then Monday
        "2026-12-14T09:45:00Z",
        "2026-12-14T10:15:00Z",
    ]
    daily, hourly = Cron("@daily"), Cron("@hourly")
    assert daily.next_after(at(2026, 1, 1, 0, 30)) == at(2026, 1, 2)
    assert hourly.next_after(at(2026, 1, 1, 0, 30)) == at(2026, 1, 1, 1)
    assert not Cron("0 3 * * *").needs_seconds and Cron("30 0 3 * * *").needs_seconds


def test_both_day_fields_restricted_match_either_as_in_cron() -> None:
    # The 1st of the month or any Monday; 2026-01-01 is a Thursday.
    assert shown(ticks(Cron("0 0 1 * mon"), at(2026, 1, 1), 5)) == [
        "2026-01-05T00:00:00Z",
        "2026-01-12T00:00:00Z",
        "2026-01-19T00:00:00Z",
        "2026-01-26T00:00:00Z",
        "2026-02-01T00:00:00Z",
    ]
    assert shown(ticks(Cron("0 0 29 2 *"), at(2026, 1, 1), 2)) == [
        "2028-02-29T00:00:00Z",
        "2032-02-29T00:00:00Z",
    ]


def test_a_cron_reads_its_zones_wall_clock() -> None:
    paris = Cron("0 3 * * *", "Europe/Paris")
    assert paris.next_after(at(2026, 12, 8)) == at(2026, 12, 8, 2)  # UTC+1 in winter
    assert paris.next_after(at(2026, 7, 8)) == at(2026, 7, 8, 1)  # UTC+2 in summer
    assert Cron("0 9 * * *", "Asia/Kolkata").next_after(at(2026, 1, 1)) == at(2026, 1, 1, 3, 30)


def test_a_time_the_clock_skips_ticks_once_when_it_jumps() -> None:
    # New York, 2026-03-08: at 02:00 EST (07:00Z) the clock jumps to 03:00 EDT.
    nightly = Cron("30 2 * * *", "America/New_York")
    assert shown(ticks(nightly, at(2026, 3, 7), 3)) == [
        "2026-03-07T07:30:00Z",
        "2026-03-08T07:00:00Z",  # 02:30 never shows: the run starts at the jump
        "2026-03-09T06:30:00Z",
    ]
    quarterly = Cron("*/20 * * * *", "America/New_York")
    assert shown(ticks(quarterly, at(2026, 3, 8, 6, 30), 3)) == [
        "2026-03-08T06:40:00Z",
        "2026-03-08T07:00:00Z",  # 02:00, 02:20, 02:40 and 03:00 are one instant
        "2026-03-08T07:20:00Z",
    ]


def test_a_time_the_clock_shows_twice_ticks_the_first_time_only() -> None:
    # New York, 2026-11-01: at 02:00 EDT (06:00Z) the clock goes back to 01:00 EST.
    nightly = Cron("30 1 * * *", "America/New_York")
    assert shown(ticks(nightly, at(2026, 10, 31), 3)) == [
        "2026-10-31T05:30:00Z",
        "2026-11-01T05:30:00Z",  # 01:30 EDT; not again at 01:30 EST (06:30Z)
        "2026-11-02T06:30:00Z",
    ]
    quarterly = Cron("*/20 * * * *", "America/New_York")
    assert shown(ticks(quarterly, at(2026, 11, 1, 5, 30), 3)) == [
        "2026-11-01T05:40:00Z",
        "2026-11-01T07:00:00Z",  # 02:00 EST, after the repeated hour
        "2026-11-01T07:20:00Z",
    ]
    # Asked from inside the repeated hour, second time round.
    assert quarterly.next_after(at(2026, 11, 1, 6, 30)) == at(2026, 11, 1, 7)


def test_every_counts_from_the_epoch_in_utc() -> None:
    ninety = Every(timedelta(seconds=90))
    assert shown(ticks(ninety, at(2026, 1, 1, 0, 0, 1), 2)) == [
        "2026-01-01T00:01:30Z",
        "2026-01-01T00:03:00Z",
    ]
    assert ninety.needs_seconds and not Every(timedelta(hours=1)).needs_seconds
    assert Every(timedelta(hours=1)).describe() == "every 1h"


def test_the_latest_tick_at_or_before_an_instant() -> None:
    assert latest_at_or_before(Cron("0 3 * * *"), at(2026, 12, 8, 2)) == at(2026, 12, 7, 3)
    assert latest_at_or_before(Cron("0 3 * * *"), at(2026, 12, 8, 3)) == at(2026, 12, 8, 3)
    assert latest_at_or_before(Every(timedelta(seconds=2)), at(2026, 1, 1, 0, 0, 5)) == at(
        2026, 1, 1, 0, 0, 4
    )


@pytest.mark.parametrize(
    ("cron", "said"),
    [
        ("* * *", "has 3 fields"),
        ("61 * * * *", "minute field '61'"),
        ("0 24 * * *", "hour field '24'"),
        ("5-1 * * * *", "minute field '5-1'"),
        ("*/0 * * * *", "steps of 1 or more"),
        ("x * * * *", "'x' is not a value of the minute field"),
        ("0 0 31 2 *", "never ticks"),
        ("0 0 * foo *", "'foo' is not a value of the month field"),
    ],
)
def test_a_bad_cron_is_refused_saying_what_is_wrong(cron: str, said: str) -> None:
    with pytest.raises(InvalidSchedule, match=said) as raised:
        Cron(cron)
    assert "nothing was registered" in str(raised.value)


def test_bad_zones_and_intervals_are_refused() -> None:
    with pytest.raises(InvalidSchedule, match="IANA name"):
        Cron("0 3 * * *", "Mars/Olympus")
    with pytest.raises(InvalidSchedule, match="whole number of seconds"):
        Every(timedelta(milliseconds=1500))
    with pytest.raises(InvalidSchedule, match="whole number of seconds"):
        Every(timedelta(0))


# -- what is due --------------------------------------------------------------------------------

EVERY_MINUTE = Cron("* * * * *")


def test_first_seen_the_tick_due_now_starts_and_an_old_one_does_not() -> None:
    assert due(EVERY_MINUTE, None, at(2026, 1, 1, 3, 0, 5)).start == (at(2026, 1, 1, 3),)
    nightly = Cron("0 3 * * *")
    assert due(nightly, None, at(2026, 1, 1, 3, 0, 30)).start == (at(2026, 1, 1, 3),)
    assert due(nightly, None, at(2026, 1, 1, 3) + LATE_AFTER) == due(nightly, None, at(2026, 1, 2))
    assert due(nightly, None, at(2026, 1, 2)).start == ()


def test_missed_ticks_are_skipped_and_the_one_due_now_starts() -> None:
    plan = due(EVERY_MINUTE, at(2026, 1, 1, 3), at(2026, 1, 1, 3, 10, 5))
    assert plan.start == (at(2026, 1, 1, 3, 10),) and plan.skipped
    late = due(Cron("0 3 * * *"), at(2026, 1, 1, 3), at(2026, 1, 2, 9))
    assert late.start == () and late.through == at(2026, 1, 2, 3) and late.skipped
    assert due(EVERY_MINUTE, at(2026, 1, 1, 3, 10), at(2026, 1, 1, 3, 10, 30)).start == ()


def test_catching_up_starts_every_missed_tick_oldest_first_in_batches() -> None:
    plan = due(EVERY_MINUTE, at(2026, 1, 1, 3), at(2026, 1, 1, 3, 3, 5), catch_up=True)
    assert plan.start == (at(2026, 1, 1, 3, 1), at(2026, 1, 1, 3, 2), at(2026, 1, 1, 3, 3))
    week = due(EVERY_MINUTE, at(2026, 1, 1), at(2026, 1, 8), catch_up=True)
    assert len(week.start) == CATCH_UP_BATCH and week.through == week.start[-1]


def test_a_paused_schedule_passes_its_ticks_over() -> None:
    plan = due(EVERY_MINUTE, at(2026, 1, 1, 3), at(2026, 1, 1, 3, 3, 5), catch_up=True, paused=True)
    assert plan.start == () and plan.through == at(2026, 1, 1, 3, 3)


# -- defining -----------------------------------------------------------------------------------


class Report(BaseModel):
    day: str = ""
    done: bool = False


def report_graph(durable: Durable) -> Graph:
    graph = durable.graph("report", state=Report)

    @graph.node
    def build(state: Report) -> dict[str, object]:
        return {"done": True}

    graph.entry(build)
    return graph


@pytest.fixture
def make_durable(database_url: str) -> Iterator[Callable[[], Durable]]:
    """A Durable on this test's database, as another process (a worker, a beat) would build
    it: its own app, its own engines, the same graph and schedules defined by its code."""
    made: list[Durable] = []

    def make() -> Durable:
        durable = Durable(embedded_app(f"sched-{uuid.uuid4().hex[:8]}"), database_url)
        made.append(durable)
        return durable

    first = make()
    first.migrate()
    yield make
    for durable in made:
        durable.db.dispose()


def nightly(durable: Durable, **options: object) -> Durable:
    durable.schedule(
        report_graph(durable), "0 3 * * *", kwargs={"day": "d"}, name="nightly", **options
    )  # type: ignore[arg-type]
    return durable


def test_a_bad_schedule_registers_nothing(durable: Durable) -> None:
    graph = report_graph(durable)
    before = dict(durable.app.conf.beat_schedule)
    with pytest.raises(InvalidSchedule, match="hour field"):
        durable.schedule(graph, "0 25 * * *", name="bad")
    with pytest.raises(InvalidInput, match="no field"):
        durable.schedule(graph, "0 3 * * *", kwargs={"nope": 1}, name="bad")
    with pytest.raises(InvalidSchedule, match="either a cron"):
        durable.schedule(graph, "0 3 * * *", every=timedelta(hours=1), name="bad")
    with pytest.raises(InvalidSchedule, match="a zone changes nothing"):
        durable.schedule(graph, every=timedelta(hours=1), timezone="Europe/Paris")
    with pytest.raises(InvalidSchedule, match="letters, digits"):
        durable.schedule(graph, "0 3 * * *", name="night ly")
    assert durable.defined_schedules == {} and durable.app.conf.beat_schedule == before
    durable.schedule(graph, "0 3 * * *")
    with pytest.raises(InvalidSchedule, match="another schedule has this name"):
        durable.schedule(graph, "0 4 * * *")
    assert list(durable.defined_schedules) == ["report"]


def test_beat_sends_the_tick_task_each_minute_or_each_second(durable: Durable) -> None:
    graph = report_graph(durable)
    durable.schedule(graph, "0 3 * * *", name="nightly")
    entry = durable.app.conf.beat_schedule[SCHEDULES_TASK]
    assert entry["schedule"] == crontab() and entry["options"]["expires"] > 0
    durable.schedule(graph, every=timedelta(seconds=30), name="often")
    assert durable.app.conf.beat_schedule[SCHEDULES_TASK]["schedule"] == 1.0
    durable.app.tasks[SCHEDULES_TASK].apply_async()  # what beat does: a bad signature raises


def test_an_entry_the_app_set_itself_is_kept(durable: Durable) -> None:
    durable.app.conf.beat_schedule[SCHEDULES_TASK] = {"task": SCHEDULES_TASK, "schedule": 5.0}
    durable.schedule(report_graph(durable), "*/2 * * * * *", name="fast")
    assert durable.app.conf.beat_schedule[SCHEDULES_TASK]["schedule"] == 5.0


def test_the_tick_task_starts_the_run_due_now(durable: Durable) -> None:
    durable.schedule(report_graph(durable), every=timedelta(seconds=1), kwargs={"day": "x"})
    result = durable.app.tasks[SCHEDULES_TASK].apply().result
    (started,) = result["started"]
    assert started.startswith("report:") and started.endswith("Z")
    with in_process_worker(durable):
        assert durable.get(started).wait(timeout=10) == Report(day="x", done=True)


# -- the tick task on the shared rows (SQLite and PostgreSQL) ------------------------------------


def runs(durable: Durable) -> list[str]:
    return sorted(r.id for r in durable.list(graph="report"))


def test_two_beats_start_each_tick_once(make_durable: Callable[[], Durable]) -> None:
    one, two = nightly(make_durable()), nightly(make_durable())
    for day in (8, 9, 10):
        now = at(2026, 12, day, 3, 0, 1)
        one.fire_schedules(now=now)
        two.fire_schedules(now=now)
        one.fire_schedules(now=now - timedelta(days=1))  # a tick task replayed late
    assert runs(one) == [f"nightly:2026-12-{day:02}T03:00:00Z" for day in (8, 9, 10)]
    assert one.get("nightly:2026-12-08T03:00:00Z").state == Report(day="d")


def test_a_schedules_runs_are_found_by_its_tag(durable: Durable) -> None:
    graph = report_graph(durable)
    durable.schedule(graph, every=timedelta(seconds=1), name="often", tags={"team": "ops"})
    (started,) = durable.fire_schedules(now=at(2026, 12, 8, 3, 0, 0)).started
    found = durable.list(tags={"schedule": "often"})
    assert [run.id for run in found] == [started]
    assert found[0].tags == {"schedule": "often", "team": "ops"}
    with pytest.raises(InvalidTags):
        durable.schedule(graph, every=timedelta(seconds=1), name="bad", tags={"": "x"})
    assert "bad" not in durable.defined_schedules


def test_concurrent_tick_tasks_start_each_tick_once(make_durable: Callable[[], Durable]) -> None:
    fleet = [make_durable() for _ in range(4)]
    for durable in fleet:
        durable.schedule(report_graph(durable), "* * * * * *", name="fast")
    barrier = threading.Barrier(len(fleet))
    errors: list[BaseException] = []

    def beat(durable: Durable) -> None:
        try:
            for second in range(5):
                barrier.wait(timeout=30)
                durable.fire_schedules(now=at(2026, 12, 8, 3, 0, second, 500000))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=beat, args=(d,)) for d in fleet]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert runs(fleet[0]) == [f"fast:2026-12-08T03:00:0{s}Z" for s in range(5)]
    (status,) = fleet[0].schedules(now=at(2026, 12, 8, 3, 0, 5))
    assert status.row is not None and status.row.last_tick == at(2026, 12, 8, 3, 0, 4)


def test_the_last_tick_only_moves_forward(make_durable: Callable[[], Durable]) -> None:
    rows = ScheduleRows(make_durable().db)
    assert rows.advance("n", at(2026, 1, 2), "n:2")
    assert not rows.advance("n", at(2026, 1, 1), "n:1")
    assert not rows.advance("n", at(2026, 1, 2), None)
    row = rows.read()["n"]
    assert (row.last_tick, row.last_run_id) == (at(2026, 1, 2), "n:2")


def test_a_paused_schedule_starts_nothing_until_resumed(
    make_durable: Callable[[], Durable],
) -> None:
    durable = nightly(make_durable(), catch_up=True)
    durable.fire_schedules(now=at(2026, 12, 8, 3, 0, 1))
    durable.pause_schedule("nightly", by="ops", reason="migration")
    for day in (9, 10):
        assert durable.fire_schedules(now=at(2026, 12, day, 3, 0, 1)).started == []
    (status,) = durable.schedules(now=at(2026, 12, 10, 12))
    assert status.paused and status.row is not None
    assert (status.row.changed_by, status.row.reason) == ("ops", "migration")
    durable.resume_schedule("nightly")
    # Catching up does not start what came due while it was paused.
    assert durable.fire_schedules(now=at(2026, 12, 10, 12)).started == []
    assert durable.fire_schedules(now=at(2026, 12, 11, 3, 0, 1)).started == [
        "nightly:2026-12-11T03:00:00Z"
    ]
    with pytest.raises(UnknownSchedule, match="known: nightly"):
        durable.pause_schedule("nighty")


@pytest.mark.parametrize("catch_up", [False, True])
def test_missed_ticks_after_an_outage(make_durable: Callable[[], Durable], catch_up: bool) -> None:
    durable = nightly(make_durable(), catch_up=catch_up)
    durable.fire_schedules(now=at(2026, 12, 8, 3, 0, 1))
    # Beat was down from the 8th to the 11th, 03:00:30.
    report = durable.fire_schedules(now=at(2026, 12, 11, 3, 0, 30))
    started = [f"nightly:2026-12-{day:02}T03:00:00Z" for day in (9, 10, 11)]
    assert report.started == (started if catch_up else started[-1:])
    assert report.skipped == ([] if catch_up else ["nightly"])
    assert runs(durable) == ["nightly:2026-12-08T03:00:00Z", *report.started]


def test_a_restarted_beat_goes_on_from_the_stored_tick(
    make_durable: Callable[[], Durable],
) -> None:
    before = nightly(make_durable(), catch_up=True)
    before.fire_schedules(now=at(2026, 12, 8, 3, 0, 1))
    before.fire_schedules(now=at(2026, 12, 9, 3, 0, 1))
    after = nightly(make_durable(), catch_up=True)  # a new process: nothing in memory
    assert after.fire_schedules(now=at(2026, 12, 9, 3, 0, 2)).started == []
    assert after.fire_schedules(now=at(2026, 12, 10, 3, 0, 1)).started == [
        "nightly:2026-12-10T03:00:00Z"
    ]
    assert len(runs(after)) == 3


def test_a_schedule_whose_graph_is_not_here_is_logged_and_the_others_go_on(
    make_durable: Callable[[], Durable],
) -> None:
    durable = nightly(make_durable())
    ghost = durable.graph("ghost", state=Report)
    ghost.node(lambda state: {}, name="haunt")
    durable.schedule(ghost, "0 3 * * *")
    durable.versions.pop("ghost")  # as a worker whose code does not define it
    report = durable.fire_schedules(now=at(2026, 12, 8, 3, 0, 1))
    assert report.failed == ["ghost"] and report.started == ["nightly:2026-12-08T03:00:00Z"]


# -- listing and the CLI ---------------------------------------------------------------------------


def test_the_cli_lists_pauses_and_resumes(durable: Durable) -> None:
    nightly(durable)
    # Every 7 h from the epoch: its last tick, 23:00Z the day before, is long past.
    durable.schedule("report", every=timedelta(hours=7), name="often")
    durable.fire_schedules(now=at(2026, 12, 8, 3, 0, 1))
    listed = invoke(durable, "schedules", "--json")
    assert listed.exit_code == 0, listed.output
    by_name = {s["name"]: s for s in json.loads(listed.output)}
    night = by_name["nightly"]
    assert (night["graph"], night["cron"], night["timezone"], night["paused"]) == (
        "report",
        "0 3 * * *",
        "UTC",
        False,
    )
    assert night["last_run_id"] == run_id("nightly", at(2026, 12, 8, 3))
    assert night["last_run_status"] == Status.RUNNING and len(night["next_ticks"]) == 3
    assert by_name["often"]["every_seconds"] == 7 * 3600 and by_name["often"]["last_run_id"] is None

    paused = invoke(durable, "schedules", "pause", "nightly", "--by", "ops", "--reason", "db move")
    assert paused.exit_code == 0 and "paused" in paused.output
    table = invoke(durable, "schedules").output
    assert "nightly  report  0 3 * * * (UTC)  paused by ops: db move" in table, table
    assert "last  nightly:2026-12-08T03:00:00Z  running" in table
    assert "often  report  every 7h  active" in table
    assert invoke(durable, "schedules", "resume", "nightly").exit_code == 0
    assert not json.loads(invoke(durable, "schedules", "--json").output)[0]["paused"]

    unknown = invoke(durable, "schedules", "pause", "nope")
    assert unknown.exit_code == 1 and "No schedule named 'nope'" in unknown.output
