"""Natural times in a user's zone: every form, the refusals, and daylight saving in Paris and
Los Angeles.  Pure: `now` is fixed (Friday 4 December 2026, 17:00 in Paris)."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.naturaltime import Moment, NotATime, parse_clock, parse_when

PARIS = "Europe/Paris"
LA = "America/Los_Angeles"


def ns(text: str, zone: str = PARIS) -> int:
    """`2026-12-04 17:00` on the wall clock of `zone`, as ns."""
    local = datetime.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(zone))
    return int(local.timestamp()) * 10**9


NOW = ns("2026-12-04 17:00")  # a Friday


def wall(moment: Moment | NotATime, zone: str = PARIS) -> str:
    """The moment on the zone's wall clock, with the offset: `Sat 2026-12-05 19:00 +0100`."""
    assert isinstance(moment, Moment), moment
    local = datetime.fromtimestamp(moment.ns // 10**9, zoneinfo.ZoneInfo(zone))
    return local.strftime("%a %Y-%m-%d %H:%M %z")


def refused(text: str, zone: str = PARIS, now: int = NOW) -> str:
    answer = parse_when(text, zone, now)
    assert isinstance(answer, NotATime), answer
    assert "\n" not in answer.message
    return answer.message


@pytest.mark.parametrize(
    ("text", "clock"),
    [
        ("19:00", (19, 0)),
        ("7:05", (7, 5)),
        ("19h", (19, 0)),
        ("19h30", (19, 30)),
        ("7pm", (19, 0)),
        ("7:30PM", (19, 30)),
        ("7 p.m.", (19, 0)),
        ("12am", (0, 0)),
        ("12pm", (12, 0)),
        ("noon", (12, 0)),
        ("0:00", (0, 0)),
    ],
)
def test_clocks(text: str, clock: tuple[int, int]) -> None:
    assert parse_clock(text) == clock


@pytest.mark.parametrize("text", ["24:00", "19:60", "13pm", "0am", "7", "19.30", "noonish", ""])
def test_not_clocks(text: str) -> None:
    assert parse_clock(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # weekdays: the next one still ahead, today included
        ("fri 19:00", "Fri 2026-12-04 19:00 +0100"),
        ("Friday 7pm", "Fri 2026-12-04 19:00 +0100"),
        ("fri 16:00", "Fri 2026-12-11 16:00 +0100"),
        ("fri 17:00", "Fri 2026-12-11 17:00 +0100"),  # exactly now is not ahead
        ("sat 7:30 PM", "Sat 2026-12-05 19:30 +0100"),
        ("thurs 8am", "Thu 2026-12-10 08:00 +0100"),
        ("19:00 on friday", "Fri 2026-12-04 19:00 +0100"),
        ("this sun, 12:00", "Sun 2026-12-06 12:00 +0100"),
        # a clock alone: today if ahead, else tomorrow
        ("19:00", "Fri 2026-12-04 19:00 +0100"),
        ("noon", "Sat 2026-12-05 12:00 +0100"),
        ("today 18:00", "Fri 2026-12-04 18:00 +0100"),
        ("tonight 9pm", "Fri 2026-12-04 21:00 +0100"),
        ("tomorrow 8:30", "Sat 2026-12-05 08:30 +0100"),
        ("tmrw at 19h", "Sat 2026-12-05 19:00 +0100"),
        # dates: the next occurrence without a year
        ("dec 5 19:00", "Sat 2026-12-05 19:00 +0100"),
        ("5 dec 19:00", "Sat 2026-12-05 19:00 +0100"),
        ("5th of December at 7pm", "Sat 2026-12-05 19:00 +0100"),
        ("december 4th 18:00", "Fri 2026-12-04 18:00 +0100"),
        ("dec 4 16:00", "Sat 2027-12-04 16:00 +0100"),
        ("dec 3 19:00", "Fri 2027-12-03 19:00 +0100"),
        ("feb 29 19:00", "Tue 2028-02-29 19:00 +0100"),
        ("jun 21 2027 20:00", "Mon 2027-06-21 20:00 +0200"),
        ("sat dec 5 19:00", "Sat 2026-12-05 19:00 +0100"),
        ("2026-12-05 7pm", "Sat 2026-12-05 19:00 +0100"),
        # ISO 8601: with a zone it is that instant; without, the user's zone
        ("2026-12-05T19:00+01:00", "Sat 2026-12-05 19:00 +0100"),
        ("2026-12-05T18:00Z", "Sat 2026-12-05 19:00 +0100"),
        ("2026-12-05t18:00z", "Sat 2026-12-05 19:00 +0100"),
        ("2026-12-05T19:00", "Sat 2026-12-05 19:00 +0100"),
        ("2026-12-05 19:00", "Sat 2026-12-05 19:00 +0100"),
        # relative
        ("in 2 hours", "Fri 2026-12-04 19:00 +0100"),
        ("in an hour", "Fri 2026-12-04 18:00 +0100"),
        ("in 30 min", "Fri 2026-12-04 17:30 +0100"),
        ("in 90m", "Fri 2026-12-04 18:30 +0100"),
        ("in 3 days", "Mon 2026-12-07 17:00 +0100"),
        ("in 3 days at 19:00", "Mon 2026-12-07 19:00 +0100"),
        ("in a week at 8pm", "Fri 2026-12-11 20:00 +0100"),
        ("in 2 weeks", "Fri 2026-12-18 17:00 +0100"),
        ("  FRI    19:00  ", "Fri 2026-12-04 19:00 +0100"),
    ],
)
def test_times_in_paris(text: str, expected: str) -> None:
    assert wall(parse_when(text, PARIS, NOW)) == expected


