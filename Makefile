# The README's two set-up commands. Both install (idempotently) into .venv/ first.
.PHONY: run test

# The main job on the bundled default: pretrain the tiny preset on the bundled corpus, on the CPU
# (run directory runs/default; a second `make run` resumes it and finds it finished).
run:
	scripts/install.sh
	.venv/bin/mttt pretrain

test:
	scripts/install.sh dev
	.venv/bin/python -m pytest
