# The two entry points of the README. Each installs what it needs first.
#   make image   builds the default image (images/debian-12.yaml) into out/debian-12/
#   make test    runs every test, as CI does (.ci/run)

SPEC ?= images/debian-12.yaml

.PHONY: image test deps lint bootpatch bench-bootpatch bench-firstboot bench-builder

deps:
	sh scripts/deps/bootpatch.sh
	sh scripts/deps/builder.sh
	sh scripts/deps/templates.sh

bootpatch:
	./scripts/build-bootpatch >/dev/null

image: deps bootpatch
	cargo run --locked --release -q -p builder -- build $(SPEC)

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

test: deps bootpatch lint
	BOOTPATCH_BIN=$$(./scripts/build-bootpatch) cargo test --locked --workspace --no-fail-fast

bench-bootpatch: deps bootpatch
	BOOTPATCH_BIN=$$(./scripts/build-bootpatch) cargo run --locked --release -q -p bootpatch-e2e --example bench_bootpatch

bench-firstboot: deps bootpatch
	BOOTPATCH_BIN=$$(./scripts/build-bootpatch) cargo run --locked --release -q -p bootpatch-e2e --example bench_firstboot

bench-builder: deps bootpatch
	sh scripts/bench-builder.sh
