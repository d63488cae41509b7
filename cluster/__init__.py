"""Operator scripts and the `yunkai` command that fronts every process."""
