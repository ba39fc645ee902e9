"""Cron schedules: five fields (minute hour day-of-month month day-of-week), each ``*``, ``*/N``,
``A``, ``A-B``, ``A-B/N`` or a comma list of those; times in UTC."""

from __future__ import annotations

import datetime as dt

from ..errors import UserInputError

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))


def parse_cron(expr: str) -> list[set[int]]:
    """The allowed values of each field, or a 400-style error naming the bad one."""
    parts = expr.split()
    if len(parts) != 5:
        raise UserInputError(f"cron {expr!r} needs five fields (minute hour day month weekday)",
                             hint="e.g. '*/15 * * * *' every 15 minutes, '0 3 * * *' at 03:00 UTC")
    out = []
    for text, (name, low, high) in zip(parts, FIELDS, strict=True):
        values: set[int] = set()
        for item in text.split(","):
            body, _, step_text = item.partition("/")
            try:
                step = int(step_text) if step_text else 1
                if body == "*":
                    a, b = low, high
                elif "-" in body:
                    a, b = (int(x) for x in body.split("-", 1))
                else:
                    a = b = int(body)
            except ValueError:
                raise UserInputError(f"cron {expr!r}: the {name} field {text!r} is not a number, range or */N") from None
            if name == "day of week" and b == 7:  # 7 is Sunday too
                values.add(0)
                b = 6 if a <= 6 else 0
            if not (low <= a <= b <= high) or step < 1:
                raise UserInputError(f"cron {expr!r}: the {name} field {text!r} is outside {low}-{high}")
            values.update(range(a, b + 1, step))
        out.append(values)
    return out


def next_fire(expr: str, after: float) -> float:
    """The first minute strictly after ``after`` (epoch seconds) that ``expr`` names."""
    minutes, hours, days, months, weekdays = parse_cron(expr)
    t = dt.datetime.fromtimestamp(after, dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    restricted_day = len(days) < 31
    restricted_weekday = len(weekdays) < 7
    for _ in range(366 * 24 * 60):  # a year of minutes: every valid expression fires within it
        day_ok = t.day in days
        weekday_ok = (t.weekday() + 1) % 7 in weekdays  # cron's 0 is Sunday
        # cron's rule: when both day fields are restricted, either may match
        if restricted_day and restricted_weekday:
            date_ok = day_ok or weekday_ok
        else:
            date_ok = day_ok and weekday_ok
        if t.month in months and date_ok and t.hour in hours and t.minute in minutes:
            return t.timestamp()
        t += dt.timedelta(minutes=1)
    raise UserInputError(f"cron {expr!r} never fires", hint="check its day and month fields")
