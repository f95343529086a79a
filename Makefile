# The two entry points of the README. Each installs what it needs first.
#   make image   builds the default image (images/debian-12.yaml) into out/debian-12/
#   make test    runs every test, as CI does (.ci/run)
# One layer alone: make test-fast (no image build, no VM), make test-vm.

SPEC ?= images/debian-12.yaml

.PHONY: image agent-image test test-fast test-vm deps lint bootpatch builder-release bench-bootpatch bench-firstboot bench-builder bench-firmware bench-fleet bench-agent-idle

deps:
	sh scripts/deps/bootpatch.sh
	sh scripts/deps/builder.sh
	sh scripts/deps/templates.sh

bootpatch:
	./scripts/build-bootpatch >/dev/null

# The tests drive the release builder (the binary users run; hashing and
# compressing whole images is slow unoptimised) and share the images it builds;
# the agent image test packs the static agent (scripts/build-agent).
builder-release:
	cargo build --locked --release -q -p builder

TEST_ENV = BOOTPATCH_BIN=$$(./scripts/build-bootpatch) BUILDER_BIN=$(CURDIR)/target/release/builder \
	AGENT_BIN=$$(./scripts/build-agent)

image: deps bootpatch
	cargo run --locked --release -q -p builder -- build $(SPEC)

# The updater agent's OCI image archive (static binary, one layer), and its digest beside it.
AGENT_IMAGE ?= out/agent-image/bootpatch-updater.oci.tar
agent-image: builder-release
	./scripts/build-agent >/dev/null
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) ./target/release/builder agent-image --agent $$(./scripts/build-agent) --out $(AGENT_IMAGE)

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

# Each test binary in turn, with its time (scripts/run-tests; table in target/test-times.txt).
test: deps bootpatch builder-release lint
	$(TEST_ENV) ./scripts/run-tests all

test-fast: deps bootpatch builder-release lint
	$(TEST_ENV) ./scripts/run-tests fast

test-vm: deps bootpatch builder-release
	$(TEST_ENV) ./scripts/run-tests vm

bench-bootpatch: deps bootpatch
	BOOTPATCH_BIN=$$(./scripts/build-bootpatch) cargo run --locked --release -q -p bootpatch-e2e --example bench_bootpatch

bench-firstboot: deps bootpatch
	BOOTPATCH_BIN=$$(./scripts/build-bootpatch) cargo run --locked --release -q -p bootpatch-e2e --example bench_firstboot

bench-builder: deps bootpatch
	sh scripts/bench-builder.sh

# Build time of the hybrid GRUB loader against systemd-boot, and boot time under each firmware.
bench-firmware: deps bootpatch
	sh scripts/bench-firmware.sh

# The updater's fleet benchmark (issue 13): SIMULATED hosts whose reboots kill the agent and
# last 3-10 x the Lease, time scaled; each case exits non-zero if a correctness goal is missed.
# One case: make bench-fleet FLEET_CASES="100:1:60"  (nodes:maxConcurrency:time factor).
FLEET_CASES ?= 100:10%:60 100:1:60 1000:10%:20 1000:1:1200
# The whole chain in a VM (updater/tests/cluster_vm.rs), then the agent's RSS and CPU in
# the guest over 5 idle minutes (the lines that start with cluster_vm:).
bench-agent-idle: deps bootpatch builder-release
	$(TEST_ENV) CLUSTER_VM_IDLE_SECS=300 cargo test --locked -q -p updater --test cluster_vm -- --nocapture

bench-fleet:
	st=0; for c in $(FLEET_CASES); do \
		n=$${c%%:*}; r=$${c#*:}; m=$${r%%:*}; f=$${r#*:}; \
		cargo run --locked --release -q -p updater --example fleet -- \
			--nodes $$n --concurrency $$m --time-factor $$f --timeout 1200 || st=1; \
	done; exit $$st
