"""Coverage-guided fuzzing of the credentials parser and of VerifyResponse (``python -m tests.fuzz``)."""
