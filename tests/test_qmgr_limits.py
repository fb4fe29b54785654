"""qmgr's configuration map at run time (meta1/qmgr/limits.py, meta1/qmgr/admission.py):
the lookups and their cache, the outgoing limits for the scheduler, the incoming counts and
the admission of sessions, and PolicyRelay's admission path — all without I/O (maps that
answer at once, and a map whose answers the test gives later)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from meta1.ipc.records import PolicyCheck, PolicyVerdict
from meta1.maps.base import MapResult, Status, found, NOT_FOUND
from meta1.maps.driver import MapDriver
from meta1.maps.local import InlineMap
from meta1.policy.limits import INCOMING, MAX_LIMIT, OUTGOING
from meta1.qmgr.admission import Admission, ConnectionCounts
from meta1.qmgr.destinations import ConnectionLimits, Destinations
from meta1.qmgr.limits import CACHE_TTL, UNKNOWN_LIMITS, LimitsLookup, OutgoingLimits
from meta1.qmgr.policy import PolicyRelay


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LaterMap:
    """A map that answers when the test says (as a socket map does, from the loop)."""

    kind = "later"

    def __init__(self, name: str = "conf") -> None:
        self.name = name
        self.asked: list[tuple[str, object]] = []

    def submit(self, key, callback):
        self.asked.append((key, callback))
        return None

    def answer_all(self, table: dict[str, MapResult]) -> None:
        """Answer every outstanding lookup (and those the answers lead to)."""
        while self.asked:
            key, callback = self.asked.pop(0)
            callback(table.get(key, NOT_FOUND))

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def inline(*entries: str) -> MapDriver:
    return MapDriver({"conf": InlineMap("conf", [tuple(e.split(None, 1)) for e in entries])})


def incoming(driver, clock=None) -> LimitsLookup:
    return LimitsLookup(driver, "conf", INCOMING, clock=clock or Clock())


# -- LimitsLookup -----------------------------------------------------------------------------

def test_a_map_that_answers_at_once_is_cached_for_the_ttl() -> None:
    clock = Clock()
    driver = inline("icm:192.0.2. 3")
    lookup = incoming(driver, clock)
    assert lookup.get("192.0.2.7", None).get("icm:") == 3
    driver.maps["conf"].entries["icm:192.0.2."] = "5"            # the map changes
    assert lookup.get("192.0.2.7", None).get("icm:") == 3         # still cached
    clock.now += CACHE_TTL
    assert lookup.get("192.0.2.7", None).get("icm:") == 5         # asked again


def test_overlapping_lookups_share_one_plan_and_failures_are_not_cached() -> None:
    slow = LaterMap()
    lookup = incoming(MapDriver({"conf": slow}))
    answers: list = []
    assert lookup.get("2001:db8::1", answers.append) is None
    assert lookup.get("2001:db8:0:0:0:0:0:1", answers.append) is None   # the same address
    assert len(slow.asked) == 1
    slow.answer_all({"icm:2001:db8:0:0:0:0:0:1": MapResult(Status.TEMP, reason="down")})
    assert [a.failed for a in answers] == [True, True]
    assert lookup.get("2001:db8::1", answers.append) is None           # asked again
    slow.answer_all({"icm:2001:db8:": found("4")})                     # B70: IPv6 keys
    assert answers[-1].get("icm:") == 4
    assert lookup.get("2001:db8::1", None).get("icm:") == 4            # now from the cache


def test_addresses_that_are_not_ip_have_no_limits_and_ipv4_mapped_is_ipv4() -> None:
    lookup = incoming(inline("icm:192.0.2.1 1"))
    assert lookup.get("unix", None).values == {}
    assert lookup.get("::ffff:192.0.2.1", None).get("icm:") == 1


def test_old_entries_are_pruned_when_the_cache_has_doubled() -> None:
    clock = Clock()
    lookup = incoming(inline(), clock)
    for n in range(1100):
        lookup.get(f"10.0.{n // 256}.{n % 256}", None)
    clock.now += CACHE_TTL
    for n in range(1000):
        lookup.get(f"10.9.{n // 256}.{n % 256}", None)
    assert not any(key.startswith("10.0.") for key in lookup.cache)   # the first 1100 are gone


# -- OutgoingLimits ---------------------------------------------------------------------------

def outgoing(driver, clock=None) -> OutgoingLimits:
    return OutgoingLimits(LimitsLookup(driver, "conf", OUTGOING, clock=clock or Clock()), 4, 20)


def test_connection_limits_from_oci_ocm_and_ocr_with_0_as_no_limit_b69() -> None:
    limits = outgoing(inline("ocm:192.0.2.1 2", "oci:192.0.2.2 1", "ocm:192.0.2.3 0", "oci:192.0.2.4 0",
                             "oct:192.0.2.5 30", "ocr:192.0.2.6 10", "ocr:192.0.2.7 0", "ocr:192.0.2.1 3"))
    assert limits.connection_limits("192.0.2.1") == ConnectionLimits(4, 2, 3)   # Destinations caps initial at max
    assert limits.connection_limits("192.0.2.2") == ConnectionLimits(1, 20)
    assert limits.connection_limits("192.0.2.3") == ConnectionLimits(4, MAX_LIMIT)
    assert limits.connection_limits("192.0.2.4") == ConnectionLimits(20, 20)   # no slow start
    assert limits.connection_limits("192.0.2.6") == ConnectionLimits(4, 20, 10)  # a rate and the defaults
    assert limits.connection_limits("192.0.2.7") is None       # ocr: 0 is no rate: the defaults
    assert limits.connection_limits("192.0.2.5") is None       # the section's defaults
    assert limits.target_timeouts("192.0.2.5") == (30, 0, 0)
    assert limits.target_timeouts("192.0.2.1") == (0, 0, 0)
    assert limits.connection_limits("/var/spool/meta1/lmtpsock") is None   # an LMTP socket


def test_destinations_take_the_initial_window_and_the_maximum_from_the_map() -> None:
    limits = outgoing(inline("oci:192.0.2.1 1", "ocm:192.0.2.1 2"))
    destinations = Destinations(4, 20, limits.connection_limits)
    first = destinations.plan(["192.0.2.1"], 5, 0)
    destinations.take(first, 0)
    assert destinations.plan(["192.0.2.1"], 5, 0) is None           # slow start: one at first
    destinations.opened("192.0.2.1")
    destinations.succeeded("192.0.2.1")
    destinations.take(destinations.plan(["192.0.2.1"], 5, 0), 0)
    destinations.opened("192.0.2.1")
    destinations.succeeded("192.0.2.1")
    assert destinations.get("192.0.2.1").window == 2             # ocm: never above two
    assert destinations.plan(["192.0.2.1"], 5, 0) is None


def test_a_route_waits_for_a_slow_map_and_a_failure_defers_it() -> None:
    slow = LaterMap()
    limits = outgoing(MapDriver({"conf": slow}))
    ready: list = []
    limits.route_ready(["192.0.2.1", "192.0.2.2", "192.0.2.1"], ready.append)
    assert ready == []
    assert limits.connection_limits("192.0.2.9") == UNKNOWN_LIMITS   # unknown, and it cannot be known now
    slow.answer_all({"ocm:192.0.2.1": found("2")})
    assert ready == [None]
    assert limits.connection_limits("192.0.2.1") == ConnectionLimits(4, 2)   # known: no lookup needed
    limits.route_ready(["192.0.2.1"], ready.append)                  # fresh: at once
    assert ready == [None, None]
    limits.route_ready(["192.0.2.3"], ready.append)
    slow.answer_all({"oci:192.0.2.3": found("many")})
    assert ready[-1].startswith("configuration map conf: oci:192.0.2.3: not a number")


def test_ocr_is_looked_up_with_the_other_outgoing_tags_and_a_failure_defers_the_route() -> None:
    limits = outgoing(inline("ocr:192.0.2. 5", "ocr:192.0.2.2 fast"))
    ready: list = []
    limits.route_ready(["192.0.2.1"], ready.append)
    assert ready == [None]
    assert set(limits.lookup.cache["192.0.2.1"][0].values) == {"oci:", "ocm:", "ocr:", "oct:"}   # one entry
    assert limits.connection_limits("192.0.2.1") == ConnectionLimits(4, 20, 5)
    limits.route_ready(["192.0.2.2"], ready.append)               # D-POL-25: never with limits unknown
    assert ready[-1] == "configuration map conf: ocr:192.0.2.2: not a number 0..1000000: 'fast'"


# -- smtpc_session_conf: with the outgoing limits (D-POL-28) ----------------------------------------

class CountingMap(InlineMap):
    """An inline map that counts its lookups."""

    def __init__(self, *entries: str) -> None:
        super().__init__("conf", [tuple(e.split(None, 1)) for e in entries])
        self.asked: list[str] = []

    def submit(self, key, callback):
        self.asked.append(key)
        return super().submit(key, callback)


def test_the_smtpc_session_conf_is_looked_up_parsed_and_cached_with_the_limits() -> None:
    clock = Clock()
    conf = CountingMap("smtpc_session_conf:192.0.2. IO_timeout = 2s; final_dot_timeout = 3m;", "oct:192.0.2.1 9")
    limits = outgoing(MapDriver({"conf": conf}), clock)
    ready: list = []
    limits.route_ready(["192.0.2.1", "192.0.2.2"], ready.append)
    assert ready == [None]
    assert limits.target_timeouts("192.0.2.1") == (9, 2, 180)
    assert limits.target_timeouts("192.0.2.2") == (0, 2, 180)
    assert limits.target_timeouts("198.51.100.1") == (0, 0, 0)          # nothing known: smtpc's own
    asked = len(conf.asked)
    limits.route_ready(["192.0.2.1"], ready.append)                     # fresh: from the cache
    assert len(conf.asked) == asked and ready == [None, None]
    conf.entries["smtpc_session_conf:192.0.2."] = "IO_timeout = 5s;"     # the map changes
    clock.now += CACHE_TTL
    limits.route_ready(["192.0.2.1"], ready.append)                     # stale: asked again
    assert limits.target_timeouts("192.0.2.1") == (9, 5, 0)


def test_a_broken_or_failing_smtpc_session_conf_defers_the_route_naming_map_and_key_b33() -> None:
    limits = outgoing(inline("smtpc_session_conf:192.0.2.1 IO_timeout = soon;"))
    ready: list = []
    limits.route_ready(["192.0.2.1"], ready.append)
    assert ready == ["configuration map conf: smtpc_session_conf:192.0.2.1: 1:14: IO_timeout: "
                     "'soon' is not a time interval (e.g. 30s, 5m3s, 1h30m, 2d; units w d h m s in that order)"]
    assert limits.lookup.known("192.0.2.1") is None                    # a failure is not cached
    slow = LaterMap()
    limits = outgoing(MapDriver({"conf": slow}))
    limits.route_ready(["192.0.2.1"], ready.append)
    slow.answer_all({"smtpc_session_conf:192.0.": MapResult(Status.TEMP, reason="ldap down")})
    assert ready[-1] == "configuration map conf: smtpc_session_conf:192.0.: TEMP ldap down"


def test_a_map_that_answers_at_once_makes_a_route_ready_at_once() -> None:
    ready: list = []
    outgoing(inline()).route_ready(["192.0.2.1"], ready.append)
    outgoing(inline()).route_ready([], ready.append)             # no address: nothing to wait for
    assert ready == [None, None]


# -- ConnectionCounts -------------------------------------------------------------------------

def test_counts_open_sessions_and_admissions_within_the_window() -> None:
    counts = ConnectionCounts(window=60)
    counts.opened("192.0.2.1", now=0)
    counts.opened("192.0.2.1", now=10)
    counts.opened("2001:db8::1", now=10)
    assert counts.counts("192.0.2.1", now=30) == (2, 2)
    assert counts.counts("2001:db8:0:0:0:0:0:1", now=30) == (1, 1)     # one address, two spellings
    counts.closed("192.0.2.1")
    assert counts.counts("192.0.2.1", now=60) == (1, 1)                 # the first admission is a minute old
    counts.closed("192.0.2.1")
    assert counts.counts("192.0.2.1", now=69) == (0, 1)
    assert counts.counts("192.0.2.1", now=70) == (0, 0)
    counts.check_invariants()
    assert counts.open == {"2001:db8:0:0:0:0:0:1": 1} and "192.0.2.1" not in counts.admitted


def test_stale_admission_times_are_swept_when_the_table_has_doubled() -> None:
    counts = ConnectionCounts(window=60)
    for n in range(1100):
        counts.opened(f"10.0.{n // 256}.{n % 256}", now=0)
        counts.closed(f"10.0.{n // 256}.{n % 256}")
    for n in range(1000):
        counts.opened(f"10.9.{n // 256}.{n % 256}", now=60)
    assert not any(key.startswith("10.0.") for key in counts.admitted)


# -- Admission --------------------------------------------------------------------------------

def admission(driver, clock=None) -> Admission:
    clock = clock or Clock()
    return Admission(incoming(driver, clock), ConnectionCounts(), clock, "mx.test")


def test_the_third_concurrent_session_is_refused_and_an_ended_one_frees_its_slot_b56() -> None:
    gate = admission(inline("icm:192.0.2.5 2"))
    decided: list = []
    for session in ("S1", "S2", "S3"):
        gate.admit("link", session, "192.0.2.5", decided.append)
    assert decided[:2] == [None, None]
    assert (decided[2].code, decided[2].status) == (421, "4.7.0")
    gate.ended("link", "S3")                             # refused: nothing to free
    gate.ended("link", "S1")
    gate.admit("link", "S4", "192.0.2.5", decided.append)
    assert decided[3] is None
    gate.owner_lost("link")
    gate.check_invariants()
    assert gate.counts.open == {} and gate.sessions == {}


def test_icr_counts_admitted_sessions_in_the_last_minute() -> None:
    clock = Clock()
    gate = admission(inline("icr:192.0.2. 2"), clock)
    decided: list = []
    for n in range(3):
        gate.admit("link", f"S{n}", "192.0.2.5", decided.append)
        gate.ended("link", f"S{n}")
    assert [d is None for d in decided] == [True, True, False]
    assert "per minute" in decided[2].lines[0]
    clock.now += 60
    gate.admit("link", "S9", "192.0.2.5", decided.append)  # a refused one did not count
    assert decided[-1] is None


def test_a_session_that_ends_before_its_decision_is_never_counted() -> None:
    slow = LaterMap()
    gate = admission(MapDriver({"conf": slow}))
    decided: list = []
    gate.admit("link", "S1", "192.0.2.5", decided.append)
    gate.admit("link", "S2", "192.0.2.5", decided.append)
    gate.admit("other", "S3", "192.0.2.5", decided.append)
    gate.ended("link", "S1")                             # the client hung up meanwhile
    gate.owner_lost("other")                             # that smtps went away
    slow.answer_all({"icm:192.0.2.5": found("1")})
    assert decided == [None]                             # S2 only, and it is the one counted
    assert gate.counts.counts("192.0.2.5", 0) == (1, 1)


def test_a_repeated_connect_check_is_refused_and_takes_no_second_slot() -> None:
    slow = LaterMap()
    gate = admission(MapDriver({"conf": slow}))
    decided: list = []
    gate.admit("link", "S1", "192.0.2.5", decided.append)
    gate.admit("link", "S1", "192.0.2.5", decided.append)       # while the first is pending
    slow.answer_all({})
    gate.admit("link", "S1", "192.0.2.5", decided.append)       # and once it is counted
    assert [d if d is None else d.status for d in decided] == ["4.3.0", None, "4.3.0"]
    assert gate.counts.counts("192.0.2.5", 0) == (1, 1)


ADDRESSES = ("192.0.2.1", "192.0.2.2", "2001:db8::1")
LIMITS = {"192.0.2.1": (2, None), "192.0.2.2": (None, 3), "2001:db8::1": (1, 2)}     # (icm, icr)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["connect", "end", "lost", "tick"]), st.integers(0, 2),
                          st.integers(0, 5), st.sampled_from(ADDRESSES)), max_size=60))
def test_admission_follows_a_model_of_sessions_and_limits(steps) -> None:
    clock = Clock(0)
    gate = admission(inline("icm:192.0.2.1 2", "icr:192.0.2.2 3", "icm:2001:db8: 1", "icr:2001:db8: 2"), clock)
    counted: dict[tuple[int, str], str] = {}          # (owner, session) -> address
    admitted: list[tuple[float, str]] = []
    for op, owner, session, address in steps:
        sid = f"S{session}"
        if op == "connect":
            icm, icr = LIMITS[address]
            open_now = sum(1 for a in counted.values() if a == address)
            recent = sum(1 for t, a in admitted if a == address and t > clock.now - 60)
            expected = (icm is None or open_now < icm) and (icr is None or recent < icr)
            decided: list = []
            gate.admit(owner, sid, address, decided.append)
            if (owner, sid) in counted:
                assert decided[0].status == "4.3.0"                       # a repeat
            elif expected:
                assert decided == [None]
                counted[(owner, sid)] = address
                admitted.append((clock.now, address))
            else:
                assert decided[0].status == "4.7.0"
        elif op == "end":
            gate.ended(owner, sid)
            counted.pop((owner, sid), None)
        elif op == "lost":
            gate.owner_lost(owner)
            counted = {k: a for k, a in counted.items() if k[0] != owner}
        else:
            clock.now += 25
        gate.check_invariants()


def test_each_change_of_an_admission_is_traced() -> None:
    records: list[dict] = []
    clock = Clock(5)
    gate = Admission(incoming(inline("icm:192.0.2.5 1"), clock), ConnectionCounts(), clock, trace=records.append)
    gate.admit("link", "S1", "192.0.2.5", lambda reply: None)
    gate.admit("link", "S2", "192.0.2.5", lambda reply: None)
    gate.ended("link", "S1")
    assert [(r["id"], r["old"], r["input"], r["new"]) for r in records] == [
        ("S1", "NEW", "CONNECT", "DECIDING"), ("S1", "DECIDING", "ADMIT", "COUNTED"),
        ("S2", "NEW", "CONNECT", "DECIDING"), ("S2", "DECIDING", "REFUSE", "DONE"),
        ("S1", "COUNTED", "END", "DONE")]
    assert {(r["machine"], r["daemon"], r["time"]) for r in records} == {("qmgr-admission", "qmgr", 5)}


def test_a_failed_lookup_refuses_for_now() -> None:
    gate = admission(inline("icm:192.0.2. lots"))
    decided: list = []
    gate.admit("link", "S1", "192.0.2.5", decided.append)
    assert (decided[0].code, decided[0].status) == (421, "4.3.0")
    assert gate.counts.open == {}


# -- PolicyRelay with admission ---------------------------------------------------------------

class FakeLink:
    def __init__(self) -> None:
        self.sent: list = []
        self.closed = False

    def send(self, record) -> None:
        self.sent.append(record)


class FakeSmar(FakeLink):
    ready = True


def check(stage: str, session: str = "S1", request_id: int = 7) -> PolicyCheck:
    return PolicyCheck(request_id, session, stage, "192.0.2.5", 4711, "", None, None, False, "")


def test_the_relay_admits_before_smar_and_answers_itself_when_smar_checks_nothing() -> None:
    smar = FakeSmar()
    relay = PolicyRelay(smar, forwards=False, admission=admission(inline("icm:192.0.2.5 1")))
    smtps = FakeLink()
    relay.check(smtps, check("connect"))
    relay.check(smtps, check("connect", "S2", 8))
    assert smtps.sent[0] == PolicyVerdict(7, "ok", "")
    assert smtps.sent[1].outcome == "close" and smtps.sent[1].reply.startswith("421 4.7.0 mx.test too many")
    relay.check(smtps, check("end"))
    relay.check(smtps, check("connect", "S3", 9))
    assert smtps.sent[2] == PolicyVerdict(9, "ok", "")
    assert smar.sent == []                               # smar has nothing to check
    relay.smtps_lost(smtps)
    assert relay.admission.counts.open == {}


def test_the_relay_passes_an_admitted_check_on_to_smar_and_a_refused_one_not() -> None:
    smar = FakeSmar()
    relay = PolicyRelay(smar, admission=admission(inline("icm:192.0.2.5 1")))
    smtps = FakeLink()
    relay.check(smtps, check("connect"))
    relay.check(smtps, check("connect", "S2", 8))
    assert [r.session_id for r in smar.sent] == ["S1"]
    assert [r.request_id for r in smtps.sent] == [8]     # refused here
    relay.check(smtps, check("end"))
    assert [r.stage for r in smar.sent] == ["connect", "end"]
