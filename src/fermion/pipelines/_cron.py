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
                    a = int(body)
                    b = high if step_text else a  # 5/15: from 5, every 15
            except ValueError:
                raise UserInputError(f"cron {expr!r}: the {name} field {text!r} is not a number, range or */N") from None
            if name == "day of week" and b == 7:  # 7 is Sunday too
                values.add(0)
                if a == 7:
                    continue
                b = 6
            if not (low <= a <= b <= high) or step < 1:
                raise UserInputError(f"cron {expr!r}: the {name} field {text!r} is outside {low}-{high}")
            values.update(range(a, b + 1, step))
        out.append(values)
    return out


def next_fire(expr: str, after: float) -> float:
    """The first minute strictly after ``after`` (epoch seconds) that ``expr`` names; a 400-style
    error for an expression that never fires within four years (30 February, say)."""
    minutes, hours, days, months, weekdays = parse_cron(expr)
    start = dt.datetime.fromtimestamp(after, dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    restricted_day, restricted_weekday = len(days) < 31, len(weekdays) < 7
    day = start.replace(hour=0, minute=0)
    for _ in range(4 * 366 + 1):  # day by day, then the day's times: a leap day is at most four years away
        weekday_ok = (day.weekday() + 1) % 7 in weekdays  # cron's 0 is Sunday
        day_ok = day.day in days
        # cron's rule: when both day fields are restricted, either may match
        date_ok = (day_ok or weekday_ok) if restricted_day and restricted_weekday else (day_ok and weekday_ok)
        if day.month in months and date_ok:
            for hour in sorted(hours):
                for minute in sorted(minutes):
                    t = day.replace(hour=hour, minute=minute)
                    if t >= start:
                        return t.timestamp()
        day += dt.timedelta(days=1)
    raise UserInputError(f"cron {expr!r} never fires", hint="check its day and month fields")
