"""Hardening tests: mutual TLS, lockout, userhash, audit, secrets in logs."""
