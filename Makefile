# AnsFlow developer targets. Go 1.26; the workspace (go.work) ties the modules.
MODULES := ./pkg/... ./services/pipeline/... ./services/docker-runner/... ./services/k8s-runner/... ./services/audit/... ./cmd/ansflow/...
BIN     := bin
GOFLAGS ?=

.PHONY: build test test-short bench bench-dispatch lint demo cluster-up cluster-down clean

build: ## build ansflow and every service binary into bin/
	go build -o $(BIN)/ansflow ./cmd/ansflow
	go build -o $(BIN)/pipeline ./services/pipeline
	@for s in docker-runner k8s-runner audit; do \
		if ls services/$$s/*.go >/dev/null 2>&1; then go build -o $(BIN)/$$s ./services/$$s || exit 1; fi; done

test: ## run every test against real NATS, Docker, registry (and cluster when up)
	go vet $(MODULES)
	go test -count=1 -timeout 30m $(MODULES)

bench: ## run every benchmark and print comparable figures
	go test -run '^$$' -bench . -benchtime 3x -timeout 30m $(MODULES)

bench-dispatch: ## orchestration overhead and throughput only
	go test -run '^$$' -bench 'Dispatch|Throughput' -timeout 10m ./services/pipeline/...

lint: ## gofmt, go vet
	@out=$$(gofmt -l pkg services cmd); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet $(MODULES)

demo: build ## the README's main job: a real pipeline on the embedded default
	bash deploy/demo/run.sh

cluster-up: ## local Kubernetes control plane (etcd, apiserver, controllers, kwok)
	bash deploy/cluster/up.sh

cluster-down:
	bash deploy/cluster/down.sh

clean:
	rm -rf $(BIN)
