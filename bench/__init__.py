"""`make bench`: sipauth against an empty-handler gRPC server, gRPC and SIP level (see bench/README.md)."""