def test_relative_times_drop_seconds() -> None:
    now = NOW + 17 * 10**9 + 5
    assert wall(parse_when("in 2 hours", PARIS, now)) == "Fri 2026-12-04 19:00 +0100"


def test_the_same_words_in_another_zone() -> None:
    """The wall clock is the user's: `fri 19:00` in Los Angeles is nine hours after Paris's."""
    paris = parse_when("fri 19:00", PARIS, NOW)
    la = parse_when("fri 19:00", LA, NOW)
    assert isinstance(paris, Moment) and isinstance(la, Moment)
    assert wall(la, LA) == "Fri 2026-12-04 19:00 -0800"
    assert la.ns - paris.ns == 9 * 3600 * 10**9
    assert paris.note is None and la.note is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "When?"),
        ("fri", "At what time? e.g. fri 19:00"),
        ("tomorrow", "At what time?"),
        ("fri 7", "Is 7 a time? Write 7:00 or 7pm"),
        ("19", "Is 19 a time? Write 19:00"),
        ("5th 19:00", "The 5th of which month? e.g. dec 5 19:00"),
        ("dec 19:00", "Which day of Dec?"),
        ("5/12 19:00", "write dec 5, 2099-12-05 or 19:30"),
        ("19.30", "reads differently"),
        ("next fri 19:00", "give the date"),
        ("fri midnight", "Say 00:00 or 23:59"),
        ("today 16:00", "today 16:00 has passed; e.g. tomorrow 16:00"),
        ("dec 3 2026 19:00", "is in the past"),
        ("2026-12-04T10:00+01:00", "is in the past"),
        ("feb 30 19:00", "There is no Feb 30 in the calendar"),
        ("feb 29 2027 19:00", "There is no Feb 29 2027"),
        ("2026-02-30 19:00", "not an ISO 8601 time"),
        ("2026-02-30 7pm", "not a date in the calendar"),
        ("fri dec 5 19:00", "Sat 5 Dec is a Saturday, not a Friday; e.g. sat dec 5 19:00"),
        ("tomorrow fri 19:00", "names more than one day"),
        ("dec 5 2026-12-05 19:00", "names more than one day"),
        ("fri 19:00 20:00", "says that twice"),
        ("2027 19:00", "A year needs a date"),
        ("at the pub", "I don't understand “pub”"),
        ("in 0 min", "That is now"),
        ("in 2 hours at 19:00", "already says the time of day"),
        ("in 3 days at dawn", "dawn is not a time of day"),
        ("in 3 fortnights", "say e.g. in 2 hours"),
        ("9999-12-31T23:59-05:00", "after the year 9999"),
        ("dec 31 9999 23:00", "too far ahead"),
    ],
)
def test_refusals_explain_with_an_example(text: str, words: str) -> None:
    assert words in refused(text)


# --- daylight saving ---------------------------------------------------------------------------
# Paris: clocks go forward 2026-03-29 02:00 -> 03:00 and back 2026-10-25 03:00 -> 02:00.
# Los Angeles: forward 2026-03-08 02:00 -> 03:00, back 2026-11-01 02:00 -> 01:00.


