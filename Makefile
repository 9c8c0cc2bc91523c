# The README's two set-up commands are `make run` and `make test`; both create the environment they need.
# The rest is the fast loop for whoever works here. `make help` lists every target.
.PHONY: help run test unit check
.DEFAULT_GOAL := help

help:   ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  make \1\t/' | expand -t 16

run:    ## the main job on the embedded default (rankrl demo): simulated traffic -> streamer -> buffer -> trainer -> gate -> champion
	scripts/run.sh

test:   ## what CI runs: lint, types and the whole suite against a real Kafka broker and Prometheus it starts itself
	scripts/test.sh

unit:   ## the fast tier: no Kafka, no Prometheus, no slow tests; no root or Java needed (under a minute)
	scripts/unit.sh

check:  ## ruff (lint and format) and mypy on the packages
	scripts/check.sh
