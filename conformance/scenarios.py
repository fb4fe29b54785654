"""Run policy scenarios: access map, delay_checks, relaying, routing, DNSBL, greylisting.

A scenario (``conformance/policy/*.toml``, TOML so that Python's standard library reads
it) is a meta1 configuration, the contents of its maps, and SMTP-level steps with the
outcome each must have. The runner plays the steps through the policy cores the way
smtps and smar will: parse the path (:mod:`meta1.smtp.address`), run the stage's lookup
plan (:mod:`meta1.policy.checks`) over the maps, hand the result to the session's
:class:`~meta1.policy.session.SessionChecks`, ask greylisting last. No sockets, no DNS:
DNS answers are written in the step.

Top level::

    title = "B17 — IPv4 stripping"
    config = \"\"\" hostname = mx.ours.test; smar { ... } \"\"\"
    client = "192.0.2.7"          # default client of [[case]] tables and connect steps

    [maps.access]                   # map name -> key -> value
    "cltaddr:10." = "REJECT"
    "to:x@ours.test" = { status = "TEMP", reason = "db down" }    # NOMORE, TEMP, PERM
    "smtpc_rcpt_conf:big.test" = { repeat = "tls_requirement = 1; ", times = 40 }

    [sequences]                     # maps of type sequence, as the map driver runs them
    locusr = ["password", "userdb"]

Steps (``[[step]]``, one session, in order) — each with an optional ``expect``: a reply
code, optionally its enhanced status and a fragment of its text
(``"550 5.7.1"``, ``"550 5.1.1 unknown"``), and ``lookups``: exactly the ``"map key"``
requests the step made, in order::

    connect = "10.1.2.3"    name = "host.example"  resolve = "forged"
                            dnsbl = { zen = ["127.0.0.2"] }   # or "nxdomain", "timeout"
                            open = 2  recent = 0              # icm:/icr: admission, counts given
                            session = "a"  now = 30           # or counted by qmgr's Admission
                            expect = "220"  (greet as usual) or the refusal
    end = "a"               the session counted as "a" is over (its slot is free)
    auth = true | tls = true
    mail = "<a@b.example>"  rcpt = "<x@y.example>"  now = 1000 (greylisting clock)
                            routes = ["esmtp:y.example x@y.example"]  discard = true
    rset = true
    command = "NOOP"        (in a refused session: 503)
    route = "<x@y>"         the routing alone (as qmgr asks it): routes / expect
    conf = "smtpc_rcpt_conf"  subject = "x@y"   text = "..." | none = true | failed = true
                            options = { flags_off = ["pipelining"] }   (smtps_session_conf:
                            and smtpc_session_conf: parsed, the options they set; a bad
                            value is failed = true). smtpc_session_conf: is looked up in
                            qmgr's config_map, the others in the access map.

A ``[[case]]`` table is a whole session in one line — connect (``client``, default the
top-level one), optional ``auth``, ``mail``, ``rcpt`` with ``expect`` for the RCPT: the
open-relay battery is written that way.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meta1.config import load_text
from meta1.maps.base import NOT_FOUND, LookupRequest, MapResult, Status, found
from meta1.policy import checks
from meta1.policy.access import ResolveStatus, smtpc_rcpt_conf
from meta1.policy.dnsbl import AnswerStatus, DnsblAnswer, dnsbl_verdict, query_name
from meta1.policy.greylist import MemoryStore, check as grey_check, triplet
from meta1.policy.limits import INCOMING, admit_connection
from meta1.policy.plan import Plan
from meta1.policy.route import route_steps
from meta1.policy.session import SessionChecks
from meta1.policy.sessionconf import session_conf_steps, smtpc_session_conf_steps
from meta1.policy.settings import PolicySettings
from meta1.qmgr.admission import Admission, ConnectionCounts
from meta1.qmgr.limits import LimitsLookup
from meta1.smtp.address import AddressError, parse_forward_path, parse_reverse_path
from meta1.smtp.replies import Reply

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "policy"


#: The ``conf`` steps: each tag's lookup, and the map of the settings it is read from
#: (``smtpc_session_conf:`` is qmgr's, D-POL-28).
CONF_LOOKUPS = {"smtps_session_conf": (session_conf_steps, "access_map"),
                "smtpc_session_conf": (smtpc_session_conf_steps, "config_map"),
                "smtpc_rcpt_conf": (smtpc_rcpt_conf, "access_map")}


class ScenarioFailure(AssertionError):
    pass


def _map_value(value: Any) -> MapResult:
    if isinstance(value, str):
        return found(value)
    if "repeat" in value:
        return found(value["repeat"] * int(value["times"]))
    return MapResult(Status[value["status"]], value.get("value", ""), value.get("reason", ""))


@dataclass
class Maps:
    """The scenario's maps, answering lookups and recording them."""

    tables: dict[str, dict[str, MapResult]]
    sequences: dict[str, list[str]]
    asked: list[str] = field(default_factory=list)

    def lookup(self, request: LookupRequest) -> MapResult:
        self.asked.append(f"{request.map} {request.key}")
        return self._answer(request.map, request.key)

    def _answer(self, name: str, key: str) -> MapResult:
        if name in self.sequences:
            for member in self.sequences[name]:
                result = self._answer(member, key)
                if result.status is not Status.NOTFOUND:
                    return result
            return NOT_FOUND
        return self.tables.get(name, {}).get(key, NOT_FOUND)

    def run(self, plan: Plan, on_done=None):
        """Run ``plan`` to its end (also a map driver's ``run``: done within the call)."""
        while (request := plan.next_lookup()) is not None:
            plan.lookup_result(self.lookup(request))
        return plan.result if on_done is None else True


