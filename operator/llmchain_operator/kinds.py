"""Every kind the operator reads or writes, in one table.

The API client's paths, the optional API groups and their CRDs, the pruner's kinds, the drift
watches, `llmchain render --without-api` and the RBAC the chart must grant are all derived from
(or checked against) this table: adding a child kind is one row here and one builder.
"""

from __future__ import annotations

from dataclasses import dataclass

CHILD_VERBS = ("get", "list", "watch", "create", "patch", "update", "delete")
"""What the operator does to its children: server-side apply (patch; create and update for
clients that fall back), the drift watch (list, watch), reads and pruning."""


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    plural: str
    verbs: tuple[str, ...]
    """RBAC verbs the operator needs on this kind."""
    status_verbs: tuple[str, ...] = ()
    """RBAC verbs the operator needs on its status subresource."""
    log_verbs: tuple[str, ...] = ()
    """RBAC verbs the operator needs on its log subresource (pods/log)."""
    child: bool = False
    """Built for an app and owned by it: pruned when no longer wanted."""
    optional: bool = False
    """Its API group may be absent (discovered; skipped and reported when it is)."""
    watched: bool = False
    """Changes to it re-trigger its owner's reconcile (optional kinds rely on the resync)."""
    rbac: str = "ClusterRole"
    """Where the chart grants the verbs: the ClusterRole, or the Role in the operator's
    namespace (the leader Lease)."""

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0] if "/" in self.api_version else ""

    @property
    def version(self) -> str:
        return self.api_version.split("/")[-1]

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


def _child(kind: str, api_version: str, plural: str, *, optional: bool = False) -> Kind:
    return Kind(
        kind, api_version, plural, CHILD_VERBS, child=True, optional=optional, watched=not optional
    )


KINDS: tuple[Kind, ...] = (
    # Children, in no particular order (builders/__init__.py orders what is applied).
    _child("ServiceAccount", "v1", "serviceaccounts"),
    _child("ConfigMap", "v1", "configmaps"),
    _child("Service", "v1", "services"),
    _child("PersistentVolumeClaim", "v1", "persistentvolumeclaims"),
    _child("Deployment", "apps/v1", "deployments"),
    _child("Job", "batch/v1", "jobs"),
    _child("PodDisruptionBudget", "policy/v1", "poddisruptionbudgets"),
    _child("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies"),
    _child("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers"),
    _child("ServiceMonitor", "monitoring.coreos.com/v1", "servicemonitors", optional=True),
    _child("PrometheusRule", "monitoring.coreos.com/v1", "prometheusrules", optional=True),
    _child("ScaledObject", "keda.sh/v1alpha1", "scaledobjects", optional=True),
    # Read or written, not owned.
    Kind(
        "LLMChainApp",
        "llmchain.io/v1alpha1",
        "llmchainapps",
        ("get", "list", "watch", "patch"),  # kopf annotates what it handled
        status_verbs=("get", "patch"),
    ),
    Kind("Secret", "v1", "secrets", ("get",)),  # referenced keys are checked, never logged
    # Listed while an app is not Ready, to name what blocks it (blockers.py); the log of a
    # crash-looping init container is read, a few hundred bytes of it. Not watched: a watch of
    # pods streams every pod event of the cluster (kopf filters labels client-side).
    Kind("Pod", "v1", "pods", ("list",), log_verbs=("get",)),
    Kind("Event", "v1", "events", ("create", "patch")),
    Kind("Lease", "coordination.k8s.io/v1", "leases", ("get", "create", "update"), rbac="Role"),
)

BY_NAME = {k.kind: k for k in KINDS}
CHILDREN = tuple(k for k in KINDS if k.child)
WATCHED = tuple(k for k in KINDS if k.watched)
OPTIONAL_API_GROUPS = tuple(dict.fromkeys(k.group for k in KINDS if k.optional))
"""API groups the operator uses when installed (monitoring.coreos.com, keda.sh)."""
OPTIONAL_CRDS = {
    group: tuple(k.crd_name for k in KINDS if k.optional and k.group == group)
    for group in OPTIONAL_API_GROUPS
}
"""The CRDs that must all be Established for an optional group to count as available."""


def kind_of(name: str) -> Kind:
    """The table's row for a kind name; KeyError for a kind the operator does not handle."""
    return BY_NAME[name]
