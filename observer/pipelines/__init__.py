"""The work the flows orchestrate, one module per pipeline, each with its parameters model (the flow's
UI form), its run report (which renders its own artifact rows and markdown) and its steps:

- `ingest`: the spool → ops.jsonl (polars, checkpointed, exactly once);
- `corrections`: the overseer's corrections file → ops (checkpointed tail, quarantine);
- `analysis` (with `failures`, `grouping`, `analysis_charts`): new failures → LLM diagnosis → the
  gateway's `/log`;
- `playbooks`: repeated successes per endpoint → playbook entries on `/log`;
- `frames`: the one polars reader of spool and ops.jsonl lines.

These modules import polars; the webhook and `observed()` never import them.
"""
