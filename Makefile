.PHONY: venv test run bench clean
venv:
	bash scripts/bootstrap.sh
test:
	bash scripts/test.sh
run:
	bash scripts/run.sh
bench:
	bash scripts/run.sh bench engine
clean:
	rm -rf .venv build src/*.egg-info .pytest_cache .hypothesis
