# The two commands that do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
# uv: on PATH, else ~/.local/bin, else bootstrapped into .tools/ (a private venv: works under PEP 668 too)
UV := $(shell command -v uv 2>/dev/null || { [ -x $(HOME)/.local/bin/uv ] && echo $(HOME)/.local/bin/uv; } || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen
FASHION := data/fashion-mnist
DEMO := checkpoints/demo
DEMO_SIGMA ?= 0.5
DEMO_EPOCHS ?= 3

.PHONY: demo test lint env data uv clean-demo paper objectives

uv:
	@command -v $(UV) >/dev/null 2>&1 || { echo "installing uv into .tools/"; \
	  { python3 -m venv .tools && .tools/bin/pip install --quiet uv; } || \
	  { rm -rf .tools && mkdir -p .tools/bin && python3 -m pip install --user --quiet uv && ln -sf $(HOME)/.local/bin/uv .tools/bin/uv; } || \
	  { echo "could not install uv: see https://docs.astral.sh/uv/getting-started/installation/" >&2; exit 1; }; }

env: uv
	@$(UV) sync --frozen --inexact --quiet  # --inexact: packages the user added (plugins) stay

# Fashion-MNIST: the system copy if the Debian package is installed, else the package unpacked into ./data (no root).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || [ -f $(FASHION)/t10k-labels-idx1-ubyte.gz ]; then :; else \
	  echo "fetching Fashion-MNIST (Debian package dataset-fashion-mnist) into $(FASHION)"; \
	  tmp=$$(mktemp -d) && { (cd $$tmp && apt-get download dataset-fashion-mnist >$$tmp/log 2>&1) || \
	    { cat $$tmp/log >&2; echo "could not fetch the Debian package dataset-fashion-mnist (run 'sudo apt-get update' first?)." \
	      "Or put the four *-ubyte.gz files of https://github.com/zalandoresearch/fashion-mnist into $(FASHION)/" >&2; \
	      rm -rf $$tmp; exit 1; }; } && \
	  dpkg -x $$tmp/dataset-fashion-mnist_*.deb $$tmp/pkg && mkdir -p $(FASHION) && \
	  cp $$tmp/pkg/usr/share/datasets/fashion-mnist/*.gz $(FASHION)/ && rm -rf $$tmp; fi

# Train a small CNN under DSSN noise on Fashion-MNIST, certify 500 test images exactly, print the report.
demo: env data
	@start=$$(date +%s); \
	$(RUN) smoothcore train-classifier --dataset fashion-mnist --model cnn --noise dssn --sigma $(DEMO_SIGMA) \
	  --epochs $(DEMO_EPOCHS) --batch-size 64 --lr 0.05 --out $(DEMO) --overwrite && \
	$(RUN) smoothcore certify $(DEMO) --skip 20 --limit 500 --max-batch 2048 --overwrite && \
	$(RUN) smoothcore report $(DEMO) --radii 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8 --plot $(DEMO)/certified_accuracy.png && \
	echo "demo finished in $$(( $$(date +%s) - start )) s"

# The paper's experiment on Fashion-MNIST (recipes/paper-fmnist.toml): 20 runs trained and certified, resuming what is
# done, then the per-run table, the best-over-sigma envelopes and the plot. About an hour on 2 CPU cores (README).
PAPER_RADII := 0.25,0.5,0.75,1,1.5,2,2.5,3,3.5,4
paper: env data
	@start=$$(date +%s); \
	$(RUN) smoothcore sweep --recipe recipes/paper-fmnist.toml --radii $(PAPER_RADII) && \
	$(RUN) smoothcore report checkpoints/paper-fmnist --radii $(PAPER_RADII) --plot checkpoints/paper-fmnist/certified_accuracy.png && \
	echo "paper finished in $$(( $$(date +%s) - start )) s"

# Training objectives beyond the paper (recipes/objectives-fmnist.toml): plain, stability, consistency and MACER under
# DSSN sigma 0.5 and 2.0 and SSN sigma 1.0, trained and certified, resuming what is done, then the report.
OBJECTIVES_RADII := 0.25,0.5,0.75,1,1.25,1.5,1.75,2
objectives: env data
	@start=$$(date +%s); \
	$(RUN) smoothcore sweep --recipe recipes/objectives-fmnist.toml --radii $(OBJECTIVES_RADII) && \
	$(RUN) smoothcore report checkpoints/objectives-fmnist --radii $(OBJECTIVES_RADII) --plot checkpoints/objectives-fmnist/certified_accuracy.png && \
	echo "objectives finished in $$(( $$(date +%s) - start )) s"

lint: env
	@$(RUN) ruff check smoothcore plugins denoisers tests benchmarks examples
	@$(RUN) ruff format --check --quiet smoothcore plugins denoisers tests benchmarks examples || \
	  { echo "run: uv run ruff format smoothcore plugins denoisers tests benchmarks examples" >&2; exit 1; }

test: env data lint
	@$(RUN) pytest -q -x

clean-demo:
	rm -rf $(DEMO)
