"""What `herd up` shows, from `herd.upview`: the banner, the status lines, the problems and when
they are worth a line, the stop summary, the in-place redraw."""

from __future__ import annotations

from herd.upview import (
    LINK_DOWN_SECONDS,
    SILENT_SECONDS,
    START_SECONDS,
    Banner,
    Board,
    ServerInfo,
    banner_lines,
    fit,
    printable,
    redraw,
    stop_lines,
)

SERVERS = (
    ServerInfo("Bailey", "127.0.0.1", 12001, ("Bona",)),
    ServerInfo("Bona", "127.0.0.1", 12002, ("Bailey",)),
)
UP = {"Bailey": {"Bona": "up"}, "Bona": {"Bailey": "up"}}
DOWN = {"Bailey": {"Bona": "down"}, "Bona": {"Bailey": "down"}}


def _banner(**changes: object) -> Banner:
    fields: dict[str, object] = {
        "config": "config/herd.toml",
        "data_dir": "var",
        "servers": SERVERS,
        "mail": "127.0.0.1:2525",
        "mail_dir": "var/mail",
        "jabber": "127.0.0.1:5222",
        "bot": "renga@localhost",
        "demo_accounts": (("alice@localhost", "alice-demo"), ("bob@localhost", "bob-demo")),
        "tokens": (("alice", "TOKEN-A"), ("bob", "TOKEN-B")),
        "demo_note": None,
        "verbose": False,
    }
    fields.update(changes)
    return Banner(**fields)  # type: ignore[arg-type]


def test_the_banner_says_where_everything_is_and_what_to_try() -> None:
    text = "\n".join(banner_lines(_banner()))
    assert text.splitlines()[0] == "herd up: 2 servers from config/herd.toml"
    assert "  Bailey  127.0.0.1:12001  peers Bona" in text
    assert "mail sink   127.0.0.1:2525  keeps every mail in var/mail" in text
    assert "herd mail" in text
    assert "jabber      127.0.0.1:5222  Prosody, plain connection (no TLS)\n" in text
    assert "the bot: renga@localhost; demo accounts (JID / password):" in text
    assert "alice@localhost / alice-demo, bob@localhost / bob-demo" in text
    assert "  AUTH alice TOKEN-A\n  AUTH bob TOKEN-B" in text
    for command in ("herd talk Bailey", "herd chat alice", "herd demo", "herd mail"):
        assert f"  {command} " in text
    assert "herd up --verbose follows them" in text
    assert "followed below" in "\n".join(banner_lines(_banner(verbose=True)))
    assert len(banner_lines(_banner())) < 40
    three = tuple((f"{user}@localhost", f"{user}-demo") for user in ("alice", "bob", "carol"))
    assert all(len(line) <= 80 for line in banner_lines(_banner(demo_accounts=three)))


def test_a_banner_without_local_services_or_tokens_says_so() -> None:
    lines = banner_lines(_banner(mail=None, jabber=None, tokens=(), demo_note="not created (x)"))
    text = "\n".join(lines)
    assert "mail        the config's [smtp] server" in text
    assert "jabber      the config's [xmpp] server; the bot is renga@localhost" in text
    assert "demo users: not created (x)" in text
    assert "herd chat" not in text and "AUTH" not in text


def test_status_lines_follow_the_polls() -> None:
    board = Board(SERVERS, now=0.0)
    assert board.lines(0.0) == ["  Bailey  12001  starting", "  Bona    12002  starting"]
    assert board.answered("Bailey", {"Bona": "down"}, 1.0) == []
    assert board.line("Bailey", 1.0) == "  Bailey  12001  up    peers: Bona connecting"
    assert board.answered("Bailey", UP["Bailey"], 3.0) == []
    assert board.line("Bailey", 3.0) == "  Bailey  12001  up    peers: Bona up"
    assert board.answered("Bailey", DOWN["Bailey"], 5.0) == []
    assert board.line("Bailey", 5.0) == "  Bailey  12001  up    peers: Bona down"


def test_a_link_down_long_is_a_problem_once_and_its_return_is_told() -> None:
    board = Board(SERVERS, now=0.0)
    for name in UP:
        board.answered(name, UP[name], 1.0)
    assert board.answered("Bailey", DOWN["Bailey"], 2.0) == []
    assert board.answered("Bona", DOWN["Bona"], 2.0 + LINK_DOWN_SECONDS - 1) == []
    later = 2.0 + LINK_DOWN_SECONDS
    assert board.answered("Bona", DOWN["Bona"], later) == [
        "herd: the link Bailey-Bona is down (for 10 s)"
    ]
    assert board.line("Bona", later) == "  Bona    12002  up    peers: Bailey DOWN 10s"
    assert board.answered("Bailey", DOWN["Bailey"], later + 2) == []  # said once
    assert board.answered("Bailey", UP["Bailey"], later + 4) == []  # one end is not enough
    assert board.answered("Bona", UP["Bona"], later + 4) == [
        "herd: the link Bailey-Bona is up again"
    ]


