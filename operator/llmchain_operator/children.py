"""An app's children on the cluster: applied by server-side apply under one field manager,
never over an object another owner holds, the build Job created once, the replica count handed
over to an autoscaler, and the children no longer wanted pruned.

`Children` remembers per app uid what it applied (each child's uid, the last desired set) and
whether replicas were handed over, and per child the resourceVersion of its last write (a watch
event at that version is the echo of that write); reconcile.py decides what to apply and reports
the outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from llmchain_operator.builders.common import MANAGED_BY
from llmchain_operator.kinds import BY_NAME, CHILDREN, kind_of
from llmchain_operator.kube import ApiError, Kube
from llmchain_operator.ownership import controlled_by, holder

Manifest = dict[str, Any]
Key = tuple[str, str]
Written = tuple[str, str, str]  # kind, namespace, name
HANDOVER_MANAGER_SUFFIX = "-handover"


class RetryLater(Exception):
    """The API server refused for a reason that may pass (conflict, throttling, 5xx): try
    again after `delay` seconds."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class Held(Exception):
    """Another owner holds the object a child would be applied over (the message says who)."""


class _Replaced(Exception):
    """A child applied before is gone, or another object took its name, since."""


def key_of(obj: Manifest) -> Key:
    return obj["kind"], obj["metadata"]["name"]


def owns_replicas(deployment: Manifest, manager: str) -> bool:
    for entry in deployment["metadata"].get("managedFields", []):
        fields = entry.get("fieldsV1", {}).get("f:spec", {})
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Apply"
            and "f:replicas" in fields
        ):
            return True
    return False


