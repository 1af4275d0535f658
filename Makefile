# The README's two set-up commands. Both install (idempotently) into .venv/ first.
.PHONY: run test

# The main job on the bundled default: the TTT layer benchmark at T = 512 and 2048.
run:
	scripts/install.sh
	.venv/bin/python benchmarks/ttt_layer.py --seq-lens 512,2048

test:
	scripts/install.sh dev
	.venv/bin/python -m pytest
