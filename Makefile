# berth — `make help` lists the targets.
GO      ?= go
VERSION ?= $(shell git describe --tags --dirty --always 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: help build test test-short test-integration lint fuzz faults bench bench-fleet cross screenshots quickstart clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build bin/berth and bin/berthd
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/berth ./cmd/berth
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/berthd ./cmd/berthd

test: ## all tests, integration included (needs the Docker Engine)
	$(GO) test ./...

test-short: ## unit tests only
	$(GO) test -short ./...

test-integration: ## the integration tests against the real engine, verbose
	$(GO) test -count=1 -v ./internal/berthtest

lint: ## gofmt, go vet, staticcheck (if installed)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	@command -v staticcheck >/dev/null && staticcheck ./... || echo "staticcheck not installed: go install honnef.co/go/tools/cmd/staticcheck@latest"

fuzz: ## fuzz every decoder of untrusted input for a minute each
	$(GO) test ./internal/compose -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime 60s -fuzzminimizetime 1s
	$(GO) test ./internal/release -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 60s
	$(GO) test ./internal/content -run '^$$' -fuzz '^FuzzDecodeIndex$$' -fuzztime 60s
	$(GO) test ./internal/transfer -run '^$$' -fuzz '^FuzzDecodeFrames$$' -fuzztime 60s
	$(GO) test ./internal/transfer -run '^$$' -fuzz '^FuzzDecodeIndexDelta$$' -fuzztime 60s
	$(GO) test ./internal/delta -run '^$$' -fuzz '^FuzzPatch$$' -fuzztime 60s
	$(GO) test ./internal/imagetar -run '^$$' -fuzz '^FuzzOCIManifests$$' -fuzztime 60s
	$(GO) test ./internal/server -run '^$$' -fuzz '^FuzzSealRelease$$' -fuzztime 60s
	$(GO) test ./internal/registry -run '^$$' -fuzz '^FuzzManifest$$' -fuzztime 60s
	$(GO) test ./internal/server -run '^$$' -fuzz '^FuzzDeviceState$$' -fuzztime 60s
	$(GO) test ./internal/server -run '^$$' -fuzz '^FuzzImageRegistration$$' -fuzztime 60s
	$(GO) test ./internal/server -run '^$$' -fuzz '^FuzzStatePatch$$' -fuzztime 60s
	$(GO) test ./internal/mergepatch -run '^$$' -fuzz '^FuzzDiffApply$$' -fuzztime 60s
	$(GO) test ./internal/content -run '^$$' -fuzz '^FuzzSplit$$' -fuzztime 60s
	$(GO) test ./internal/signing -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime 60s
	$(GO) test ./internal/buildkit -run '^$$' -fuzz '^FuzzProgress$$' -fuzztime 60s

faults: ## the fault suite at full length, as root (~20 min; docs/reliability.md): 100 kills, 20 engine restarts, 20 link cuts per path, 10 server faults
	BERTH_FAULT_KILLS=100 BERTH_FAULT_ENGINE_RESTARTS=20 BERTH_FAULT_CUTS=20 BERTH_FAULT_SERVER=10 \
	  $(GO) test ./internal/berthtest -count 1 -v -timeout 90m \
	  -run '^(TestKillAtRandomPoints|TestEngineRestartMidSwitch|TestPushOverFaultyLink|TestFleetPullOverFaultyLink|TestReleaseUploadOverFaultyLink|TestFullStateDisk|TestFullEngineDisk|TestEngineCrashDuringStop|TestKillDuringSwitch|TestServerFaultsMidRollout|TestFleetReportsAfterServerOutage|TestHungHandOverRollsBack)$$'
	$(GO) test ./internal/content ./internal/transfer -count 1 -v -run 'Hostile'

bench: ## benchmarks (results go in BENCHMARKS.md)
	$(GO) test ./bench/... -run '^$$' -bench . -benchtime 5x -count 1

bench-fleet: ## the fleet server under 10,000 simulated devices, SQLite and PostgreSQL (~8 min)
	$(GO) run ./bench/fleet

cross: ## berthd for linux/amd64, arm64 and arm/v7 into bin/
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/berthd-linux-amd64 ./cmd/berthd
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/berthd-linux-arm64 ./cmd/berthd
	GOOS=linux GOARCH=arm GOARM=7 CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/berthd-linux-armv7 ./cmd/berthd

screenshots: ## the dashboard's screenshots in docs/screenshots, from its browser test (needs chromium)
	BERTH_SCREENSHOTS=$(CURDIR)/docs/screenshots $(GO) test ./internal/berthtest -run '^TestDashboard$$' -count 1

quickstart: ## run the quickstart
	$(GO) run ./cmd/berth quickstart

clean: ## remove bin/ and the quickstart state
	rm -rf bin .berth
