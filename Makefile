# The two set-up commands of the README. Both create the environment they need on a fresh machine.
.PHONY: run test
run:    ## the main job on the embedded default (rankrl demo): simulated traffic -> streamer -> buffer -> scheduled trainer -> gate -> champion
	scripts/run.sh
test:   ## lint, type-check and run the whole test suite against a real Kafka broker it starts itself
	scripts/test.sh
