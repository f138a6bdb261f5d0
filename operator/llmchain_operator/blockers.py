"""What blocks an app, as the cluster reports it: pure functions, no I/O.

While an app is not Ready, reconcile lists its pods and hands them here with its model PVC (and
the last log line of each crash-looping init container, which it reads for the ones
`crash_looping_init_containers` names). What comes back names each blocker in the cluster's own
words, the scheduler's message or the kubelet's waiting reason, for the conditions users read:
an unbound PVC, an unschedulable pod, an image pull back-off, a crash-looping container.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]

# Names the builders give (builders/model.py; tests/unit/test_blockers.py checks them against
# what the builders make): the build Job's pods and the init containers that make the model.
MODEL_BUILD_COMPONENT = "model-build"
MODEL_PVC_COMPONENT = "model"
MODEL_CONTAINERS = frozenset({"model", "model-source"})

PVC_PENDING = "PVCPending"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL = "ImagePullBackOff"
CRASH_LOOP = "CrashLoopBackOff"
CANNOT_START = "ContainerCannotStart"
ORDER = (PVC_PENDING, UNSCHEDULABLE, IMAGE_PULL, CRASH_LOOP, CANNOT_START)
"""Causes first: an unbound PVC makes its pods unschedulable."""

PULL_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
)
_BACK_OFF = re.compile(r'^(Back-off pulling image "[^"]*":\s*)?(ErrImagePull:\s*)?')
START_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)

DETAIL_CHARS = 300
"""The most of one cluster message (or log line) that goes into a condition."""
LOG_LINE_CHARS = 200
LOG_TAIL_BYTES = 512
"""What reconcile reads of a crash-looping init container's log: its last few hundred bytes."""
SHOWN = 5
"""Blockers named in one message; the rest are counted."""
PODS_NAMED = 3
PVC_GRACE_SECONDS = 60.0
"""A claim with a StorageClass is Pending until its provisioner binds it (the apply that creates
it always returns it Pending): it is named only once Pending this long."""


@dataclass(frozen=True)
class Blocker:
    """One thing the cluster reports as blocking the app."""

    reason: str
    """PVCPending, Unschedulable, ImagePullBackOff, CrashLoopBackOff or ContainerCannotStart."""
    subject: str
    """The object, e.g. `Pod qa-chain-5d8f-x2x` or `PersistentVolumeClaim qa-chain-model`."""
    problem: str
    """What is wrong with it, in the cluster's words."""
    model: bool = False
    """It blocks the model: the build Job's pod, a model init container, the model PVC."""


def _cut(text: str, limit: int = DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _young(pvc: Manifest, now: datetime.datetime | None) -> bool:
    """Created less than PVC_GRACE_SECONDS before `now` (never, when either is unknown)."""
    created = pvc["metadata"].get("creationTimestamp")
    if now is None or not created:
        return False
    try:
        born = datetime.datetime.fromisoformat(str(created))
    except ValueError:
        return False
    return (now - born).total_seconds() <= PVC_GRACE_SECONDS


def pvc_blockers(pvcs: Iterable[Manifest], now: datetime.datetime | None = None) -> list[Blocker]:
    """Claims that are not Bound, and why as far as the claim itself tells. One that names no
    StorageClass and no volume is named at once (nothing will bind it); one that waits for its
    StorageClass only once Pending past PVC_GRACE_SECONDS before `now` (an aware datetime;
    without it, at once)."""
    found = []
    for pvc in pvcs:
        meta, spec = pvc["metadata"], pvc.get("spec", {})
        phase = pvc.get("status", {}).get("phase", "Pending")
        model = meta.get("labels", {}).get("app.kubernetes.io/component") == MODEL_PVC_COMPONENT
        subject = f"PersistentVolumeClaim {meta['name']}"
        if phase == "Lost":
            problem = f"is Lost: its PersistentVolume {spec.get('volumeName', '')} is gone"
        elif phase != "Pending":
            continue
        elif not spec.get("storageClassName") and not spec.get("volumeName"):
            problem = (
                "is Pending: it names no StorageClass, the cluster has no default one, "
                "and no PersistentVolume is bound to it"
            )
        elif _young(pvc, now):
            continue
        else:
            annotations = meta.get("annotations", {})
            provisioner = annotations.get(
                "volume.kubernetes.io/storage-provisioner"
            ) or annotations.get("volume.beta.kubernetes.io/storage-provisioner")
            cls = spec.get("storageClassName") or "(none)"
            problem = (
                f"is Pending: waiting for provisioner {provisioner} (StorageClass {cls})"
                if provisioner
                else f"is Pending: StorageClass {cls} has not bound a volume to it"
            )
        found.append(Blocker(PVC_PENDING, subject, problem, model))
    return found


def _live(pods: Iterable[Manifest]) -> list[Manifest]:
    """Pods that still count: not being deleted, not finished."""
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    ]


