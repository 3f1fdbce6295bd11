"""Applying prefect.yaml to a Prefect server (see `deployments/apply.py`)."""
