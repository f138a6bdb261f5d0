"""FakeKube: a fake, in-memory stand-in for `llmchain_operator.kube.Kube`, for unit tests.

It is not the API server and does not pretend to be. What it models, just far enough for the
Reconciler's tests:

- server-side apply: `apply` stores the object and keeps, per field manager, what that manager
  last applied. The stored object is the union of the managers' applied fields, top-level keys
  of `spec` (and of `metadata`, and other top-level keys as a whole) being the unit of
  ownership; the latest applier's value wins, and a field that no manager applies any more is
  gone (as when its only owner stops applying it). Each manager has a `managedFields` entry
  `{manager, operation: Apply, fieldsV1: {f:spec: {f:<key>: {}}, f:<other key>: {}}}`.
  `metadata.generation` moves when anything but metadata and status changes. A `metadata.uid`
  in the applied body is a precondition, as on the API server: 409 Conflict when there is no
  such object, 422 Invalid (`metadata.uid ... field is immutable`) when the object's uid
  differs; an object created by apply gets a uid of its own, never the body's, and a
  `metadata.creationTimestamp` from `clock`;
- get, list (namespace and an equality-based label selector: `k=v`, `k==v`, `k!=v`, comma-
  separated; list items carry kind and apiVersion, as the real client adds them), delete (a
  missing object is no error, as in Kube);
- patch_status: a JSON merge patch (RFC 7386) into `status`; 404 ApiError when there is no
  such object;
- event: recorded in `events`;
- previous_log: the last tail_lines of the text a test put in `logs` for (namespace, pod,
  container), then its first limit_bytes, as the log endpoint cuts (404 ApiError when none);
- available_groups: the configurable `groups`; forget_groups is recorded and does nothing else;
- `field_manager`.

What it does not model: validation of any kind, admission, defaulting, conflicts between field
managers (apply always wins, as with force), nested-field ownership, resourceVersion checks,
watches, controllers (no Deployment status unless a test sets one with `set_status`) and
garbage collection (deleting an owner leaves its children).

Every call through the Kube interface is recorded in `calls`, e.g. `("apply", kind, namespace,
name, manager)`, so tests can assert what happened and what did not.
"""

from __future__ import annotations

import builtins
import copy
import datetime
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmchain_operator.kinds import OPTIONAL_API_GROUPS
from llmchain_operator.kube import ApiError

Manifest = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace, name

ALL_OPTIONAL_GROUPS = frozenset(OPTIONAL_API_GROUPS)
"""The optional API groups the operator knows (monitoring, KEDA): installed by default."""

_SERVER_SET = ("uid", "generation", "resourceVersion", "managedFields", "creationTimestamp")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selector: `k=v`, `k==v`, `k!=v`, comma-separated (all must hold)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=", 1).split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        else:
            raise ValueError(f"FakeKube only models equality-based selectors, not {term!r}")
    return True


@dataclass
class _Stored:
    """One object: what was put directly, what each manager applied (oldest first), status."""

    base: Manifest
    applied: dict[str, Manifest] = field(default_factory=dict)
    status: Manifest | None = None
    uid: str = ""
    created: str = ""
    generation: int = 1
    resource_version: int = 1


