# Shortcuts; each target is the README's command (tools/run.py needs only python3).
.PHONY: test test-fast unit demo bench bench-quick

test:
	python3 tools/run.py test

unit:
	python3 tools/run.py unit

test-fast:
	python3 tools/run.py test --no-matrix

demo:
	python3 tools/run.py demo

bench:
	python3 tools/run.py bench

bench-quick:
	python3 tools/run.py bench --quick
