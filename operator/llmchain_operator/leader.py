"""Leader election on a coordination.k8s.io Lease: exactly one operator replica acts.

kopf's peering only freezes peers of equal priority; it does not elect anyone. Here a replica
waits until it holds the Lease before kopf starts at all, renews it while kopf runs, and exits
(to be restarted as a standby) the moment it cannot prove it still holds it.

Expiry is judged as client-go does: by the local monotonic time at which this replica last saw
the Lease record change, never by comparing another machine's timestamps with our clock.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from llmchain_operator import metrics
from llmchain_operator.kube import ApiError, Kube

log = logging.getLogger("llmchain.operator.leader")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElector:
    kube: Kube
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15
    renew_every: float = 5.0
    retry_every: float = 2.0
    _observed: tuple[str, float] = ("", 0.0)  # (record fingerprint, monotonic time seen)
    _lease: dict[str, Any] = field(default_factory=dict)

    async def acquire(self, stop: threading.Event | None = None) -> bool:
        """Return True once this replica holds the Lease, False if `stop` is set first."""
        announced = False
        while not await self._try_acquire_or_renew():
            if stop is not None and stop.is_set():
                return False
            if not announced:
                holder = self._lease.get("spec", {}).get("holderIdentity")
                log.info(
                    "Waiting for the leader lease %s/%s (held by %s)",
                    self.namespace,
                    self.name,
                    holder,
                )
                announced = True
            await asyncio.sleep(self.retry_every)
        metrics.IS_LEADER.set(1)
        log.info("Acquired the leader lease %s/%s as %s", self.namespace, self.name, self.identity)
        return True

    async def keep(self) -> None:
        """Renew until renewal fails for a whole lease period; then return (leadership lost)."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self._try_acquire_or_renew():
                    last_renewed = time.monotonic()
                    continue
                log.error(
                    "Lost the leader lease to %s", self._lease.get("spec", {}).get("holderIdentity")
                )
                break
            except ApiError as error:
                log.warning("Could not renew the leader lease: %s", error)
            if time.monotonic() - last_renewed > self.lease_seconds:
                log.error("Could not renew the leader lease for %ss", self.lease_seconds)
                break
        metrics.IS_LEADER.set(0)

    async def release(self) -> None:
        """On a clean shutdown: give the Lease up so a standby takes over at once."""
        lease = await self.kube.get("Lease", self.namespace, self.name)
        if lease is None or lease.get("spec", {}).get("holderIdentity") != self.identity:
            return
        lease["spec"]["holderIdentity"] = ""
        lease["spec"]["leaseDurationSeconds"] = 1
        try:
            await self.kube.replace(lease)
            log.info("Released the leader lease %s/%s", self.namespace, self.name)
        except ApiError as error:
            log.warning("Could not release the leader lease: %s", error)
        metrics.IS_LEADER.set(0)

    async def _try_acquire_or_renew(self) -> bool:
        lease = await self.kube.get("Lease", self.namespace, self.name)
        if lease is None:
            return await self._write(None)
        self._lease = lease
        spec = lease.get("spec", {})
        fingerprint = f"{spec.get('holderIdentity')}|{spec.get('renewTime')}"
        if fingerprint != self._observed[0]:
            self._observed = (fingerprint, time.monotonic())
        holder = spec.get("holderIdentity")
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = time.monotonic() - self._observed[1] > duration
        if holder and holder != self.identity and not expired:
            return False
        return await self._write(lease)

    async def _write(self, current: dict[str, Any] | None) -> bool:
        now = _now()
        spec = dict((current or {}).get("spec", {}))
        taking_over = spec.get("holderIdentity") != self.identity
        spec.update(
            {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_seconds,
                "renewTime": now,
            }
        )
        if taking_over:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if current else 0
            )
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        try:
            if current is None:
                self._lease = await self.kube.create(body)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self._lease = await self.kube.replace(body)
        except ApiError as error:
            if error.status in (409, 422):  # another replica wrote first
                return False
            raise
        return True
