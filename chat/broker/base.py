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
    """Messages were stored in these users' inboxes: their devices read them from the
    store (from where each has got to)."""

    user_ids: tuple[int, ...]


@attrs.frozen
class GroupWake:
    """Messages were stored in these groups' logs: every device of a member (on any
    node) reads them from the store. Sent to every node, because the sender's node
    does not look up who the members are or where they are (a group of 5,000 members
    costs one notice per node, not 5,000 look-ups)."""

    group_ids: tuple[int, ...]


@attrs.frozen
class Push:
    """A transient event for each logged-in device of a user (not kept for devices that
    are not), as a typed value: each connection encodes it with its own codec.

    ``skip``: the holder of one connection that must not get it (the sending
    connection, for the copy of a message to the sender's other devices; the
    connection that logged out everywhere)."""

    user_id: int
    event: Event
    skip: str = ""


@attrs.frozen
class Resync:
    """Notices may have been missed: every local user should re-read the store."""


@attrs.frozen
class Evict:
    """This connection lost its device's presence to another login of the same device
    (its lease lapsed and someone else claimed it): close it, so a device is never
    served twice. Only ever handed to the node's own handler."""

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

    ``recreated``: the holders (connections) whose claim had vanished and was made
    anew. Someone may have logged in as that device and out again meanwhile and been
    delivered what the session here had queued: such a session must forget what it
    queued and re-read the store from the device's stored positions."""

    recreated: frozenset[str] = frozenset()


@attrs.frozen
class PresenceChange:
    """This user's ``online`` changed: its first device claimed (``True``), or its last
    device released, or found gone with a node that died (``False``); a device that
    comes or goes while another device of the user stays online changes nothing. Only
    ever handed to the node's own handler, and for each change to one node only, so
    each change is announced once.

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


Notice = Wake | GroupWake | Push | Resync | Evict | Pause | Resume | PresenceChange | PresencePush
NoticeHandler = Callable[[Notice], None]


MAX_DEVICES_ONLINE = 10
"""Devices of one user logged in at once, cluster-wide (protocol 1.2)."""


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

    async def claim(self, user_id: int, device: str, holder: str) -> bool:
        """Mark this device of the user online, held by ``holder`` (one connection);
        False when another holder has that device already, or the user has
        ``MAX_DEVICES_ONLINE`` devices online. Claiming again with the same holder
        succeeds (a retried command must not refuse itself)."""

    async def release(self, user_id: int, device: str, holder: str) -> None:
        """Mark the device offline, if ``holder`` still holds it."""

    async def locate(self, user_ids: Sequence[int]) -> dict[int, frozenset[str]]:
        """For each of these users that is online (has a device online): the node ids
        holding its devices."""

    async def devices(self, user_id: int) -> dict[str, str]:
        """The user's devices online now: device -> the node id holding it."""

    async def route(
        self,
        wake: Sequence[int],
        push: Sequence[Push],
        presence: Sequence[PresencePush] = (),
        groups: Sequence[int] = (),
    ) -> None:
        """Wake these users and hand these events to the *other* nodes that hold a device
        of each user, and wake these groups on every other node, with one presence
        look-up and one message per node for the whole batch (so one node's notices
        arrive in the order they were routed). This node's own sessions are the
        router's to reach, never routed back. Users held by nobody are skipped: their
        messages wait in the store (and pushed events are not kept)."""

    async def aclose(self) -> None:
        """Release what the broker holds (connections, threads)."""
