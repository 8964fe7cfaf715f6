# AnsFlow developer targets. Go 1.26; the workspace (go.work) ties the modules.
MODULES := ./pkg/... ./services/pipeline/... ./services/docker-runner/... ./services/k8s-runner/... ./services/audit/... ./cmd/ansflow/... ./deploy/kubernetes/...
BIN     := bin
GOFLAGS ?=

.PHONY: images build test test-alerts test-faults test-short bench bench-dispatch bench-scale fuzz lint demo cluster-up cluster-down clean

build: ## build ansflow and every service binary into bin/
	go build -o $(BIN)/ansflow ./cmd/ansflow
	go build -o $(BIN)/pipeline ./services/pipeline
	@for s in docker-runner k8s-runner audit; do \
		if ls services/$$s/*.go >/dev/null 2>&1; then go build -o $(BIN)/$$s ./services/$$s || exit 1; fi; done

test: ## install/start what the tests need (deploy/ci/setup.sh), then run every test on real parts
	bash deploy/ci/setup.sh > .test-env
	go vet $(MODULES)
	go test -count=1 -run '^$$' $(MODULES) > /dev/null # compile every test binary, in parallel
	. ./.test-env && go test -count=1 -p 1 -timeout 40m $(MODULES) # then run packages one at a time: they share Docker, the registry port range, PostgreSQL and the cluster
	$(MAKE) test-alerts

test-alerts: ## check deploy/prometheus/alerts.yaml against pkg/metrics and evaluate each rule (a module outside the workspace: GOWORK=off keeps the Prometheus server's dependency versions out of the services' builds)
	cd deploy/prometheus && GOWORK=off go vet ./... && GOWORK=off go test -count=1 ./...

test-faults: ## the fault suite alone (docs/reliability.md): SIGKILLs of runners, pipeline instances, audit and NATS nodes under load
	@command -v busybox >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox-static >/dev/null; }
	go test -count=1 -run '^TestFaults$$' -v -timeout 20m ./cmd/ansflow/

images: ## one FROM-scratch image per binary (no base image or registry needed)
	mkdir -p $(BIN)/static
	CGO_ENABLED=0 go build -o $(BIN)/static/ansflow ./cmd/ansflow
	@for s in pipeline docker-runner k8s-runner audit; do \
		if ls services/$$s/*.go >/dev/null 2>&1; then CGO_ENABLED=0 go build -o $(BIN)/static/$$s ./services/$$s || exit 1; fi; done
	printf 'root:x:0:0:root:/:/ansflow-service\nnobody:x:65534:65534:nobody:/:/ansflow-service\n' > $(BIN)/static/passwd
	@for b in $$(ls $(BIN)/static | grep -v passwd); do \
		docker build -q -f deploy/docker/Dockerfile --build-arg BIN=$$b -t ansflow/$$b:dev $(BIN)/static || exit 1; done

bench: ## run every benchmark and print comparable figures
	go test -p 1 -run '^$$' -bench . -benchtime 3x -timeout 30m $(MODULES)

bench-dispatch: ## orchestration overhead, throughput and the queue only
	go test -p 1 -run '^$$' -bench 'Dispatch|Throughput|Queue' -timeout 10m ./services/pipeline/orchestrator/

bench-scale: ## throughput and orchestration latency with 1, 2, 4 and 8 runner processes on a 3-node NATS cluster (R3)
	cd cmd/ansflow && go test -run '^$$' -bench 'ScaleOut' -benchtime 3x -timeout 20m .

FUZZTIME ?= 30s
fuzz: ## run each fuzz target (webhook verification and parsing, the source unpacker, the spec parser, the templater) for FUZZTIME
	go test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./services/pipeline/webhook/
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./services/pipeline/webhook/
	go test -run '^$$' -fuzz '^FuzzUnpack$$' -fuzztime $(FUZZTIME) ./pkg/source/
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/spec/
	go test -run '^$$' -fuzz '^FuzzRender$$' -fuzztime $(FUZZTIME) ./pkg/tmpl/

lint: ## gofmt, go vet
	@out=$$(gofmt -l pkg services cmd deploy/kubernetes); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet $(MODULES)

demo: build ## the README's main job: a real pipeline on the embedded default
	bash deploy/demo/run.sh

cluster-up: ## local Kubernetes control plane (etcd, apiserver, controllers, kwok)
	bash deploy/cluster/up.sh

cluster-down:
	bash deploy/cluster/down.sh

clean:
	rm -rf $(BIN)
