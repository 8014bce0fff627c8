"""What a node needs from the rest of the cluster: presence, and a way to wake other nodes.

The broker carries no data that matters: every message is in the store before
any notice about it is sent. A notice only says "look in the store now" (a
``Wake``) or carries an event that is never kept (a ``Push`` of
``friend_added``). A node that may have missed notices gets a ``Resync`` and
re-reads the store for every user it holds, so a lost notice delays a message,
never loses it.

Notices for other nodes travel in batches: ``route`` takes every wake-up and
push queued meanwhile, looks up who holds each user in one go and sends each
node one message. A node that holds a user itself gets its notices by direct
call.

Presence is a claim per user, held by one connection (its ``holder`` string,
unique in the cluster) and released by the same holder only, so a late release
from an old connection can never free a newer login. While a node cannot
confirm that its claims still stand (its presence store is out of reach, or
lost its data), it gets ``Pause``: its sessions neither deliver nor act until
``Resume``; a session whose user was claimed elsewhere meanwhile gets ``Evict``.

Presence changes are the broker's to see: a claim, a release, a lease re-created,
and the users of a node that died without a word (found by the survivors). Each
becomes a ``PresenceChange`` for the node's own handler, stamped with a
``version`` that orders the changes of one user across the whole cluster, so
that announcements travelling by different paths can cross and still leave
every friend with the newest state (``PresencePush`` carries the version along).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio

from chat.protocol.messages import Event, PresenceEvent


@attrs.frozen
class Wake:
    """Messages were stored for these users: read them from the store."""

    user_ids: tuple[int, ...]


@attrs.frozen
class Push:
    """A transient event for a user (not kept if the user is gone), as a typed value:
    the user's connection encodes it with its own codec."""

    user_id: int
    event: Event


@attrs.frozen
class Resync:
    """Notices may have been missed: every local user should re-read the store."""


@attrs.frozen
class Evict:
    """This connection lost the user's presence to another login (its lease lapsed and
    someone else claimed the user): close it, so the user is never served twice.
    Only ever handed to the node's own handler."""

    user_id: int
    holder: str


@attrs.frozen
class Pause:
    """This node cannot confirm its users' claims right now (Redis does not answer, or
    may have lost them): its sessions stop delivering and acting until ``Resume``, so
    that a user claimed elsewhere meanwhile is never served twice. Only ever handed to
    the node's own handler."""

    reason: str


@attrs.frozen
class Resume:
    """Every claim this node holds is confirmed again (renewed or re-created); the ones
    lost to another login were evicted first. Only ever handed to the node's own handler.

    ``recreated``: users whose claim had vanished and was made anew. Someone may have
    logged in as them and out again meanwhile and been delivered what their session
    here had queued: such a session must forget what it queued and re-read the store."""

    recreated: frozenset[int] = frozenset()


@attrs.frozen
class PresenceChange:
    """This user's ``online`` changed: claimed (``True``), or released, or found gone
    with a node that died (``False``). Only ever handed to the node's own handler,
    and for each change to one node only, so each change is announced once.

    ``version`` grows with every change of any user in the cluster (the broker hands
    them out atomically with the change itself): of two announcements about one
    user, the one with the higher version is the newer state."""

    user_id: int
    online: bool
    version: int
    at_ms: int = attrs.field(factory=lambda: time.time_ns() // 1_000_000)
    """When this node learned of the change (its clock): friendships made after it do
    not hear of it (the new friend's ``friend_added`` told the presence of then)."""


@attrs.frozen
class PresencePush:
    """A ``presence`` event for these users (the friends of its user) on whichever
    node holds each of them. A node drops one older (``version``) than a push it
    already handled for the same user: announcements from different nodes may cross."""

    user_ids: tuple[int, ...]
    event: PresenceEvent
    version: int


Notice = Wake | Push | Resync | Evict | Pause | Resume | PresenceChange | PresencePush
NoticeHandler = Callable[[Notice], None]


class BrokerUnavailable(Exception):
    """The broker could not be reached; the caller decides what that means."""


class Broker(Protocol):
    node_id: str

    async def run(
        self, handler: NoticeHandler, *, task_status: trio.TaskStatus[None] = ...
    ) -> None:
        """Receive this node's notices (and keep its presence alive) until cancelled.

        ``handler`` is called in the trio thread and must not block.
        ``task_status.started()`` is called once notices can be received.
        """

    async def claim(self, user_id: int, holder: str) -> bool:
        """Mark the user online, held by ``holder``; False when someone holds it already."""

    async def release(self, user_id: int, holder: str) -> None:
        """Mark the user offline, if ``holder`` still holds it."""

    async def locate(self, user_ids: Sequence[int]) -> dict[int, str]:
        """The node id holding each of these users that is online."""

    async def route(
        self, wake: Sequence[int], push: Sequence[Push], presence: Sequence[PresencePush] = ()
    ) -> None:
        """Wake these users and hand these events to whichever node holds each user,
        this one included, with one presence look-up and one message per node for the
        whole batch. Users held by nobody are skipped: their messages wait in the store
        (and presence events are not kept)."""

    async def aclose(self) -> None:
        """Release what the broker holds (connections, threads)."""