def test_a_server_that_stops_answering_or_never_answers_is_a_problem() -> None:
    board = Board(SERVERS, now=0.0)
    board.answered("Bailey", UP["Bailey"], 1.0)
    assert board.answered("Bailey", None, 1.0 + SILENT_SECONDS - 1) == []
    assert board.answered("Bailey", None, 1.0 + SILENT_SECONDS) == [
        "herd: Bailey does not answer (for 5 s)"
    ]
    assert board.answered("Bailey", None, 20.0) == []
    assert board.line("Bailey", 20.0) == "  Bailey  12001  NOT ANSWERING"
    assert board.answered("Bailey", UP["Bailey"], 21.0) == ["herd: Bailey answers again"]
    assert board.answered("Bona", None, START_SECONDS - 1) == []
    assert board.answered("Bona", None, START_SECONDS) == ["herd: Bona does not answer (for 30 s)"]


def test_an_exit_shows_the_last_lines_of_stderr_made_harmless() -> None:
    board = Board(SERVERS, now=0.0)
    tail = [f"line {n}" for n in range(15)] + ["\x1b[2Jherd: Bailey: the store cannot write"]
    events = board.exited("Bailey", 1, tail)
    assert events[0] == "herd: Bailey exited (exit code 1); the last lines of its stderr:"
    assert events[1:] == [f"  | line {n}" for n in range(6, 15)] + [
        "  | ?[2Jherd: Bailey: the store cannot write"
    ]
    assert board.exited("Bona", -9, [])[:2] == [
        "herd: Bona exited (killed by SIGKILL); the last lines of its stderr:",
        "  | (nothing)",
    ]
    assert board.line("Bona", 1.0) == "  Bona    12002  EXITED (killed by SIGKILL)"
    fresh = Board(SERVERS, now=0.0)
    fresh.exited("Bona", 1, [])
    fresh.answered("Bailey", {"Bona": "down"}, 50.0)
    assert fresh.line("Bailey", 90.0) == "  Bailey  12001  up    peers: Bona exited"
    assert fresh.changes(90.0) == [
        "  Bailey  12001  up    peers: Bona exited",
        "  Bona    12002  EXITED (exit code 1)",
    ]
    assert board.answered("Bona", None, 100.0) == []  # an exited server is not polled into news


def test_without_a_terminal_a_status_line_is_printed_only_when_it_changes() -> None:
    board = Board(SERVERS, now=0.0)
    assert board.changes(0.0) == []  # starting
    board.answered("Bailey", {"Bona": "down"}, 1.0)
    assert board.changes(1.0) == []  # linking up for the first time: wait
    board.answered("Bailey", UP["Bailey"], 2.0)
    assert board.changes(2.0) == ["  Bailey  12001  up    peers: Bona up"]
    assert board.changes(3.0) == []
    board.answered("Bailey", DOWN["Bailey"], 4.0)
    assert board.changes(5.0) == []  # a short drop
    assert board.changes(4.0 + LINK_DOWN_SECONDS) == ["  Bailey  12001  up    peers: Bona DOWN 10s"]
    assert board.changes(30.0) == []  # only the duration grew
    board.exited("Bailey", 0, [])
    assert board.changes(31.0) == ["  Bailey  12001  EXITED (exit code 0)"]


def test_the_stop_summary_names_what_was_stopped_and_killed() -> None:
    assert stop_lines(["Bailey", "Bona"], ["Clark"], ["the mail sink on 127.0.0.1:2525"]) == [
        "herd up: stopped",
        "  servers: Bailey, Bona",
        "  Clark: did not stop in time, killed",
        "  the mail sink on 127.0.0.1:2525",
    ]


def test_the_status_block_is_redrawn_in_place() -> None:
    assert redraw(0, [], ["a", "b"], 80) == "a\nb\n"
    assert redraw(2, ["event"], ["a", "b"], 80) == "\x1b[2F\x1b[Jevent\na\nb\n"
    assert redraw(2, [], [], 80) == "\x1b[2F\x1b[J"
    assert fit("x" * 100, 10) == "x" * 8 + "…"
    assert fit("short", 10) == "short"
    assert printable("a\x1b[1mb\tc") == "a?[1mb?c"
