# Two commands do all the set-up on a fresh machine (Python 3.11 + pip):
#   make demo   install into .venv, then run the main job: the quick sweep on a local Ray
#               (records under results/, figures under report/)
#   make test   install into .venv, then run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install browser clean

install: $(VENV)/.installed

# constraints.txt pins every package exactly (torch 2.13.0: a range would pull CUDA builds)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: install
	$(BIN)/phasemap sweep configs/quick.yaml --out results --resume
	$(BIN)/phasemap report results --sweep quick --out report

test: install browser
	$(BIN)/python -m pytest -q

# Debian's chromium for the browser tests, where it is missing and apt-get can install it (as root);
# elsewhere tests/test_browser.py skips and says why
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; }; }; } || \
	  echo "chromium not installed (needs root and apt-get): the browser tests will skip"

clean:
	rm -rf $(VENV) results report