@dataclass
class FakeKube:
    """A fake, in-memory Kube: see the module docstring for what it models and what not."""

    field_manager: str = "llmchain-operator"
    groups: set[str] = field(default_factory=lambda: set(ALL_OPTIONAL_GROUPS))
    calls: list[tuple[str, ...]] = field(default_factory=list)
    events: list[Manifest] = field(default_factory=list)
    applied: list[tuple[str, Manifest]] = field(default_factory=list)
    """Every apply's (field manager, body), in order."""
    logs: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(namespace, pod, container) -> the log of that container's previous run."""
    failures: dict[tuple[str, str], ApiError] = field(default_factory=dict)
    """(method, kind) -> an ApiError the next such call raises (once)."""
    refusals: dict[tuple[str, str], ApiError] = field(default_factory=dict)
    """(kind, name) -> an ApiError every apply of that object raises (as the API server
    refuses an invalid object), until the test removes it."""
    list_refusals: dict[str, ApiError] = field(default_factory=dict)
    """kind -> an ApiError every list of that kind raises (as for a client without RBAC to list
    it), until the test removes it."""
    clock: Callable[[], datetime.datetime] = field(
        default=lambda: datetime.datetime.now(datetime.UTC)
    )
    """Now, for an object's metadata.creationTimestamp."""
    _objects: dict[Key, _Stored] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- the Kube interface the operator uses --------------------------------------------

    async def apply(
        self, obj: Manifest, *, force: bool = True, field_manager: str | None = None
    ) -> Manifest:
        manager = field_manager or self.field_manager
        key = _key_of(obj)
        self._record("apply", *key, manager)
        refusal = self.refusals.get((key[0], key[2]))
        if refusal is not None:
            raise refusal
        self._check_uid(key, obj["metadata"].get("uid"))
        self.applied.append((manager, copy.deepcopy(obj)))
        stored, before = self._stored(key, {**obj, "metadata": _without_uid(obj["metadata"])})
        stored.applied.pop(manager, None)  # re-inserted last: the latest applier wins
        stored.applied[manager] = copy.deepcopy(obj)
        self._changed(key, stored, before)
        return self._render(key, stored)

    async def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        self._record("get", kind, namespace or "", name)
        return self.object(kind, namespace or "", name)

    async def list(self, kind: str, namespace: str | None, selector: str = "") -> list[Manifest]:
        self._record("list", kind, namespace or "", selector)
        refusal = self.list_refusals.get(kind)
        if refusal is not None:
            raise refusal
        return [
            self._render(key, stored)
            for key, stored in self._objects.items()
            if key[0] == kind
            and (not namespace or key[1] == namespace)
            and matches(self._render(key, stored)["metadata"].get("labels") or {}, selector)
        ]

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self._record("delete", kind, namespace or "", name)
        self._objects.pop((kind, namespace or "", name), None)

    async def patch_status(self, kind: str, namespace: str, name: str, status: Manifest) -> None:
        self._record("patch_status", kind, namespace, name)
        stored = self._objects.get((kind, namespace, name))
        if stored is None:
            raise ApiError(404, "Not Found", f'{kind} "{name}" not found')
        stored.status = merge_patch(stored.status or {}, status)
        stored.resource_version += 1

    async def event(self, regarding: Manifest, type_: str, reason: str, message: str) -> None:
        self._record("event", type_, reason)
        meta = regarding["metadata"]
        self.events.append(
            {
                "regarding": f"{regarding['kind']} {meta['namespace']}/{meta['name']}",
                "type": type_,
                "reason": reason,
                "message": message,
            }
        )

    async def previous_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        limit_bytes: int,
        tail_lines: int = 2,
        previous: bool = True,
    ) -> str:
        self._record("previous_log", namespace, pod, container)
        if (namespace, pod, container) not in self.logs:
            raise ApiError(404, "Not Found", f'previous terminated container "{container}"')
        lines = self.logs[(namespace, pod, container)].splitlines(keepends=True)
        return "".join(lines[-tail_lines:]).encode()[:limit_bytes].decode("utf-8", "replace")

    def forget_groups(self) -> None:
        self._record("forget_groups")

    async def available_groups(self) -> frozenset[str]:
        self._record("available_groups")
        return frozenset(self.groups)

    # --- for the tests: set up and look, without being recorded ---------------------------

    def put(self, obj: Manifest) -> Manifest:
        """Create or update `obj` as another client would (no field manager), keeping its
        status as the status subresource does; returns the stored object."""
        key = _key_of(obj)
        stored, before = self._stored(key, obj)
        stored.base = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
        if stored.status is None and "status" in obj:
            stored.status = copy.deepcopy(obj["status"])
        self._changed(key, stored, before)
        return self._render(key, stored)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        """Delete an object as another client would (not recorded)."""
        del self._objects[(kind, namespace, name)]

    def set_status(self, kind: str, namespace: str, name: str, status: Manifest) -> None:
        """Replace an object's status, as its controller would (a Deployment's replicas)."""
        stored = self._objects[(kind, namespace, name)]
        stored.status = copy.deepcopy(status)
        stored.resource_version += 1

    def object(self, kind: str, namespace: str, name: str) -> Manifest | None:
        stored = self._objects.get((kind, namespace, name))
        return None if stored is None else self._render((kind, namespace, name), stored)

    def names(self, kind: str) -> set[str]:
        return {name for k, _, name in self._objects if k == kind}

    def calls_to(self, method: str) -> builtins.list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == method]

    # --- inside --------------------------------------------------------------------------

    def _record(self, method: str, *args: str) -> None:
        self.calls.append((method, *args))
        kind = args[0] if args else ""
        error = self.failures.pop((method, kind), None)
        if error is not None:
            raise error

    def _check_uid(self, key: Key, uid: str | None) -> None:
        """An applied body's metadata.uid, checked as the API server checks it."""
        if not uid:
            return
        stored = self._objects.get(key)
        if stored is None:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[0]} "{key[2]}": uid mismatch: the '
                f"provided object specified uid {uid}, and no existing object was found",
            )
        if stored.uid != uid:
            raise ApiError(
                422,
                "Unprocessable Entity",
                f'{key[0]} "{key[2]}" is invalid: metadata.uid: Invalid value: "{uid}": '
                "field is immutable",
            )

    def _stored(self, key: Key, obj: Manifest) -> tuple[_Stored, Manifest | None]:
        """The stored object for `key` (created when new) and its content before the change
        (None when new)."""
        stored = self._objects.get(key)
        if stored is not None:
            return stored, _content(self._render(key, stored))
        uid = str(obj["metadata"].get("uid") or f"fake-uid-{next(self._counter)}")
        created = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        stored = self._objects[key] = _Stored(base={}, uid=uid, created=created)
        return stored, None

    def _changed(self, key: Key, stored: _Stored, before: Manifest | None) -> None:
        if before is None:
            return  # created: generation 1
        if _content(self._render(key, stored)) != before:
            stored.resource_version += 1
            stored.generation += 1

    def _render(self, key: Key, stored: _Stored) -> Manifest:
        kind, namespace, name = key
        obj: Manifest = {"apiVersion": "", "kind": kind}
        meta: Manifest = {}
        for source in (stored.base, *stored.applied.values()):
            for k, v in source.items():
                if k == "metadata":
                    meta.update({mk: mv for mk, mv in v.items() if mk not in _SERVER_SET})
                elif k == "spec" and isinstance(v, dict):
                    obj["spec"] = {**obj.get("spec", {}), **v}
                elif k != "status":
                    obj[k] = v
        meta.update(
            name=name,
            namespace=namespace,
            uid=stored.uid,
            creationTimestamp=stored.created,
            generation=stored.generation,
            resourceVersion=str(stored.resource_version),
        )
        managed = [_managed_fields(m, applied) for m, applied in stored.applied.items()]
        if managed:
            meta["managedFields"] = managed
        obj["metadata"] = meta
        if stored.status is not None:
            obj["status"] = stored.status
        return copy.deepcopy(obj)


def _key_of(obj: Manifest) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace") or "", meta["name"]


def _without_uid(meta: Manifest) -> Manifest:
    return {k: v for k, v in meta.items() if k != "uid"}


def _content(obj: Manifest) -> Manifest:
    """What counts for metadata.generation: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _managed_fields(manager: str, applied: Manifest) -> Manifest:
    fields: Manifest = {}
    for k, v in applied.items():
        if k == "spec" and isinstance(v, dict):
            fields["f:spec"] = {f"f:{sk}": {} for sk in v}
        elif k not in ("apiVersion", "kind", "metadata", "status"):
            fields[f"f:{k}"] = {}
    return {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": applied.get("apiVersion", ""),
        "fieldsV1": fields,
    }
