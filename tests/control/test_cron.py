"""Cron schedules of pipeline triggers: the next time each fires, and the ones that never do are
refused when the pipeline is read (one bad schedule must not stall the controller)."""

from __future__ import annotations

import datetime as dt

import pytest

from fermion.errors import UserInputError
from fermion.pipelines import next_fire, parse_cron, parse_pipeline

BASE = dt.datetime(2026, 12, 4, 1, 59, 30, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(("expr", "expected"), [
    ("*/15 * * * *", "2026-12-04 02:00"),
    ("0 3 * * *", "2026-12-04 03:00"),
    ("30 2 1 * *", "2027-01-01 02:30"),
    ("0 0 * * 0", "2026-12-06 00:00"),  # Sunday
    ("0 0 * * 7", "2026-12-06 00:00"),  # 7 is Sunday too
    ("5/15 * * * *", "2026-12-04 02:05"),  # from minute 5, every 15
    ("0 0 29 2 *", "2028-02-29 00:00"),  # the next leap day, more than a year away
    ("0 12 13 * 5", "2026-12-04 12:00"),  # both day fields restricted: either matches (a Friday)
])
def test_next_fire(expr: str, expected: str) -> None:
    fired = dt.datetime.fromtimestamp(next_fire(expr, BASE), dt.UTC).strftime("%Y-%m-%d %H:%M")
    assert fired == expected


def test_fields_and_bad_schedules() -> None:
    assert sorted(parse_cron("5/15 * * * *")[0]) == [5, 20, 35, 50]
    assert parse_cron("0 9-17/4 * * 1-5")[1] == {9, 13, 17}
    with pytest.raises(UserInputError, match="never fires"):
        next_fire("0 0 30 2 *", BASE)
    with pytest.raises(UserInputError, match="five fields"):
        parse_cron("* * *")
    with pytest.raises(UserInputError, match="outside 0-59"):
        parse_cron("61 * * * *")
    with pytest.raises(UserInputError, match="never fires"):
        parse_pipeline({"name": "p", "triggers": [{"cron": "0 0 30 2 *"}], "steps": [{"name": "a"}]})
