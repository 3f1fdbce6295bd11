"""The webhook: `POST /event`, `GET /health`, `GET /stats` under uvicorn.

`app` (the ASGI application) → `events` (body validation) → the intake (`observer.intake`, durable
group commit) → `ledger` (stats window and idempotency, following the intake); `notify` wakes the
ingestion flow, `health` probes the gateway, `serve` binds the port and runs uvicorn with
`protocol`, its HTTP/1.1 connections bounded in head size, time and number.
"""
