# Every target creates .venv when it is missing. On the build machines, torch comes from local
# wheels (the pins below); elsewhere pip resolves a normal torch >= 2.4 from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN ?= $(shell test -d /etc/xdg/pip && echo "torch==2.14.1 torchvision==0.29.1")
export DS_ACCELERATOR ?= cpu
export WANDB_MODE ?= offline

.PHONY: setup demo demo-finetune test bench gpu-check gpu-wheels lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_PIN),$(PIP) install -q $(TORCH_PIN))

# The demo trains with DeepSpeed, so the main install carries the [train] extra. Both installs take the
# tested set of versions from constraints.txt (pyproject.toml itself keeps compatible ranges).
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e ".[train]"
	touch $@

# The tests run the torchcodec backend too ([gpu] is part of [dev]); torchcodec loads FFmpeg's shared
# libraries from the system. Where they are missing and apt-get can run as root they are installed
# (about 20 s); elsewhere the torchcodec tests say they are skipped.
$(VENV)/.ffmpeg-libs: | $(PY)
	@if ldconfig -p | grep -q libavcodec; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null \
		|| echo "apt-get could not install ffmpeg: the torchcodec tests will be skipped"; \
	else echo "FFmpeg's shared libraries are missing: the torchcodec tests will be skipped"; fi
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(PY) $(VENV)/.ffmpeg-libs
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) train.py experiment=demo

# The demo's model fine-tuned for retrieval (experiment/ft_retrieval_demo.yaml): `make demo` runs first when
# its weights are missing; prints val R@1 (text-to-video) of the starting weights and after every epoch.
DEMO_OUT = $${VICLIP_OUTPUT:-runs}
DEMO_DATA = $${VICLIP_DATA:-data}
demo-finetune: $(VENV)/.installed
	@test -f "$(DEMO_OUT)/demo/weights/unmasked.pth" || $(PY) train.py experiment=demo
	$(PY) tools/make_synthetic.py --out "$(DEMO_DATA)/synthetic_ft" --n-train 1 --n-eval 400 --seed 1 >/dev/null
	$(PY) train.py experiment=ft_retrieval_demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest

bench: $(VENV)/.installed-dev
	$(PY) bench/model_step.py

# One H100/H200-class GPU, under 9 minutes, one table (bench/gpu_check.py); DeepSpeed on CUDA here.
gpu-check: $(VENV)/.installed-dev
	DS_ACCELERATOR=cuda $(PY) bench/gpu_check.py

# The wheels a lent GPU machine lacks (cp312) into the ignored .whl/, their size against what travels, and the
# call to make there: bench/gpu_check.sh with the device's own python and torch.
gpu-wheels: $(VENV)/.installed-dev
	$(PY) bench/gpu_wheels.py --dest .whl

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check viclip tools tests bench train.py eval.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
