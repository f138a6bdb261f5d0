// Pins the modules whose upstream CRD YAMLs `make toolchain` extracts (toolchain/build.sh crds):
// prometheus-operator's example/prometheus-operator-crd/ and KEDA's config/crd/bases/.
// Nothing is compiled from this module; only the require lines are read. Extracted: every
// monitoring.coreos.com CRD (the in-cluster Prometheus Operator needs them all) and every KEDA CRD,
// and the upstream deployment manifests of both (hack/monitoring.sh installs them).
module llmchain.io/toolchain/crds

go 1.26.0

require (
	github.com/prometheus-operator/prometheus-operator v0.85.0
	github.com/kedacore/keda/v2 v2.21.0
)
