# Two commands do all the set-up on a fresh machine (Python 3.11 + pip):
#   make demo   install into .venv, then run the main job: the quick sweep on a local Ray
#               (records under results/, figures under report/)
#   make test   install into .venv, then run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

install: $(VENV)/.installed

# constraints.txt pins every package exactly (torch 2.13.0: a range would pull CUDA builds)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: install
	$(BIN)/phasemap sweep configs/quick.yaml --out results --resume
	$(BIN)/phasemap report results --sweep quick --out report

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results report
