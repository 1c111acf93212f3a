"""Credentials from real OpenLDAP (slapd) and a real Samba Active Directory DC."""