def matches(reply: Reply | None, expect: str) -> bool:
    """Does ``reply`` (None: the positive default) match ``"CODE [STATUS] [text]"``?"""
    code_text, _, rest = expect.partition(" ")
    if reply is None:
        return code_text in ("220", "250")
    if int(code_text) != reply.code:
        return False
    status, _, text = rest.partition(" ")
    if status and "." in status:
        if status != reply.status:
            return False
    else:
        text = rest
    return text in " ".join(reply.lines)


def _describe(reply: Reply | None) -> str:
    return "(default positive reply)" if reply is None else reply.encode().decode().strip()


class Scenario:
    def __init__(self, path: Path):
        self.path = path
        self.data = tomllib.loads(path.read_text("utf-8"))
        self.config = load_text(self.data.get("config", ""), path.name)
        self.hostname = self.config.hostname or "mx.ours.test"
        self.settings = PolicySettings.from_config(self.config, self.hostname)
        self.maps = Maps({name: {k: _map_value(v) for k, v in entries.items()}
                          for name, entries in self.data.get("maps", {}).items()},
                         self.data.get("sequences", {}))
        self.grey = MemoryStore()
        self.session: SessionChecks | None = None
        self.now = 0.0
        self.admission = Admission(LimitsLookup(self.maps, self.settings.config_map, INCOMING, clock=self._clock),
                                   ConnectionCounts(), self._clock, self.hostname)

    def _clock(self) -> float:
        return self.now

    @property
    def title(self) -> str:
        return self.data.get("title", self.path.stem)

    def fail(self, where: str, message: str) -> None:
        raise ScenarioFailure(f"{self.path.name}: {where}: {message}")

    def run(self) -> int:
        """Play every step and case; the number of checks made."""
        count = 0
        for n, step in enumerate(self.data.get("step", []), 1):
            count += self.play(f"step {n}", step)
        for n, case in enumerate(self.data.get("case", []), 1):
            self.session = None
            where = f"case {n} ({case.get('rcpt', case.get('mail', ''))})"
            self.play(where, {"connect": case.get("client", self.data.get("client", "192.0.2.7")),
                              "expect": "220"})
            if case.get("auth"):
                self.play(where, {"auth": True})
            if "mail" in case:
                self.play(where, {"mail": case["mail"], **({} if "rcpt" in case else {"expect": case["expect"]})})
            if "rcpt" in case:
                self.play(where, {k: v for k, v in case.items() if k not in ("client", "auth", "mail")})
            count += 1
        return count

    def play(self, where: str, step: dict) -> int:
        self.maps.asked = []
        reply, extra = self._do(where, step)
        if "expect" in step and not matches(reply, step["expect"]):
            self.fail(where, f"expected {step['expect']!r}, got {_describe(reply)}")
        if "lookups" in step and self.maps.asked != step["lookups"]:
            self.fail(where, f"lookups {self.maps.asked} != {step['lookups']}")
        for key, value in extra.items():
            if key in step and step[key] != value:
                self.fail(where, f"{key}: expected {step[key]!r}, got {value!r}")
        return 1

    def _do(self, where: str, step: dict) -> tuple[Reply | None, dict]:
        s = self.settings
        if "route" in step:
            mailbox = parse_forward_path(step["route"], smtputf8=True).mailbox
            resolution = self.maps.run(Plan(route_steps(s.routing, mailbox.local_part, mailbox.domain)))
            return resolution.reply, {"routes": [str(r) for r in resolution.routes]}
        if "conf" in step:
            steps, where = CONF_LOOKUPS[step["conf"]]
            result = self.maps.run(Plan(steps(getattr(s, where), step["subject"])))
            conf = getattr(result, "conf", None)      # *_session_conf: parsed (D-POL-26, D-POL-28)
            options = {} if conf is None else {key: list(value) if isinstance(value, tuple) else value
                                               for key, value in asdict(conf).items() if value not in (None, ())}
            return None, {"text": result.text, "none": result.text is None and not result.failed,
                          "failed": result.failed, "options": options}
        if "end" in step:
            self.admission.ended(self.path.name, step["end"])
            return None, {}
        if "connect" in step:
            client = step["connect"]
            if "session" in step:
                self.now = float(step.get("now", self.now))
                decided: list[Reply | None] = []
                self.admission.admit(self.path.name, step["session"], client, decided.append)
                if decided[0] is not None:
                    return decided[0], {}
            elif "open" in step or "recent" in step:
                limits = self.maps.run(checks.limits_plan(s, client, INCOMING))
                refusal = admit_connection(limits, client, open_now=step.get("open", 0),
                                           recent=step.get("recent", 0), hostname=self.hostname)
                if refusal is not None:
                    return refusal, {}
            name = step.get("name", "")
            resolve = ResolveStatus(step.get("resolve", "ok" if name else "fail"))
            self.session = SessionChecks(client_addr=client, hostname=self.hostname,
                                         delay_checks=s.delay_checks, greylisting=s.greylisting is not None)
            check = self.maps.run(checks.connect_plan(s, client, name, resolve))
            answers, queries = {}, []
            if checks.dnsbl_needed(s, check):
                for dnsbl in s.dnsbl:
                    queries.append(query_name(client, dnsbl.domain))
                    answers[dnsbl.name] = _dnsbl_answer(step.get("dnsbl", {}).get(dnsbl.name, "nxdomain"))
            verdict = dnsbl_verdict(s.dnsbl, answers)
            return self.session.connect(check, verdict, client_name=name), {"dnsbl_queries": queries}
        session = self._session(where)
        if ("auth" in step or "tls" in step) and session.refused:
            return session.command(), {}
        if "auth" in step or "tls" in step:
            session.grant(auth=step.get("auth", False), tls=step.get("tls", False))
            return None, {}
        if "command" in step:
            return (session.command() if session.refused else None), {}
        if "rset" in step:
            session.end()
            return None, {}
        if "mail" in step:
            try:
                path = parse_reverse_path(step["mail"], smtputf8=True)
            except AddressError as error:
                return error.reply, {}
            if session.refused:
                return session.command(), {}
            check = self.maps.run(checks.mail_plan(s, path.address))
            return session.mail(path.address, check), {}
        if "rcpt" in step:
            try:
                mailbox = parse_forward_path(step["rcpt"], smtputf8=True).mailbox
            except AddressError as error:
                return error.reply, {}
            if session.refused:
                return session.command(), {}
            result = self.maps.run(checks.rcpt_plan(s, mailbox, session.client_addr, session.grants))
            verdict = session.rcpt(result)
            if verdict.greylist:
                assert s.greylisting is not None
                key = triplet(session.client_addr, session.sender, result.address, s.greylisting)
                verdict = verdict.with_greylisting(grey_check(self.grey, key, int(step.get("now", 0)), s.greylisting))
            return verdict.reply, {"routes": [str(r) for r in verdict.routes], "discard": verdict.discard}
        raise ScenarioFailure(f"{self.path.name}: {where}: unknown step {sorted(step)}")

    def _session(self, where: str) -> SessionChecks:
        if self.session is None:
            self.fail(where, "no connect step before it")
        return self.session


def _dnsbl_answer(value: Any) -> DnsblAnswer:
    if value == "nxdomain":
        return DnsblAnswer(AnswerStatus.NOT_LISTED)
    if value == "timeout":
        return DnsblAnswer(AnswerStatus.FAILED, detail="timeout")
    return DnsblAnswer(AnswerStatus.ADDRESSES, tuple(value))


def scenario_files() -> list[Path]:
    return sorted(SCENARIOS.glob("*.toml"))
