# storyreason: `make demo` (train both stages on the built-in world) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the pair that installs and imports together on these machines;
# pyproject keeps ranges (torch>=2.4,<2.15) for other machines.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo demo-prose docs test test-slow mutants bench bench-real clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install  # ARGS='key=value ...': Hydra overrides for both stages
	$(PY) -m storyreason.demo $(ARGS)

demo-prose: install  # the same for the world told in paragraphs (experiment=prose_demo), into outputs/prose_demo/
	$(PY) -m storyreason.demo --experiment prose_demo $(ARGS)

docs: install  # maintainers: docs/demo/ and the README's results block from the last `make demo`
	$(PY) -m storyreason.demo --docs

.PHONY: ablations
ablations: install  # ARGS='KEY=VALUE ...' for both stages, 'multimodal:KEY=VALUE' for one; writes docs/ablations.md (~40 min on 2 CPU cores)
	$(PY) -m storyreason.ablations $(ARGS)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

mutants: install  # contributors: each hand-written mutant in tests/mutants.py must fail its tests (docs/testing.md)
	$(PY) -m tests.mutants

bench: install
	$(PY) benchmarks/bench.py

bench-real: install  # ARGS='--train 300 --test 60' for a smaller stand-in, '--keep' to reuse finished steps
	$(PY) benchmarks/bench_real.py $(ARGS)

.PHONY: bench-cli
bench-cli: install  # wall time of `train.py --help`, `--cfg job` and a tab completion (docs/console.md)
	$(PY) benchmarks/cli_time.py $(ARGS)

clean:
	rm -rf outputs/pretrain_ae outputs/multimodal outputs/multirun outputs/cache outputs/demo
