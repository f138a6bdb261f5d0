"""Whose an existing object is, so the operator never applies over another owner's object.

Every app's children are applied by the one field manager, so server-side apply itself would
hand any object of the right name to whichever app applies it last (its owner reference, its
labels, its spec): app `hc` with memory owns Service `hc-memory`, which an app named `hc-memory`
also wants. Before a child is first applied, the object of its name (if any) is looked at: the
app may apply it when it is the app's own or an orphan of it, and nothing else. Pure functions.
"""

from __future__ import annotations

from typing import Any

from llmchain_operator.builders.common import MANAGED_BY

Manifest = dict[str, Any]


def controller(obj: Manifest) -> Manifest | None:
    """The owner reference marked as the object's controller, if any."""
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def controlled_by(obj: Manifest, uid: str) -> bool:
    ref = controller(obj)
    return ref is not None and ref.get("uid") == uid


def holder(current: Manifest, app: Manifest) -> str | None:
    """None when the app may apply over `current`: the app controls it (or is one of its
    owners); an earlier app of the same name controls it (owner references are namespaced, so
    that app is deleted: its children, not yet collected, are taken over rather than reported);
    or it has no controller and carries the labels of the app's children (an orphan, left by
    `kubectl delete --cascade=orphan` of an app of this name). Otherwise who holds it, in words
    that follow its kind and name."""
    meta = current["metadata"]
    uid = app["metadata"]["uid"]
    if any(r.get("uid") == uid for r in meta.get("ownerReferences") or []):
        return None
    ref = controller(current)
    if ref is not None:
        if ref.get("kind") == app["kind"] and ref.get("name") == app["metadata"]["name"]:
            return None
        return f"is controlled by {ref.get('kind')} {ref.get('name')}, not by this app"
    labels = meta.get("labels") or {}
    if (
        labels.get("app.kubernetes.io/managed-by") == MANAGED_BY
        and labels.get("app.kubernetes.io/instance") == app["metadata"]["name"]
    ):
        return None
    return "exists and is not this app's: it has no owner"
