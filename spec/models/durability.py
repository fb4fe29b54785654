"""Durability: no acknowledged message is lost, across crashes and power cuts.

The pieces (DESIGN.md "Message life", spec/receive-path.md, spec/delivery-path.md):
a client, smtps, qmgr, smtpc, a receiving peer and the disk. A message's content is
written by smtps into the page cache; qmgr appends its envelope to IBDB (page cache) and
one flush — ``syncfs`` (D-RCV-6) — makes both durable; only then does the client get its
250. qmgr hands queued messages to smtpc, the peer takes one (250), smtpc reports, qmgr
writes the "done" record, and the next flush makes it durable.

A *crash* is a power cut: every process restarts, the page cache is lost (what was not
flushed is gone), connections are cut (a client waiting for its 250 sees nothing, W1);
qmgr then replays IBDB: an envelope without a durable "done" whose content is durable is
queued again; one whose content is not (an interrupted commit, never acknowledged) is
dropped. At most ``CRASHES`` crashes happen.

Invariants
    * acknowledged-not-lost — a message the client got 250 for has reached the peer, or
      qmgr or smtpc still has it, or its envelope and content are durable (so replay
      queues it);
    * duplicates-bounded — the peer has each message at most once more per crash
      (reliability §0: duplicates only in the windows W1-W3, one extra copy per crash).
Goal
    * every-acked-delivered — from any state, the system can still reach one where every
      acknowledged message has reached the peer (nothing is stuck).

Variants the checker must catch (tests/test_models.py)
    * ``ack-before-flush`` — the 250 is sent when the envelope is written, before the
      flush: a crash right after loses an acknowledged message;
    * ``envelope-only-flush`` — the flush syncs IBDB but not the content: after a crash
      the envelope names content that is gone.
"""

from __future__ import annotations

from typing import NamedTuple

MESSAGES = 2
CRASHES = 2

# disk: what is on the platter for a message's content, envelope and "done" record
NONE, VOLATILE, DURABLE = "none", "volatile", "durable"


class Message(NamedTuple):
    client: str = "idle"      # idle | waiting (DATA sent) | acked | cut (no 250 seen)
    content: str = NONE
    envelope: str = NONE
    done: str = NONE
    queued: bool = False      # in qmgr's memory, to be delivered
    at_smtpc: bool = False    # smtpc has it from qmgr, not yet at the peer
    peer_took: bool = False   # the peer said 250; smtpc has not reported yet
    peer: int = 0             # copies the peer has


class State(NamedTuple):
    messages: tuple[Message, ...]
    crashes: int = 0


def _set(state: State, index: int, **changes) -> State:
    messages = list(state.messages)
    messages[index] = messages[index]._replace(**changes)
    return state._replace(messages=tuple(messages))


def _persist(value: str) -> str:
    return DURABLE if value == VOLATILE else value


class Durability:
    name = "durability"
    description = " ".join(__doc__.split("\n\n")[0].split())   # the first paragraph: the promise

    def __init__(self, ack_needs_flush: bool = True, flush_content: bool = True):
        self.ack_needs_flush = ack_needs_flush
        self.flush_content = flush_content
        self.invariants = [("acknowledged-not-lost", self.acknowledged_not_lost),
                           ("duplicates-bounded", self.duplicates_bounded)]
        self.goals = [("every-acked-delivered", self.every_acked_delivered)]

    def initial(self):
        return [State(tuple(Message() for _ in range(MESSAGES)))]

    def actions(self, state: State):
        for i, m in enumerate(state.messages):
            if m.client == "idle":          # DATA: content into the page cache, commit asked
                yield f"m{i}: client sends, smtps writes content", _set(state, i, client="waiting", content=VOLATILE)
            if m.client == "waiting" and m.content != NONE and m.envelope == NONE:
                yield f"m{i}: qmgr appends the envelope", _set(state, i, envelope=VOLATILE)
            durable = m.envelope == DURABLE and (m.content == DURABLE or not self.flush_content)
            if m.client == "waiting" and (durable if self.ack_needs_flush else m.envelope != NONE):
                yield f"m{i}: 250 to the client", _set(state, i, client="acked", queued=True)
            if m.queued and not m.at_smtpc and not m.peer_took and m.done == NONE:
                yield f"m{i}: qmgr hands it to smtpc", _set(state, i, at_smtpc=True)
            if m.at_smtpc:
                yield f"m{i}: the peer takes it (250)", _set(state, i, at_smtpc=False, peer_took=True,
                                                            peer=m.peer + 1)
            if m.peer_took:
                yield f"m{i}: smtpc reports, qmgr writes done", _set(state, i, peer_took=False, queued=False,
                                                                     done=VOLATILE)
        if any(VOLATILE in (m.content, m.envelope, m.done) for m in state.messages):
            flushed = tuple(m._replace(content=_persist(m.content) if self.flush_content else m.content,
                                       envelope=_persist(m.envelope), done=_persist(m.done))
                            for m in state.messages)
            yield "flush (syncfs)", state._replace(messages=flushed)
        if state.crashes < CRASHES:
            yield "power cut, restart, replay", self._crash(state)

    def _crash(self, state: State) -> State:
        after = []
        for m in state.messages:
            content = m.content if m.content == DURABLE else NONE
            envelope = m.envelope if m.envelope == DURABLE else NONE
            done = m.done if m.done == DURABLE else NONE
            client = "cut" if m.client == "waiting" else m.client
            queued = envelope == DURABLE and done == NONE and content == DURABLE   # replay
            after.append(Message(client, content, envelope, done, queued, False, False, m.peer))
        return State(tuple(after), state.crashes + 1)

    @staticmethod
    def acknowledged_not_lost(state: State) -> bool:
        """Lost: acknowledged, not at the peer, and nobody has it any more — not queued in
        qmgr, not at smtpc, and no durable envelope with durable content to replay."""
        return all(m.peer > 0 or m.queued or m.at_smtpc or m.peer_took
                   or (m.envelope == DURABLE and m.content == DURABLE)
                   for m in state.messages if m.client == "acked")

    @staticmethod
    def duplicates_bounded(state: State) -> bool:
        return all(m.peer <= 1 + state.crashes for m in state.messages)

    @staticmethod
    def every_acked_delivered(state: State) -> bool:
        return all(m.peer > 0 for m in state.messages if m.client == "acked")


MODEL = Durability()
MODEL.variants = {
    "ack-before-flush": Durability(ack_needs_flush=False),
    "envelope-only-flush": Durability(flush_content=False),
}
