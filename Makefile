# llmchain-operator: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLBIN := $(CURDIR)/.toolchain/bin
export PATH := $(TOOLBIN):$(CURDIR)/$(BIN):$(PATH)

##@ Newcomer
demo: install toolchain images cluster-up monitoring ## Set up everything and run the demo: cluster, monitoring, operator in it, the app's real pods, answers, live numbers
	@hack/demo.sh

demo-down: ## Stop everything the demo started (the app, the operator, the cluster and its node)
	@hack/cluster.sh down

test: install toolchain images ## Set up everything and run every test tier (what CI runs)
	$(BIN)/pytest --durations=20 tests/unit tests/integration tests/e2e tests/e2e_real

##@ Setup
install: $(VENV)/.installed ## Create .venv with pinned Python dependencies; install redis-server if missing

$(VENV)/.installed: pyproject.toml requirements/constraints.txt hack/install.sh
	@hack/install.sh
	@touch $@

toolchain: ## Build the control plane, the real node (kubelet, containerd, CNI, CoreDNS), etcd, kwok, helm, Prometheus, the Prometheus Operator, KEDA, CRDs from Go modules (cached)
	@toolchain/build.sh

images: install toolchain ## Build the images (server, operator, redis, model, pause, CoreDNS, monitoring stack) daemonlessly (cached by input hash)
	@hack/images.sh build

##@ Local cluster
cluster-up: toolchain images ## Start the local cluster (control plane, the real node with CoreDNS, KWOK fake GPU nodes)
	@hack/cluster.sh up

monitoring: cluster-up ## Install Prometheus (run by the Prometheus Operator) and KEDA in the local cluster, on the real node
	@hack/monitoring.sh up

cluster-down: ## Stop the local cluster and every process it started
	@hack/cluster.sh down

kubeconfig: ## Print the path of the local cluster's kubeconfig (and nothing else)
	@hack/cluster.sh kubeconfig

##@ Development
lint: install ## ruff format --check, ruff check, mypy --strict, import-linter
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install ## Format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test-unit: install ## Run tests/unit only (seconds)
	$(BIN)/pytest tests/unit

test-integration: install toolchain images ## Run tests/integration only
	$(BIN)/pytest tests/integration

test-e2e: install toolchain images ## Run tests/e2e only
	$(BIN)/pytest tests/e2e

test-e2e-real: install toolchain images ## Run tests/e2e_real only (real pods on the real node)
	$(BIN)/pytest tests/e2e_real

crds: install ## Generate crds/ (and the chart's copy) from the pydantic API models
	$(BIN)/llmchain crd > crds/llmchainapps.llmchain.io.yaml
	cp crds/llmchainapps.llmchain.io.yaml charts/llmchain-operator/crds/

manifests: crds toolchain ## Render deploy/llmchain-operator.yaml from the Helm chart (for kubectl users)
	@hack/render-manifests.sh > deploy/llmchain-operator.yaml

bench: install cluster-up ## Run the operator benchmark; JSON results go to bench/results/
	$(BIN)/python bench/operator_scale.py --sizes 100 500 1000

bench-engine: install ## Engine vs llama.cpp on the same GGUF (compiles llama-cpp-python once, ~12 min)
	hack/bench-env.sh
	$(BIN)/python bench/engine.py

bench-server: install ## HTTP end to end vs llama-cpp-python's server and llama-server -np 8 (builds both once)
	hack/bench-env.sh
	hack/build-llama-server.sh
	$(BIN)/python bench/server.py

bench-structured: install ## Valid JSON outputs and tool calls of SmolLM2-135M with and without constrained decoding
	$(BIN)/python bench/structured.py

bench-chain: install ## A two-step chain with memory, 8 conversations x 6 turns: ours vs LangChain + llama-server -np 8
	hack/build-llama-server.sh
	$(BIN)/python bench/chain.py

bench-hostile: install ## /healthz and a conversation's latency under hostile load (1 MB prompts, slow and idle connections)
	$(BIN)/python bench/hostile_load.py

bench-fidelity: install ## Fidelity per precision, accuracy plan and CPU kernel family (AVX2 under qemu-user)
	$(BIN)/python bench/fidelity.py --emulate-avx2

bench-embeddings: install ## Embedding throughput and latency: our ONNX encoder vs sentence-transformers on torch (reference venv, several GiB)
	hack/torch-env.sh
	$(BIN)/python bench/embeddings.py

bench-retrieval: install ## Recall (dense, BM25, hybrid) and answers with and without retrieval on examples/05-docs-qa; Faiss vs NumPy
	$(BIN)/python bench/retrieval.py

embedding-goldens: ## Re-record the embedding goldens with sentence-transformers on torch (reference venv)
	hack/torch-env.sh
	$(HOME)/.cache/llmchain/torch-venv/bin/python bench/embedding_goldens.py

goldens: install ## Re-record llama.cpp's goldens for the fidelity tests (bench venv)
	hack/bench-env.sh
	$(HOME)/.cache/llmchain/bench-venv/bin/python bench/llama_goldens.py

model: install ## Build the test model (SmolLM2-135M, int4) into .models/smollm2-int4
	$(BIN)/llmchain model build --quantization int4 --out .models/smollm2-int4 \
	  --source "$$($(BIN)/python -c 'from tests.support.model import gguf_path; print(gguf_path())')"

clean: ## Remove the virtualenv and local build links (keeps the toolchain cache)
	rm -rf $(VENV) .toolchain .pytest_cache .mypy_cache .ruff_cache

help: ## List the targets
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: demo demo-down test install toolchain images cluster-up cluster-down kubeconfig lint fmt test-unit \
	monitoring test-integration test-e2e test-e2e-real crds manifests bench bench-engine bench-server bench-chain bench-hostile bench-fidelity bench-embeddings bench-retrieval embedding-goldens goldens model \
	clean help