def _is_build_pod(pod: Manifest) -> bool:
    labels: dict[str, str] = pod["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component") == MODEL_BUILD_COMPONENT


def crash_looping_init_containers(pods: Iterable[Manifest]) -> list[tuple[str, str, bool]]:
    """(pod, container, previous) of each crash-looping init container with no termination
    message: the ones whose last log line reconcile reads (a GET of pods/log each). `previous`:
    the failed run is the container's previous one (it waits to be restarted), not the current
    one (reported `terminated` itself; its previous run's log may be collected already)."""
    found = []
    for pod in _live(pods):
        for status in pod.get("status", {}).get("initContainerStatuses", []):
            failure = _crash_loop_failure(status, init=True)
            if failure is not None and not failure.get("message"):
                previous = "terminated" not in status.get("state", {})
                found.append((pod["metadata"]["name"], status["name"], previous))
    return found


def _crash_loop_failure(status: Manifest, init: bool) -> Manifest | None:
    """The last failure of a crash-looping container (its `terminated` state), or None.

    The kubelet reports a container waiting to be restarted as `waiting: CrashLoopBackOff`. An
    init container of a pod with sidecar init containers (restartPolicy Always) stays reported
    as `terminated` with its exit code through the back-off instead, so a failed init container
    that has been restarted before counts as crash-looping too."""
    state = status.get("state", {})
    if state.get("waiting", {}).get("reason") == CRASH_LOOP:
        return dict(status.get("lastState", {}).get("terminated", {}))
    terminated = state.get("terminated", {})
    if init and terminated.get("exitCode") and int(status.get("restartCount", 0)) >= 1:
        return dict(terminated)
    return None


def _unschedulable(pod: Manifest) -> str | None:
    for cond in pod.get("status", {}).get("conditions", []):
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return _cut(str(cond.get("message") or cond.get("reason") or "not scheduled"))
    return None


def _container_blocker(
    pod: Manifest, status: Manifest, init: bool, logs: Mapping[tuple[str, str], str]
) -> Blocker | None:
    name = pod["metadata"]["name"]
    waiting = status.get("state", {}).get("waiting", {})
    why = str(waiting.get("reason", ""))
    what = f"{'init container' if init else 'container'} {status['name']}"
    model = _is_build_pod(pod) or (init and status["name"] in MODEL_CONTAINERS)
    message = _cut(str(waiting.get("message", "")))
    if why in PULL_REASONS:
        # The kubelet alternates ErrImagePull (the error) and ImagePullBackOff (`Back-off pulling
        # image "x": ErrImagePull: the error`): the same message for both keeps it stable.
        message = _BACK_OFF.sub("", message)
        shown = f" ({why})" if why not in ("ImagePullBackOff", "ErrImagePull") else ""
        image = status.get("image") or "its image"
        problem = f"{what} cannot pull image {image}{shown}" + (f": {message}" if message else "")
        return Blocker(IMAGE_PULL, f"Pod {name}", problem, model)
    last = _crash_loop_failure(status, init)
    if last is not None:
        code, ended = last.get("exitCode"), last.get("reason")
        how = ", ".join(
            [
                *([f"exit code {code}"] if code is not None else []),
                *([ended] if ended and ended != "Error" else []),
            ]
        )
        problem = f"{what} is crash-looping" + (f" ({how})" if how else "")
        said = last.get("message") or logs.get((name, status["name"]), "")
        detail = last_log_line(str(said)) if said else ""
        return Blocker(
            CRASH_LOOP, f"Pod {name}", problem + (f": {detail}" if detail else ""), model
        )
    if why in START_REASONS:
        problem = f"{what} cannot start ({why})" + (f": {message}" if message else "")
        return Blocker(CANNOT_START, f"Pod {name}", problem, model)
    return None


