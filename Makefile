# The two set-up commands of the README. Both create the environment they need on a fresh machine.
.PHONY: run test
run:    ## run the main job on the embedded default: simulator -> file source -> buffer -> training cycle -> gate
	scripts/run.sh
test:   ## lint, type-check and run the whole test suite against a real Kafka broker it starts itself
	scripts/test.sh
