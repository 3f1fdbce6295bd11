"""The ops history: every op this host (and every host sharing the table) ever wrote.

- `stream`: this host's stream of ops on disk, the hot ops.jsonl and the sealed segments behind
  it, by position (no polars: the webhook reads its tail);
- `schema`: the history table's one schema, and how op lines become its rows;
- `table`: the Delta Lake table (local or S3), its commits and its upkeep;
- `reader`: hot + history as one consistent view, the one place readers of ops get them from.

`deltalake` is imported only inside `table`'s functions: never in the warm worker template.
"""
