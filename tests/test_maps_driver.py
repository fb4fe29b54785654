"""The map driver (meta1.maps.driver): sequences (B26, B30, B32), plans answered at once or
from the loop, the blocking driver, and opening every map of a configuration."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meta1.config import load_text
from meta1.eventloop import EventLoop
from meta1.maps.base import NOT_FOUND, LookupRequest, MapResult, Status, found
from meta1.maps.createmap import write_atomically
from meta1.maps.driver import BlockingDriver, MapDriver, MapOpenError, SequenceMap, open_maps
from meta1.maps.keys import ip_keys, tagged
from meta1.maps.local import BrokenMap, HashMap, InlineMap, LocalMap, PasswdMap, RegexMap
from meta1.maps.sockclient import SocketMapClient
from sockmap_support import SockmapServer, table_handler, until


class Fixed(LocalMap):
    """A map answering every key with one result, counting its lookups."""

    def __init__(self, name: str, result: MapResult) -> None:
        super().__init__(name)
        self.result = result
        self.asked: list[str] = []

    def lookup(self, key: str) -> MapResult:
        self.asked.append(key)
        return self.result


class Later:
    """A map answering through the loop (as a socket map does), counting its lookups."""

    kind = "later"

    def __init__(self, loop: EventLoop, name: str, result: MapResult) -> None:
        self.loop, self.name, self.result = loop, name, result
        self.asked: list[str] = []

    def submit(self, key, callback):
        self.asked.append(key)
        self.loop.call_soon(lambda: callback(self.result))
        return None

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


TEMP = MapResult(Status.TEMP, reason="down")
PERM = MapResult(Status.PERM, reason="broken")
NOMORE = MapResult(Status.NOMORE)


@pytest.mark.parametrize("results,expected,asked", [
    ([found("a"), found("b")], found("a"), 1),              # the first FOUND answers
    ([NOT_FOUND, found("b")], found("b"), 2),               # NOTFOUND goes on (B25, B30)
    ([NOT_FOUND, NOT_FOUND], NOT_FOUND, 2),
    ([NOMORE, found("b")], NOMORE, 1),                      # NOMORE ends it (B26)
    ([TEMP, found("b")], TEMP, 1),                          # a failure is not a "no"
    ([NOT_FOUND, PERM, found("c")], PERM, 2),
    ([], NOT_FOUND, 0),
])
def test_sequence_semantics(results, expected, asked) -> None:
    members = [Fixed(f"m{i}", r) for i, r in enumerate(results)]
    sequence = SequenceMap("seq", members)
    assert sequence.lookup("key") == expected
    assert sum(len(m.asked) for m in members) == asked


@given(st.lists(st.sampled_from([found("x"), NOT_FOUND, NOMORE, TEMP, PERM]), max_size=6),
       st.lists(st.booleans(), min_size=6, max_size=6))
def test_property_sequence_answers_with_the_first_member_that_is_not_notfound(results, later) -> None:
    loop = EventLoop()
    try:
        members = [Later(loop, f"m{i}", r) if later[i] else Fixed(f"m{i}", r) for i, r in enumerate(results)]
        answers = []
        now = SequenceMap("seq", members).submit("k", answers.append)
        if now is not None:
            answers.append(now)
        assert until(loop, lambda: answers, 5)
        decisive = next((i for i, r in enumerate(results) if r.status is not Status.NOTFOUND), None)
        assert answers == [results[decisive] if decisive is not None else NOT_FOUND]
        last = decisive if decisive is not None else len(results) - 1
        assert [len(m.asked) for m in members] == [1] * (last + 1) + [0] * (len(results) - last - 1)
        loop.run_once(0)
        assert len(answers) == 1
    finally:
        loop.close()


class AccessPlan:
    """A small policy core: the client's address in the access map, most specific first
    (cltaddr: keys), stopping at the first FOUND or NOMORE, failing on TEMP/PERM."""

    def __init__(self, address: str) -> None:
        self.keys = tagged("cltaddr:", ip_keys(address))
        self.result: MapResult | None = None
        self.tried: list[str] = []

    def next_lookup(self):
        if self.result is not None or len(self.tried) == len(self.keys):
            return None
        key = self.keys[len(self.tried)]
        self.tried.append(key)
        return LookupRequest("access", key)

    def lookup_result(self, result: MapResult) -> None:
        if result.status is not Status.NOTFOUND or len(self.tried) == len(self.keys):
            self.result = result


def test_b17_b19_a_plan_over_file_maps_ends_within_the_call(tmp_path) -> None:
    write_atomically(str(tmp_path / "access.db"), [("cltaddr:10.1.", "REJECT"), ("cltaddr:10.1.2.3", "OK")])
    driver = MapDriver({"access": HashMap("access", str(tmp_path / "access.db"))})
    plan = AccessPlan("10.1.2.3")
    assert driver.run(plan, lambda p: pytest.fail("on_done called")) is True
    assert plan.result == found("OK") and plan.tried == ["cltaddr:10.1.2.3"]
    plan = AccessPlan("10.1.9.9")
    assert driver.run(plan, lambda p: pytest.fail("on_done called"))
    assert plan.result == found("REJECT") and plan.tried == ["cltaddr:10.1.9.9", "cltaddr:10.1.9.", "cltaddr:10.1."]
    plan = AccessPlan("192.0.2.1")
    assert driver.run(plan, lambda p: None) and plan.result == NOT_FOUND and len(plan.tried) == 4


def test_a_plan_over_a_socket_map_finishes_from_the_loop(loop, tmp_path) -> None:
    with SockmapServer(table_handler({"cltaddr:10.": "RELAY"}), unix=str(tmp_path / "s")) as server:
        client = SocketMapClient(loop, "access", path=server.path)
        driver = MapDriver({"access": client})
        plan, done = AccessPlan("10.1.2.3"), []
        assert driver.run(plan, done.append) is False
        assert until(loop, lambda: done)
        assert done == [plan] and plan.result == found("RELAY")
        assert [key for _, key in server.requests] == plan.tried == tagged("cltaddr:", ip_keys("10.1.2.3"))
        driver.close()


def test_b26_nomore_stops_the_derived_keys(loop, tmp_path) -> None:
    def handler(mapname, key):
        return "NOMORE" if key == "cltaddr:10.1.2." else "NOTFOUND"
    with SockmapServer(handler, unix=str(tmp_path / "s")) as server:
        driver = BlockingDriver({"access": SocketMapClient(loop, "access", path=server.path)}, loop)
        plan = AccessPlan("10.1.2.3")
        driver.run_plan(plan)
        assert plan.result.status is Status.NOMORE and plan.tried == ["cltaddr:10.1.2.3", "cltaddr:10.1.2."]
        driver.close()


def test_an_undeclared_map_is_a_permanent_failure() -> None:
    result = MapDriver({}).submit(LookupRequest("nope", "k"), lambda r: None)
    assert (result.status, result.reason) == (Status.PERM, "no map named 'nope' is declared")


CONFIG = """
queue_directory = "{queue}";
smar {{
  map password {{ type = passwd; }}
  map userdb   {{ type = socket; path = smap.sock; mapname = userdb; timeout = 5s; }}
  map locusr   {{ type = sequence; maps = {{ password, userdb }}; }}
  map lum      {{ type = socket; address = 127.0.0.1; port = {port}; mapname = aliases; }}
  map stdal    {{ file = "aliases.db"; type = hash; }}
  map aliasmap {{ type = sequence; maps = {{ lum, stdal }}; }}
  map checks   {{ type = regex; file = checks.re; }}
  map relays   {{ type = inline; entries = {{ "cltaddr:127. RELAY" }}; }}
  local_user_map {{ name = locusr; flags = {{ localpart, local_domains }}; }}
  aliases      {{ name = aliasmap; flags = {{ localpart, local_domains }}; }}
}}
"""


@pytest.fixture
def smap_setup(tmp_path):
    """The smap manual's MeTA1 example (reference §2.4), with a sockmap server for the
    userdb (UNIX) and aliases (TCP) maps, and the files it names."""
    queue = tmp_path / "queue"
    queue.mkdir()
    users = {"alice": "alice"}
    aliases = {"news": "root@domain.net"}
    user_server = SockmapServer(table_handler(users), unix=str(queue / "smap.sock"))
    alias_server = SockmapServer(table_handler(aliases), tcp=True)
    write_atomically(str(queue / "aliases.db"), [("news", "from-the-file"), ("postmaster", "root")])
    (queue / "checks.re").write_text("/^(.*)@example\\.org$/ \\1\n")
    config = load_text(CONFIG.format(queue=queue, port=alias_server.port), "meta1.conf")
    with user_server, alias_server:
        yield config, user_server, alias_server


def test_open_maps_opens_every_type(loop, smap_setup) -> None:
    config, _, _ = smap_setup
    maps = open_maps(config, loop)
    kinds = {name: type(m) for name, m in maps.items()}
    assert kinds == {"password": PasswdMap, "userdb": SocketMapClient, "locusr": SequenceMap,
                     "lum": SocketMapClient, "stdal": HashMap, "aliasmap": SequenceMap,
                     "checks": RegexMap, "relays": InlineMap}
    assert maps["locusr"].members == [maps["password"], maps["userdb"]]
    assert maps["userdb"].path.endswith("/queue/smap.sock") and maps["userdb"].mapname == "userdb"
    MapDriver(maps).close()


def test_b30_b32_sequences_over_socket_and_file_maps(loop, smap_setup) -> None:
    config, user_server, alias_server = smap_setup
    driver = BlockingDriver(open_maps(config, loop), loop)
    driver.driver.start()

    def ask(map_name, key):
        return driver.lookup(LookupRequest(map_name, key))

    # B30: root is a system user: passwd answers, userdb is not asked.
    assert ask("locusr", "root") == found("root")
    assert user_server.requests == []
    # alice is not: userdb (the socket map) answers.
    assert ask("locusr", "alice") == found("alice")
    assert user_server.requests == [("userdb", "alice")]
    assert ask("locusr", "nobody-x9q").status is Status.NOTFOUND
    # B32: the socket map's answer wins; its NOTFOUND falls back to aliases.db.
    assert ask("aliasmap", "news") == found("root@domain.net")
    assert ask("aliasmap", "postmaster") == found("root")
    assert alias_server.requests == [("aliases", "news"), ("aliases", "postmaster")]
    assert ask("checks", "bob@example.org") == found("bob")
    assert ask("relays", "cltaddr:127.") == found("RELAY")
    driver.close()


def test_a_sequence_whose_socket_map_is_down_fails_temporarily(loop, smap_setup) -> None:
    config, user_server, _ = smap_setup
    user_server.stop()
    driver = BlockingDriver(open_maps(config, loop), loop)
    assert driver.lookup(LookupRequest("locusr", "root")) == found("root")    # passwd answers first
    result = driver.lookup(LookupRequest("locusr", "alice"))
    assert result.status is Status.TEMP and "unreachable" in result.reason
    driver.close()


def test_every_map_that_cannot_be_opened_is_reported_at_once(loop, tmp_path) -> None:
    (tmp_path / "damaged.db").write_bytes(b"\x89M1MAP\r\n" + bytes(100))
    (tmp_path / "checks.re").write_text("/ok/ x\n/(bad/ y\n")
    config = load_text(f'queue_directory = "{tmp_path}";\nsmar {{\n'
                       "  map missing { type = hash; file = missing.db; }\n"
                       "  map damaged { type = hash; file = damaged.db; }\n"
                       "  map checks { type = regex; file = checks.re; }\n"
                       "  map remote { type = socket; path = s.sock; }\n"
                       "  map both { type = sequence; maps = { missing, checks }; }\n"
                       "  map users { type = passwd; }\n}\n", "f")
    with pytest.raises(MapOpenError) as info:
        open_maps(config)           # no loop: the socket map cannot be made
    assert info.value.problems == [
        f"map missing: {tmp_path}/missing.db: cannot open: No such file or directory",
        f"map damaged: {tmp_path}/damaged.db: damaged map file (header checksum); rebuild it with meta1 createmap",
        f"map checks: {tmp_path}/checks.re:2: bad regular expression: missing ), unterminated subpattern at position 1",
        "map remote: a socket map needs an event loop",
    ]


def test_not_strict_broken_maps_answer_perm_and_the_rest_works(loop, tmp_path, caplog) -> None:
    config = load_text(f'queue_directory = "{tmp_path}";\nsmar {{\n'
                       "  map missing { type = hash; file = missing.db; }\n"
                       "  map users { type = passwd; }\n"
                       "  map both { type = sequence; maps = { users, missing }; }\n}\n", "f")
    maps = open_maps(config, loop, strict=False)
    assert isinstance(maps["missing"], BrokenMap)
    assert "map missing: " in caplog.text and "its lookups fail (PERM) until it is fixed" in caplog.text
    driver = BlockingDriver(maps, loop)
    assert driver.lookup(LookupRequest("both", "root")) == found("root")
    result = driver.lookup(LookupRequest("both", "nobody-x9q"))
    assert result.status is Status.PERM and "missing.db: cannot open" in result.reason


def test_relative_paths_follow_base(loop, tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    write_atomically(str(tmp_path / "sub" / "m.db"), [("k", "v")])
    config = load_text("smar { map m { type = hash; file = sub/m.db; } }", "f")
    maps = open_maps(config.smar, base=str(tmp_path))
    assert maps["m"].lookup("k") == found("v")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert open_maps(config.smar)["m"].lookup("K") == found("v")
    finally:
        os.chdir(cwd)
