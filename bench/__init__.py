"""Observer's benchmarks: `make bench` (or `python -m bench [NAME ...]`). See bench/README.md."""