@dataclass
class Children:
    """Applies and prunes the children of each app (serialised per app by the caller)."""

    kube: Kube
    log: logging.Logger
    _applied: dict[str, set[Key]] = field(default_factory=dict)
    """Per app uid: the desired set of its last prune (prune is skipped while it stays)."""
    _handed_over: set[str] = field(default_factory=set)
    _owned: dict[str, dict[Key, str]] = field(default_factory=dict)
    """Per app uid: the children it applied, each with its uid. A child is checked for another
    owner (a GET) only before this app first applies it; after that each apply names the
    child's uid, which the API server checks, so an object deleted and created again by
    someone else since is never applied over."""
    _written: dict[Written, str] = field(default_factory=dict)
    """Per child: the resourceVersion this operator's last write of it returned."""

    def echo(self, kind: str, obj: Manifest) -> bool:
        """Whether a watch event's object (metadata suffice) is just as this operator's last
        write of it left it: then the event reports nothing a reconcile would act on."""
        meta = obj["metadata"]
        version = self._written.get((kind, meta.get("namespace", ""), meta["name"]))
        return version is not None and version == meta.get("resourceVersion")

    def deleted(self, kind: str, obj: Manifest) -> None:
        """A child is gone: forget its last write."""
        meta = obj["metadata"]
        self._written.pop((kind, meta.get("namespace", ""), meta["name"]), None)

    def distrust(self, uid: str, namespace: str) -> None:
        """A reconcile of app `uid` failed after some of its writes: forget its children's last
        writes, so the events waiting on them reconcile (and retry) instead of passing as
        echoes."""
        for kind, name in self._owned.get(uid, {}):
            self._written.pop((kind, namespace, name), None)

    def _wrote(self, result: Manifest) -> Manifest:
        meta = result.get("metadata", {})
        kind = result.get("kind", "")
        if "resourceVersion" in meta and kind in BY_NAME and BY_NAME[kind].watched:
            self._written[(kind, meta.get("namespace", ""), meta["name"])] = str(
                meta["resourceVersion"]
            )
        return result

    def forget(self, uid: str, namespace: str = "") -> None:
        """Drop what is remembered about a deleted app."""
        self.distrust(uid, namespace)
        self._applied.pop(uid, None)
        self._handed_over.discard(uid)
        self._owned.pop(uid, None)

    def want(self, uid: str, keys: set[Key]) -> None:
        """The children the app wants now: one no longer wanted is checked for another owner
        again should it be wanted again."""
        owned = self._owned.setdefault(uid, {})
        for gone in set(owned) - keys:
            del owned[gone]

    async def apply(self, obj: Manifest, body: Manifest) -> Manifest:
        """Apply a child of the app `body`: Held when another owner holds its name; ApiError
        when the API server refuses it; RetryLater when the refusal may pass."""
        return await self._apply_child(
            obj, body, self._owned.setdefault(body["metadata"]["uid"], {})
        )

    async def _check_holder(self, obj: Manifest, body: Manifest) -> None:
        """Raise Held when an object of the child's name exists that this app may not apply
        over (one GET)."""
        meta = obj["metadata"]
        current = await self.kube.get(obj["kind"], meta["namespace"], meta["name"])
        who = None if current is None else holder(current, body)
        if who is not None:
            raise Held(who)

    async def _apply_child(
        self, obj: Manifest, body: Manifest, owned: dict[tuple[str, str], str]
    ) -> Manifest:
        """Apply a child, never over an object another owner holds (Held). One this app
        applied before is applied with its uid; when that object is gone or was replaced since,
        the name is checked afresh."""
        key = key_of(obj)
        if obj["kind"] == "Job":
            return await self._job_once(obj, body, owned)
        if key in owned:
            try:
                return await self._apply(obj, uid=owned[key])
            except _Replaced:
                del owned[key]
        await self._check_holder(obj, body)
        result = await self._apply(obj)
        owned[key] = str(result["metadata"]["uid"])
        return result

    async def _job_once(
        self, obj: Manifest, body: Manifest, owned: dict[tuple[str, str], str]
    ) -> Manifest:
        """A build Job is created once, then only read. Its pod template is immutable, so
        applying a changed one (an operator upgrade's new image or flag, new resources) would be
        refused for as long as the Job lives; the Job of another model digest has another name,
        so a new model still gets a new build. One GET, as an apply would cost."""
        meta = obj["metadata"]
        current = await self.kube.get("Job", meta["namespace"], meta["name"])
        if current is not None:
            who = holder(current, body)
            if who is not None:
                raise Held(who)
            if controlled_by(current, body["metadata"]["uid"]):
                owned[key_of(obj)] = str(current["metadata"]["uid"])
                return current
        result = await self._apply(obj)  # created, or an orphan of this app's name adopted
        owned[key_of(obj)] = str(result["metadata"]["uid"])
        return result

    async def hand_replicas_over_once(
        self, deployment: Manifest, uid: str, autoscaled: bool
    ) -> None:
        """Hand `replicas` over when autoscaling is on; checked once per app and switch-on, not
        on every reconcile (the check costs a GET)."""
        if not autoscaled:
            self._handed_over.discard(uid)
        elif uid not in self._handed_over:
            await self._hand_replicas_over(deployment)
            self._handed_over.add(uid)

    async def _hand_replicas_over(self, deployment: Manifest) -> None:
        """Switching autoscaling on: keep the replica count when we stop applying `replicas`.

        A field that its only manager stops applying is removed and falls back to its default
        (1). So first a second manager applies the current count, co-owning the field; then the
        main apply drops it, and the autoscaler's updates take it over from there.
        """
        meta = deployment["metadata"]
        current = await self.kube.get("Deployment", meta["namespace"], meta["name"])
        app_uid = meta["ownerReferences"][0]["uid"]
        if (
            current is None
            or not controlled_by(current, app_uid)
            or not owns_replicas(current, self.kube.field_manager)
        ):
            return
        replicas = current["spec"].get("replicas", 1)
        await self._apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": {"replicas": replicas},
            },
            self.kube.field_manager + HANDOVER_MANAGER_SUFFIX,
        )
        self.log.info(
            "Handed replicas (%s) of Deployment %s/%s over to the autoscaler",
            replicas,
            meta["namespace"],
            meta["name"],
        )

    async def _apply(
        self, obj: Manifest, field_manager: str | None = None, uid: str | None = None
    ) -> Manifest:
        """Apply; refusals that may pass (conflict, throttling, 5xx, an optional API gone)
        become RetryLater. With `uid`, only over the object of that uid (the API server checks
        it): _Replaced when there is none (409) or the object there has another uid (422)."""
        if uid is not None:
            obj = {**obj, "metadata": {**obj["metadata"], "uid": uid}}
        try:
            return self._wrote(await self.kube.apply(obj, field_manager=field_manager))
        except ApiError as error:
            if uid is not None and (
                error.status == 409 or (error.status == 422 and "metadata.uid" in error.message)
            ):
                raise _Replaced from None
            if error.status == 404 and kind_of(obj["kind"]).optional:
                self.kube.forget_groups()  # its CRD went away since the last discovery
                raise RetryLater(f"{obj['kind']} is no longer served") from None
            if error.status in (409, 429) or error.status >= 500:
                raise RetryLater(str(error)) from None
            raise

    async def prune(self, body: Manifest, desired: set[tuple[str, str]]) -> None:
        """Delete children this app owns that are no longer desired (autoscaler switched off,
        memory removed, a build Job of an older model digest, ...)."""
        meta = body["metadata"]
        uid = meta["uid"]
        if self._applied.get(uid) == desired:
            return
        groups = await self.kube.available_groups()
        selector = (
            f"app.kubernetes.io/instance={meta['name']},app.kubernetes.io/managed-by={MANAGED_BY}"
        )
        for row in CHILDREN:
            if row.optional and row.group not in groups:
                continue
            kind = row.kind
            for obj in await self.kube.list(kind, meta["namespace"], selector):
                owners = obj["metadata"].get("ownerReferences", [])
                if any(o.get("uid") == uid for o in owners) and key_of(obj) not in desired:
                    await self.kube.delete(kind, meta["namespace"], obj["metadata"]["name"])
                    self.deleted(kind, obj)
                    self.log.info(
                        "Deleted %s %s/%s (no longer wanted)",
                        kind,
                        meta["namespace"],
                        obj["metadata"]["name"],
                    )
        self._applied[uid] = desired
