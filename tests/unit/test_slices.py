"""The slice scheduler on a fake clock: connections take turns round robin, and a turn yields to
the reactor once its time is spent."""

from __future__ import annotations

from twisted.internet.task import Clock

from herd.slices import SliceScheduler


class Waiting:
    """A connection with `slices` slices of lines to run, each taking `cost` seconds."""

    def __init__(self, name: str, ran: list[str], clock: Clock, slices: int, cost: float = 0.0):
        self.name = name
        self.scheduled = False
        self._ran = ran
        self._clock = clock
        self._left = slices
        self._cost = cost
        self.scheduler: SliceScheduler | None = None

    def run_slice(self) -> None:
        self._ran.append(self.name)
        self._clock.rightNow += self._cost  # time spent running lines
        self._left -= 1
        if self._left and self.scheduler is not None:
            self.scheduler.want(self)


def connections(
    scheduler: SliceScheduler, clock: Clock, ran: list[str], slices: int, cost: float = 0.0
) -> list[Waiting]:
    made = [Waiting(name, ran, clock, slices, cost) for name in ("a", "b", "c")]
    for connection in made:
        connection.scheduler = scheduler
    return made


def test_nothing_runs_before_the_reactor_turns_and_a_connection_waits_once() -> None:
    clock, ran = Clock(), list[str]()
    scheduler = SliceScheduler(clock)
    a, _, _ = connections(scheduler, clock, ran, slices=1)
    scheduler.want(a)
    scheduler.want(a)
    assert ran == [] and not scheduler.idle
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert ran == ["a"] and scheduler.idle and not a.scheduled


def test_waiting_connections_take_a_slice_each_in_turn() -> None:
    clock, ran = Clock(), list[str]()
    scheduler = SliceScheduler(clock)
    for connection in connections(scheduler, clock, ran, slices=2):
        scheduler.want(connection)
    clock.callLater(0, ran.append, "reactor")  # I/O that came in meanwhile
    clock.advance(0)
    # Each asked again during its slice: the second slices wait for the next turn.
    assert ran == ["a", "b", "c", "reactor", "a", "b", "c"]
    assert scheduler.idle and clock.getDelayedCalls() == []


def test_a_turn_ends_once_its_time_is_spent_and_the_rest_go_next_turn() -> None:
    clock, ran = Clock(), list[str]()
    scheduler = SliceScheduler(clock, turn_seconds=0.005)
    for connection in connections(scheduler, clock, ran, slices=1, cost=0.003):
        scheduler.want(connection)
    clock.callLater(0, ran.append, "reactor")
    clock.advance(0)
    assert ran == ["a", "b", "reactor", "c"]  # 6 ms spent after b: c waited for the next turn
    assert scheduler.idle
