"""Session options per peer: the ``smtps_session_conf:`` and ``smtpc_session_conf:``
entries, read, checked and applied.

Responsibilities
    An entry ``smtps_session_conf:<client> <text>`` of the access map (README 3.10.1,
    reference §2.6) gives the sessions of that client their own smtps options, an entry
    ``smtpc_session_conf:<server> <text>`` of qmgr's configuration map the connections to
    that server address their own smtpc options. ``<text>`` is configuration text in
    meta1's configuration language, e.g.
    ``flags = { dont_pipelining }; max_rcpts_per_transaction = 10; IO_timeout = 30s;``.
    This module

    * looks the smtps entry up at connect (:func:`session_conf_steps`: the client's IP keys,
      then its validated name's domain keys — :func:`meta1.policy.access.smtps_session_conf`)
      and parses the value into a :class:`~meta1.ipc.records.SessionConf`, a lookup plan
      that smar runs over its maps like every other check;
    * looks the smtpc entry up for a server address (:func:`smtpc_session_conf_steps`: the
      server's IP keys) and parses it into a :class:`SmtpcSessionConf` — the plan qmgr
      runs with the address's other entries (:func:`meta1.policy.limits.limits_steps`);
    * says what each text may set: the options of
      :data:`meta1.config.schema.SMTPS_SESSION_CONF` (those that shape one SMTP dialogue,
      D-POL-26) and of :data:`meta1.config.schema.SMTPC_SESSION_CONF` (smtpc's reply
      timers, D-POL-28), checked by the same loader and types as the configuration file
      (:func:`meta1.config.load_section`), with the same positioned messages;
    * lays a parsed smtps entry over an smtps section's values (:func:`session_values`),
      from which smtps makes the session's :class:`~meta1.smtps.session.Settings`.

Strategies
    * Parsed where the map is read — smtps entries in smar, smtpc entries in qmgr: a bad
      value is found and logged next to the map's other failures, naming the map and the
      key, and the daemon that talks SMTP gets a checked, typed result (in the connect
      verdict; in each delivery's ``Target``) — no parser on its path, no record more
      (D-POL-26, D-POL-28).
    * All or nothing: a value with an unknown or disallowed option, a section, a bad value
      or a syntax error is a failure, and so is a lookup that answers TEMP, TIMEOUT or PERM
      (B33, D-POL-10). The smtps session then gets ``421 4.3.0``, the deliveries to the
      server ``451 4.3.0`` — nothing runs with half of its settings or with the defaults
      its entry meant to change.
    * An entry overrides only what it names: an option it leaves out, and a flag it does
      not name, keep the section's value (``flags = { dont_pipelining }`` does not turn
      8BITMIME off again on a server that offers it).
    * The same text is parsed once: parsing is pure, so results (and the messages of bad
      texts) are kept by text (a few hundred entries at most; a map names networks, not
      every peer). A value is parsed whole, however long (B34).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, TypeVar

from meta1.config import ConfigError, Node, load_section
from meta1.config.schema import SMTPC_SESSION_CONF, SMTPS_SESSION_CONF, SectionSpec
from meta1.ipc.records import SessionConf
from meta1.policy.access import ConfResult, smtpc_session_conf, smtps_session_conf
from meta1.policy.plan import Steps

#: The SessionConf fields that carry an option's value (the rest are the flags).
NUMBER_OPTIONS = tuple(f.name for f in fields(SessionConf) if f.name not in ("flags_on", "flags_off"))
#: How many parsed texts are kept (per kind of entry).
PARSED_CACHE = 256

Parsed = TypeVar("Parsed")


class SessionConfError(ValueError):
    """A value that is no valid session configuration; the message lists every mistake,
    each with its line and column in the value."""


@dataclass(frozen=True)
class SmtpcSessionConf:
    """The smtpc options an ``smtpc_session_conf:`` entry sets for the connections to one
    server address (D-POL-28; the options are ``SMTPC_SESSION_OPTIONS`` of
    :mod:`meta1.config.schema`, fields named by their keys), in seconds. None: the smtpc
    section's own value stands."""

    io_timeout: int | None = None
    final_dot_timeout: int | None = None


