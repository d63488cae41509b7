"""The Python SDK internal services use to call yunkai."""
