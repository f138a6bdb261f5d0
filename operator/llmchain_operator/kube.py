"""The one module that talks to the API server.

It wraps the official `kubernetes` client's blocking REST calls in `asyncio.to_thread`, so
kopf's event loop never stalls, and speaks server-side apply (PATCH application/apply-patch+yaml)
under one field manager. Paths are built from the table of kinds the operator handles
(kinds.py), so no discovery round-trip is needed per call; optional API groups are discovered
once per TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import kubernetes
from kubernetes.watch.watch import iter_resp_lines

from llmchain_operator.kinds import OPTIONAL_CRDS, kind_of

Manifest = dict[str, Any]
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
"""Accept header asking for objects' metadata only (what controller-runtime's metadata watches
ask): a watch of children needs their owner, not their specs."""
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
WATCH_SECONDS = 240
"""The API server ends each watch request after this; the watch resumes from where it was."""
log = logging.getLogger("llmchain.operator")


class ApiError(Exception):
    """An API server answer other than success; `status` is the HTTP code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _path(kind: str, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    row = kind_of(kind)
    path = "/api/v1" if row.api_version == "v1" else f"/apis/{row.api_version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{row.plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


@dataclass
class Kube:
    """Async access to the API server for the operator."""

    field_manager: str
    api: kubernetes.client.ApiClient = field(default_factory=kubernetes.client.ApiClient)
    discovery_ttl: float = 60.0
    _groups: tuple[float, frozenset[str]] = (0.0, frozenset())

    @classmethod
    def from_environment(cls, field_manager: str, discovery_ttl: float = 60.0) -> Kube:
        """In-cluster config when running in a pod, else the kubeconfig ($KUBECONFIG)."""
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(field_manager=field_manager, discovery_ttl=discovery_ttl)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        text: bool = False,
        accept: str = "application/json",
    ) -> Any:
        api = self.api
        _, url, headers, serialized, _ = api.param_serialize(
            method,
            path,
            query_params=query or [],
            body=body,
            header_params={
                "Content-Type": content_type,
                "Accept": "*/*" if text else accept,
            },
            auth_settings=["BearerToken"],
        )
        try:
            response = api.call_api(
                method, url, header_params=headers, body=serialized, _request_timeout=60
            )
        except kubernetes.client.ApiException as error:  # transport-level failure
            raise ApiError(error.status or 0, error.reason or "", str(error)) from None
        data = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status < 300:
            message = response.reason or ""
            with contextlib.suppress(TypeError, ValueError):
                message = json.loads(data).get("message", message)
            raise ApiError(response.status, response.reason or "", message)
        if text:
            return data.decode("utf-8", "replace") if data else ""
        return json.loads(data) if data else None

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._call, method, path, **kwargs)

    # -- watching ----------------------------------------------------------------------------
    async def watch(
        self,
        kind: str,
        namespace: str | None,
        selector: str,
        handle: Callable[[str, Manifest], None],
    ) -> None:
        """Until cancelled: call `handle(type, metadata-only object)` on the event loop for
        every change (ADDED, MODIFIED, DELETED) of `kind` objects matching the label `selector`,
        filtered by the API server (only they cross the wire, and only their metadata). Objects
        that exist when the watch starts are not reported. Resumes from the last version it
        saw, lists afresh when that has expired (410), and retries with back-off, quietly while
        the kind's API is not installed (404). The blocking stream runs in its own thread, not
        in the executor the API calls share."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        reading: list[Any] = []  # the response being read, to cut it when stopping

        def deliver(event_type: str, obj: Manifest) -> None:
            loop.call_soon_threadsafe(handle, event_type, obj)

        thread = threading.Thread(
            target=self._watch_forever,
            args=(kind, namespace, selector, deliver, stop, reading),
            name=f"watch-{kind}",
            daemon=True,
        )
        thread.start()
        try:
            await loop.create_future()  # never set: runs until cancelled
        finally:
            stop.set()
            for response in list(reading):  # unblock the thread's read now
                with contextlib.suppress(Exception):
                    response.shutdown()

    def _watch_forever(
        self,
        kind: str,
        namespace: str | None,
        selector: str,
        deliver: Callable[[str, Manifest], None],
        stop: threading.Event,
        reading: list[Any],
    ) -> None:
        path = _path(kind, namespace)
        version, backoff = "", 1.0
        while not stop.is_set():
            try:
                if not version:
                    # one item is enough: the list is only for its resourceVersion (changes
                    # missed while the old version expired are the resync's to catch)
                    listed = self._call(
                        "GET",
                        path,
                        query=[("labelSelector", selector), ("limit", "1")],
                        accept=METADATA_LIST,
                    )
                    version = listed["metadata"]["resourceVersion"]
                version = self._watch_once(path, selector, version, deliver, stop, reading)
                backoff = 1.0
                continue
            except ApiError as error:
                if error.status == 410:  # our version expired: list afresh
                    version = ""
                    continue
                if error.status == 404:  # an optional API not installed (yet)
                    log.debug("Not watching %s: %s", kind, error)
                    backoff = 30.0
                else:
                    log.warning("Watch of %s failed: %s", kind, error)
            except Exception as error:  # the thread must outlive anything a stream does
                if stop.is_set():
                    return
                log.warning("Watch of %s broke off: %s: %s", kind, type(error).__name__, error)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _watch_once(
        self,
        path: str,
        selector: str,
        version: str,
        deliver: Callable[[str, Manifest], None],
        stop: threading.Event,
        reading: list[Any],
    ) -> str:
        """One watch request from `version`; returns the last version seen when it ends."""
        query = [
            ("watch", "true"),
            ("labelSelector", selector),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_SECONDS)),
        ]
        for event in self._stream(path, query, reading):
            if stop.is_set():
                break
            event_type, obj = event.get("type"), event.get("object") or {}
            if event_type == "ERROR":
                raise ApiError(obj.get("code", 0), obj.get("reason", ""), obj.get("message", ""))
            version = obj.get("metadata", {}).get("resourceVersion") or version
            if event_type in ("ADDED", "MODIFIED", "DELETED"):
                deliver(event_type, obj)
        return version

    def _stream(
        self, path: str, query: list[tuple[str, str]], reading: list[Any]
    ) -> Iterator[Manifest]:
        api = self.api
        _, url, headers, _, _ = api.param_serialize(
            "GET",
            path,
            query_params=query,
            header_params={"Accept": METADATA_ONLY},
            auth_settings=["BearerToken"],
        )
        try:
            response = api.call_api(
                "GET", url, header_params=headers, _request_timeout=(10, WATCH_SECONDS + 30)
            )
        except kubernetes.client.ApiException as error:
            raise ApiError(error.status or 0, error.reason or "", str(error)) from None
        raw = response.response
        reading.append(raw)
        try:
            if not 200 <= response.status < 300:
                message = response.reason or ""
                with contextlib.suppress(TypeError, ValueError):
                    message = json.loads(raw.data).get("message", message)
                raise ApiError(response.status, response.reason or "", message)
            for line in iter_resp_lines(raw):  # type: ignore[no-untyped-call]
                if line:
                    yield json.loads(line)
        finally:
            reading.remove(raw)
            raw.close()  # often left mid-stream: never back into the pool unread

    async def apply(
        self, obj: Manifest, *, force: bool = True, field_manager: str | None = None
    ) -> Manifest:
        """Server-side apply `obj` under the operator's field manager (or another one)."""
        meta = obj["metadata"]
        path = _path(obj["kind"], meta.get("namespace"), meta["name"])
        query = [("fieldManager", field_manager or self.field_manager)]
        if force:
            query.append(("force", "true"))
        # JSON is YAML; the client only serialises bodies itself for JSON content types.
        result: Manifest = await self.call(
            "PATCH",
            path,
            body=json.dumps(obj),
            query=query,
            content_type="application/apply-patch+yaml",
        )
        return result

    async def create(self, obj: Manifest) -> Manifest:
        meta = obj["metadata"]
        result: Manifest = await self.call(
            "POST", _path(obj["kind"], meta.get("namespace")), body=obj
        )
        return result

    async def replace(self, obj: Manifest) -> Manifest:
        """PUT: fails with 409 when metadata.resourceVersion is no longer current."""
        meta = obj["metadata"]
        result: Manifest = await self.call(
            "PUT", _path(obj["kind"], meta.get("namespace"), meta["name"]), body=obj
        )
        return result

    async def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        try:
            result: Manifest = await self.call("GET", _path(kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return result

    async def list(self, kind: str, namespace: str | None, selector: str = "") -> list[Manifest]:
        query = [("labelSelector", selector)] if selector else []
        result = await self.call("GET", _path(kind, namespace), query=query)
        items: list[Manifest] = result.get("items", [])
        api_version = kind_of(kind).api_version
        # List items come without kind and apiVersion; give them theirs.
        return [{"apiVersion": api_version, "kind": kind, **item} for item in items]

    async def previous_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        limit_bytes: int,
        tail_lines: int = 2,
        previous: bool = True,
    ) -> str:
        """The last `tail_lines` lines of a container's previous run (a crash-looping one's; its
        current run with `previous=False`), cut after `limit_bytes` by the API server."""
        query = [
            ("container", container),
            ("previous", "true" if previous else "false"),
            ("tailLines", str(tail_lines)),
            ("limitBytes", str(limit_bytes)),
        ]
        result: str = await self.call(
            "GET", _path("Pod", namespace, pod, "log"), query=query, text=True
        )
        return result

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        body = {"propagationPolicy": "Background"}
        try:
            await self.call("DELETE", _path(kind, namespace, name), body=body)
        except ApiError as error:
            if error.status != 404:
                raise

    async def patch_status(self, kind: str, namespace: str, name: str, status: Manifest) -> None:
        await self.call(
            "PATCH",
            _path(kind, namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def event(self, regarding: Manifest, type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about an object (best effort: a failure is only logged)."""
        meta = regarding["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": regarding["apiVersion"],
                "kind": regarding["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.field_manager},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.call("POST", _path("Event", meta["namespace"]), body=event)
        except ApiError as error:
            logging.getLogger("llmchain.operator").warning("Could not post an event: %s", error)

    def forget_groups(self) -> None:
        self._groups = (0.0, frozenset())

    async def available_groups(self) -> frozenset[str]:
        """Optional API groups whose CRDs (OPTIONAL_CRDS) are all Established, cached for
        discovery_ttl seconds.

        The CRDs are asked directly: the legacy /apis list is served from APIService objects
        that the aggregator registers asynchronously, and was seen to miss a group for over a
        minute after its CRDs were deleted and re-created.
        """
        stamp, groups = self._groups
        if time.monotonic() - stamp < self.discovery_ttl and stamp:
            return groups
        established = set()
        for group, names in OPTIONAL_CRDS.items():
            for name in names:
                path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                try:
                    crd = await self.call("GET", path)
                except ApiError as error:
                    if error.status == 404:
                        break
                    raise
                conditions = crd.get("status", {}).get("conditions", [])
                if not any(
                    c["type"] == "Established" and c["status"] == "True" for c in conditions
                ):
                    break
            else:
                established.add(group)
        groups = frozenset(established)
        if stamp and groups != self._groups[1]:
            logging.getLogger("llmchain.operator").info(
                "Optional APIs changed: now %s", ", ".join(sorted(groups)) or "none"
            )
        self._groups = (time.monotonic(), groups)
        return groups
