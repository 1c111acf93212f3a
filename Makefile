# sipauth: `make run` starts the service on its embedded defaults; `make test` runs every test.
# Both set up what they need (virtualenv, Python packages, Debian packages when root or sudo).

VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SETUP  := deploy/dev/setup.sh
PYTEST_ARGS ?=

# Commands the tests run for real, and the Debian package that provides each.
TEST_PACKAGES := redis-server:redis-server redis-cli:redis-server slapd:slapd slapadd:slapd samba:samba samba-tool:samba ip:iproute2
# A Samba AD DC needs three packages that samba only recommends (we install without recommends):
# the schema files samba-tool provision reads, the directory's LDB modules, and the VFS modules (acl_xattr).
TEST_PACKAGES += dpkg:samba-ad-provision dpkg:samba-dsdb-modules dpkg:samba-vfs-modules
# SIP end to end: Kamailio with its embedded Python (app_python3) and SIPp (Debian's sip-tester).
TEST_PACKAGES += kamailio:kamailio sipp:sip-tester dpkg:kamailio-python3-modules
# The audit trail's fail2ban filter is checked with fail2ban's own regex tool.
TEST_PACKAGES += fail2ban-regex:fail2ban

# Kamailio's embedded Python is Debian's /usr/bin/python3 and ignores virtualenvs: it loads
# sipauth-client and grpcio from this venv's site-packages (tests/support/kamailio.py points it there).
KAMAILIO_VENV  ?= .venv-kamailio
KAMAILIO_STAMP := $(KAMAILIO_VENV)/.installed

# `make fuzz`: the parser and VerifyResponse under atheris (libFuzzer), FUZZ_RUNS inputs in all, split
# parser:verify by FUZZ_WEIGHTS (the parser is about four times faster). Not part of `make test`.
# Crashing inputs land in .fuzz/crashes/TARGET/; `$(BIN)/python -m tests.fuzz fuzz TARGET FILE` replays one.
# FUZZ_TOLERATE names known, reported issues (tests/fuzz/fuzz_targets.py KNOWN_ISSUES) to count, not fail on.
FUZZ_RUNS     ?= 1000000
FUZZ_WEIGHTS  ?= parser=3,verify=1
FUZZ_TOLERATE ?=

.PHONY: run test lint typecheck proto proto-check sysdeps venv kamailio-venv clean fuzz bench

$(STAMP): pyproject.toml clients/python/pyproject.toml $(SETUP)
	$(SETUP) venv $(VENV)
	touch $@

venv: $(STAMP)

$(KAMAILIO_STAMP): clients/python/pyproject.toml $(SETUP)
	$(SETUP) kamailio-venv $(KAMAILIO_VENV)
	touch $@

kamailio-venv: $(KAMAILIO_STAMP)

sysdeps:
	$(SETUP) packages $(TEST_PACKAGES)

run: $(STAMP)
	$(BIN)/sipauth serve --config examples/sipauth.yaml

proto: $(STAMP)
	$(BIN)/python proto/generate.py

proto-check: $(STAMP)
	$(BIN)/python proto/generate.py --check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy service/sipauth clients/python/sipauth_client

test: $(STAMP) sysdeps $(KAMAILIO_STAMP) proto-check lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# `make bench`: sipauth (Redis + slapd behind the cache) against an empty-handler gRPC server, then
# SIPp -> Kamailio three ways; prints the table, writes bench/results/. ~6 minutes. Not part of `make test`.
BENCH_PACKAGES := $(TEST_PACKAGES) h2load:nghttp2-client taskset:util-linux
BENCH_ARGS ?=

bench: $(STAMP) $(KAMAILIO_STAMP)
	$(SETUP) packages $(BENCH_PACKAGES)
	$(BIN)/python -m bench $(BENCH_ARGS)

fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz run --runs $(FUZZ_RUNS) --weights $(FUZZ_WEIGHTS) --tolerate "$(FUZZ_TOLERATE)"

clean:
	rm -rf $(VENV) $(KAMAILIO_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .fuzz
