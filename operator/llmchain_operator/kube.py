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
import time
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from llmchain_operator.kinds import OPTIONAL_CRDS, kind_of

Manifest = dict[str, Any]


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
    ) -> Any:
        api = self.api
        _, url, headers, serialized, _ = api.param_serialize(
            method,
            path,
            query_params=query or [],
            body=body,
            header_params={
                "Content-Type": content_type,
                "Accept": "*/*" if text else "application/json",
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