def pod_blockers(
    pods: Iterable[Manifest], logs: Mapping[tuple[str, str], str] | None = None
) -> list[Blocker]:
    """Unschedulable pods (the scheduler's message), containers that cannot pull their image or
    start, and crash-looping ones (with the last log line, for init containers, from `logs`)."""
    found = []
    for pod in _live(pods):
        name = pod["metadata"]["name"]
        reason = _unschedulable(pod)
        if reason is not None:
            found.append(
                Blocker(
                    UNSCHEDULABLE, f"Pod {name}", f"is unschedulable: {reason}", _is_build_pod(pod)
                )
            )
            continue
        status = pod.get("status", {})
        for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
            for container in status.get(key, []):
                blocker = _container_blocker(pod, container, init, logs or {})
                if blocker is not None:
                    found.append(blocker)
    return found


def find_blockers(
    pods: Iterable[Manifest],
    pvcs: Iterable[Manifest] = (),
    logs: Mapping[tuple[str, str], str] | None = None,
    now: datetime.datetime | None = None,
) -> list[Blocker]:
    """Every blocker of the app's pods and PVCs, causes first (`now`: see pvc_blockers)."""
    found = pvc_blockers(pvcs, now) + pod_blockers(pods, logs)
    return sorted(found, key=lambda b: (ORDER.index(b.reason), b.subject))


def summarize(blockers: list[Blocker]) -> str:
    """One message: blockers with the same problem grouped (`Pods a, b and 2 more are ...`), at
    most SHOWN of them, the rest counted."""
    groups: dict[tuple[str, str], list[str]] = {}
    for blocker in blockers:
        kind, _, name = blocker.subject.partition(" ")
        groups.setdefault((kind, blocker.problem), []).append(name)
    parts = []
    for (kind, problem), names in list(groups.items())[:SHOWN]:
        verb = problem.startswith("is ")
        if len(names) == 1:
            parts.append(f"{kind} {names[0]}{' ' if verb else ': '}{problem}")
            continue
        shown = ", ".join(names[:PODS_NAMED])
        more = f" and {len(names) - PODS_NAMED} more" if len(names) > PODS_NAMED else ""
        said = f" are {problem.removeprefix('is ')}" if verb else f": {problem}"
        parts.append(f"{kind}s {shown}{more}{said}")
    if len(groups) > SHOWN:
        parts.append(f"and {len(groups) - SHOWN} more")
    return "; ".join(parts)


# What may hold a secret in a log line: URL credentials and query strings, key=value pairs and
# headers with a secret-sounding name, and long opaque tokens (mixed case and digits; a hex
# digest, which a checksum error names, is kept).
_URL_USER = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_URL_QUERY = re.compile(
    r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#]*)\?[^\s#\"']*?(?=[:,.;)]*(?:[\s#\"']|$))"
)
_SECRET_PAIR = re.compile(
    r"(?i)\b([\w.-]*(?:password|passwd|secret|token|api[_-]?key|apikey|credential|auth)"
    r"[\w.-]*)(\"?\s*[:=]\s*\"?)(?!(?:bearer|basic)\s)[^\s,;\"']+"
)
_BEARER = re.compile(r"\b((?i:bearer)|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_OPAQUE = re.compile(r"[A-Za-z0-9+/_=]{24,}")
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")
REDACTED = "[redacted]"


def _opaque(match: re.Match[str]) -> str:
    token = match.group(0)
    mixed = (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )
    return REDACTED if mixed else token


def redact(line: str) -> str:
    """A log line with what looks secret replaced by [redacted]."""
    line = _URL_USER.sub(rf"\1{REDACTED}@", line)
    line = _URL_QUERY.sub(rf"\1?{REDACTED}", line)
    line = _BEARER.sub(rf"\1 {REDACTED}", line)
    line = _SECRET_PAIR.sub(rf"\1\2{REDACTED}", line)
    return _OPAQUE.sub(_opaque, line)


NO_LOG = "unable to retrieve container logs"


def last_log_line(text: str) -> str:
    """The last non-empty line of a log tail, without control characters, redacted and cut to
    LOG_LINE_CHARS."""
    if text.startswith(NO_LOG):
        return ""  # the kubelet's answer when that run's log is gone (a collected container)
    lines = [_CONTROL.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return _cut(redact(lines[-1]), LOG_LINE_CHARS) if lines else ""