@dataclass(frozen=True)
class SessionConfResult(ConfResult):
    """A ``*_session_conf:`` lookup: the entry (``key``, ``text``) and the options it sets
    (``conf``; None: no entry), or ``failure`` (a failed lookup or a bad value), which the
    caller turns into a 4xx, never into "no configuration" (B33)."""

    conf: SessionConf | SmtpcSessionConf | None = None


def session_conf_steps(map_name: str | None, client_addr: str, client_name: str = "") -> Steps[SessionConfResult]:
    """Look up the client's ``smtps_session_conf:`` entry in ``map_name`` and parse it; a
    failure names the map and the key (smar logs it as it is)."""
    found = yield from smtps_session_conf(map_name, client_addr, client_name)
    result = _parsed_entry(found, parse_session_conf)
    return replace(result, failure=f"map {map_name}: {result.failure}") if result.failed else result


def smtpc_session_conf_steps(map_name: str | None, server_addr: str) -> Steps[SessionConfResult]:
    """Look up the server's ``smtpc_session_conf:`` entry in ``map_name`` (qmgr's
    configuration map) and parse it; a failure names the key, as the address's limits do
    (qmgr names the map when it defers the route)."""
    found = yield from smtpc_session_conf(map_name, server_addr)
    return _parsed_entry(found, parse_smtpc_session_conf)


def _parsed_entry(found: ConfResult, parse: Callable[[str], SessionConf | SmtpcSessionConf]) -> SessionConfResult:
    if found.failed:
        return SessionConfResult(failure=found.failure)
    if found.text is None:
        return SessionConfResult()
    try:
        conf = parse(found.text)
    except SessionConfError as error:
        return SessionConfResult(found.key, found.text, failure=f"{found.key}: {error}")
    return SessionConfResult(found.key, found.text, conf=conf)


def parse_session_conf(text: str) -> SessionConf:
    """The smtps options ``text`` sets; :class:`SessionConfError` for anything else."""
    return _checked(_parsed_smtps(text))


def parse_smtpc_session_conf(text: str) -> SmtpcSessionConf:
    """The smtpc options ``text`` sets; :class:`SessionConfError` for anything else."""
    return _checked(_parsed_smtpc(text))


def _checked(parsed: Parsed | str) -> Parsed:
    if isinstance(parsed, str):
        raise SessionConfError(parsed)
    return parsed


def _load(spec: SectionSpec, text: str) -> Node | str:
    """``text`` loaded as the body of section ``spec``, or every mistake in one line."""
    try:
        return load_section(spec, text, "")
    except ConfigError as error:
        return "; ".join(f"{d.position}: {d.message}" for d in error.diagnostics)


@functools.lru_cache(maxsize=PARSED_CACHE)
def _parsed_smtps(text: str) -> SessionConf | str:
    node = _load(SMTPS_SESSION_CONF, text)
    if isinstance(node, str):
        return node
    flags = node.values["flags"] if node.explicit("flags") else {}
    return SessionConf(flags_on=tuple(f for f, on in flags.items() if on),
                       flags_off=tuple(f for f, on in flags.items() if not on),
                       **_explicit(node, NUMBER_OPTIONS))


@functools.lru_cache(maxsize=PARSED_CACHE)
def _parsed_smtpc(text: str) -> SmtpcSessionConf | str:
    node = _load(SMTPC_SESSION_CONF, text)
    if isinstance(node, str):
        return node
    return SmtpcSessionConf(**_explicit(node, tuple(f.name for f in fields(SmtpcSessionConf))))


def _explicit(node: Node, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``keys`` the text sets (an option left out is not there)."""
    return {key: node.values[key] for key in keys if node.explicit(key)}


def session_values(values: Mapping[str, Any], conf: SessionConf) -> dict[str, Any]:
    """An smtps section's option values (by key) with the session's changes laid over."""
    changed = dict(values)
    changed.update((key, getattr(conf, key)) for key in NUMBER_OPTIONS if getattr(conf, key) is not None)
    changed["flags"] = {**values["flags"], **{f: True for f in conf.flags_on}, **{f: False for f in conf.flags_off}}
    return changed


__all__ = ["SessionConfError", "SessionConfResult", "SmtpcSessionConf", "session_conf_steps",
           "smtpc_session_conf_steps", "parse_session_conf", "parse_smtpc_session_conf", "session_values"]
