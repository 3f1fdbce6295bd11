-- wrk script for bench/webhook.py: POST one typical scenario event (233 bytes) to /event, or a
-- batch of them to /events.
--
-- The body is static, so wrk sends it without calling Lua per request (the fastest path; the load
-- generator must not be the bottleneck). `done` prints one machine-readable line that the bench parses.
--
-- BENCH_MAX_RESPONSES=N (optional) stops the thread after N responses; the bench uses it to send an
-- exact number of events before reading a server's memory. It makes wrk call Lua per response, so it
-- is off for the throughput runs.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local event = '{"staffer_id":"st-0042","sig_hash":"9f1c2e7a4b5d6e8f","event_kind":"fill",'
  .. '"role":"welder","city":"Toledo","state":"OH","count":3,"success":true,'
  .. '"duration_ms":1234,"rescue_attempted":false,"rescue_succeeded":false,"source":"scenario"}'
wrk.body = event

-- BENCH_BATCH=N (optional): the body is a JSON array of N copies of the event, for POST /events.
local batch = tonumber(os.getenv("BENCH_BATCH") or "0") or 0
if batch > 0 then
  local events = {}
  for i = 1, batch do
    events[i] = event
  end
  wrk.body = "[" .. table.concat(events, ",") .. "]"
end

local cap = tonumber(os.getenv("BENCH_MAX_RESPONSES") or "0") or 0
local seen = 0

if cap > 0 then
  function response(status, headers, body)
    seen = seen + 1
    if seen >= cap then
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx":%d,'
      .. '"connect":%d,"read":%d,"write":%d,"timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