def test_paris_spring_forward_gap_is_refused() -> None:
    before = ns("2026-03-27 12:00")
    assert refused("sun 2:30", PARIS, before) == (
        "There is no 02:30 on Sun 29 Mar in Europe/Paris: the clocks go forward then. Try 03:30"
    )
    assert wall(parse_when("sun 3:30", PARIS, before)) == "Sun 2026-03-29 03:30 +0200"
    assert wall(parse_when("sun 1:30", PARIS, before)) == "Sun 2026-03-29 01:30 +0100"


def test_a_past_gap_day_rolls_over_to_the_next_week() -> None:
    """On the afternoon of the gap day, `sun 2:30` means next Sunday, which exists."""
    after = ns("2026-03-29 15:00")
    assert wall(parse_when("sun 2:30", PARIS, after)) == "Sun 2026-04-05 02:30 +0200"


def test_paris_fall_back_takes_the_first_and_says_so() -> None:
    moment = parse_when("oct 25 2:30", PARIS, ns("2026-10-20 12:00"))
    assert wall(moment) == "Sun 2026-10-25 02:30 +0200"
    assert isinstance(moment, Moment)
    assert moment.note == (
        "02:30 on Sun 25 Oct happens twice in Europe/Paris (the clocks go back); "
        "I took the first, UTC+02:00"
    )
    later = parse_when("oct 25 3:30", PARIS, ns("2026-10-20 12:00"))
    assert wall(later) == "Sun 2026-10-25 03:30 +0100"
    assert isinstance(later, Moment) and later.note is None


def test_los_angeles_gap_and_fold() -> None:
    march = ns("2026-03-06 12:00", LA)
    assert "There is no 02:30 on Sun 8 Mar in America/Los_Angeles" in refused(
        "sun 2:30am", LA, march
    )
    assert "Try 03:30" in refused("2026-03-08T02:30", LA, march)
    november = ns("2026-10-30 12:00", LA)
    moment = parse_when("sun 1:30", LA, november)
    assert wall(moment, LA) == "Sun 2026-11-01 01:30 -0700"
    assert isinstance(moment, Moment) and moment.note is not None
    assert moment.note.endswith("I took the first, UTC-07:00")


def test_days_ahead_keep_the_wall_clock_across_a_change() -> None:
    """`in 3 days` across the spring change is 71 real hours: 12:00 stays 12:00."""
    friday = ns("2026-03-27 12:00")
    moment = parse_when("in 3 days", PARIS, friday)
    assert wall(moment) == "Mon 2026-03-30 12:00 +0200"
    assert isinstance(moment, Moment) and moment.ns - friday == 71 * 3600 * 10**9


def test_hours_ahead_are_real_hours_across_a_change() -> None:
    night = ns("2026-03-29 01:30")
    assert wall(parse_when("in 2 hours", PARIS, night)) == "Sun 2026-03-29 04:30 +0200"


def test_an_explicit_offset_is_never_second_guessed() -> None:
    moment = parse_when("2026-10-25T02:30+01:00", PARIS, ns("2026-10-20 12:00"))
    assert wall(moment) == "Sun 2026-10-25 02:30 +0100"
    assert isinstance(moment, Moment) and moment.note is None


ZONES = st.sampled_from(
    [PARIS, LA, "UTC", "Asia/Kolkata", "Pacific/Chatham", "Australia/Lord_Howe"]
)
WORDS = st.sampled_from(
    ["fri", "tomorrow", "today", "dec", "5", "5th", "2027", "19:00", "7pm", "in", "2", "hours",
     "days", "at", "noon", "next", "2026-12-05", "2026-12-05T19:00", "Z", "+01:00", "/", ","]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(st.text(max_size=40), st.lists(WORDS, max_size=6).map(" ".join)),
    zone=ZONES,
    now_s=st.integers(
        int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()),
        int(datetime(2100, 1, 1, tzinfo=UTC).timestamp()),
    ),
)
def test_any_text_is_a_future_time_or_an_explanation(text: str, zone: str, now_s: int) -> None:
    now = now_s * 10**9 + 123
    answer = parse_when(text, zone, now)
    if isinstance(answer, Moment):
        assert answer.ns >= now and answer.ns % 10**9 == 0
    else:
        assert answer.message and "\n" not in answer.message
