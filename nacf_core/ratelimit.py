"""Per-client rate limiting: token leases over the store's shared token buckets.

The token buckets live in the store so that replicas share them (PostgreSQL). Taking
one token per request from there costs a write transaction per request, and with
PostgreSQL every replica's requests of one API key queue on that bucket's row lock.
So a process takes a *lease* of several tokens in one transaction and hands them out
locally (the scheme of leased or batched quota in distributed rate limiters):

- the lease size is ``min(max_lease, burst / 10)``, at least 1, so the tokens a process
  holds stay a small part of the bucket (with a bucket under 20 tokens, one token at a
  time: exactly the shared bucket);
- tokens are taken from the shared bucket *before* they are handed out, so all
  replicas together never admit more than the bucket gave; what a lease changes is
  *when* a token is spent: within ``hold_s`` of being taken;
- a lease is held at most ``hold_s``; its unused tokens go back to the bucket with the
  process's next lease for that client (a process that stops or forgets the client,
  beyond ``max_clients``, loses at most one lease's leftovers, which the bucket refills
  in at most ``hold_s``). A ``now`` before the lease was taken (the wall clock stepped
  back) ends it too: its tokens are not handed out until the clock catches up.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Callable

from nacf_core.errors import OutcomeUnknown

#: ``take(client_id, rate_per_s, burst, want, give_back, now) -> tokens taken``
TakeTokens = Callable[[str, float, float, int, float, float], int]


def lease_size(burst: float, max_lease: int) -> int:
    """Tokens one lease takes: a tenth of the bucket, at most ``max_lease``; at least 1."""
    return max(1, min(int(max_lease), int(math.floor(burst / 10.0))))


class _Lease:
    __slots__ = ("lock", "left", "since", "until")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.left = 0
        self.since = self.until = -math.inf


class TokenLeases:
    """Admit requests per client from leases on the shared buckets (thread-safe).

    Parameters
    ----------
    take : callable
        The store's ``take_tokens`` (or any function with its signature).
    rate_per_s, burst : float
        The bucket of every client.
    max_lease : int
        Most tokens a lease takes (1: a store transaction per request).
    hold_s : float
        Longest time a lease's tokens are handed out; leftovers then go back.
    max_clients : int
        Clients whose leases are remembered (least recently used forgotten first).
    """

    def __init__(self, take: TakeTokens, rate_per_s: float, burst: float, *,
                 max_lease: int = 32, hold_s: float = 0.5, max_clients: int = 4096) -> None:
        if not (isinstance(max_lease, int) and not isinstance(max_lease, bool)
                and max_lease >= 1):
            raise ValueError(f"'max_lease' must be an integer >= 1, got {max_lease!r}.")
        if not (math.isfinite(hold_s) and hold_s > 0):
            raise ValueError(f"'hold_s' must be a finite number > 0, got {hold_s!r}.")
        self._take = take
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.hold_s = float(hold_s)
        self.size = lease_size(self.burst, max_lease)
        self._max_clients = int(max_clients)
        self._leases: OrderedDict[str, _Lease] = OrderedDict()
        self._lock = threading.Lock()

    def _lease(self, client_id: str) -> _Lease:
        with self._lock:
            e = self._leases.get(client_id)
            if e is None:
                e = self._leases[client_id] = _Lease()
                if len(self._leases) > self._max_clients:
                    self._leases.popitem(last=False)
            else:
                self._leases.move_to_end(client_id)
            return e

    def take(self, client_id: str, now: float) -> bool:
        """One token for ``client_id`` at time ``now`` (seconds): ``True`` if admitted.
        Store errors propagate; the lease's leftovers are kept for the next try, unless
        the store could not tell whether the transaction giving them back was applied
        (``OutcomeUnknown``): then they count as given back, never twice."""
        e = self._lease(client_id)
        with e.lock:
            if e.left >= 1 and e.since <= now < e.until:
                e.left -= 1
                return True
            back = e.left  # an expired lease's leftovers (0 after a used-up one)
            try:
                got = self._take(client_id, self.rate_per_s, self.burst, self.size,
                                 float(back), now)
            except OutcomeUnknown:
                e.left = 0  # perhaps given back already: a lost token, never a double one
                raise
            e.left = 0
            if got < 1:
                return False
            e.left, e.since, e.until = got - 1, now, now + self.hold_s
            return True

    def held(self, client_id: str) -> int:
        """Tokens this process holds for ``client_id`` (expired leases included)."""
        with self._lock:
            e = self._leases.get(client_id)
        return 0 if e is None else e.left
