-- wrk script for benches/once/run.sh: each connection's requests cycle
-- through BENCH_PREFIX/products/p0001.json .. pNNNN.json (NNNN from
-- BENCH_FILES, default 1000), plain GETs over keep-alive. At the end it
-- prints one machine-readable line:
--   WRK_RESULT requests=N duration_us=N errors=N non2xx=N p50_us=N p99_us=N

local files = tonumber(os.getenv("BENCH_FILES") or "1000")
local prefix = os.getenv("BENCH_PREFIX") or ""
local counter = 0
local thread_count = 0

function setup(thread)
  -- Threads start at different offsets so that they do not ask in step.
  thread:set("offset", thread_count * 97)
  thread_count = thread_count + 1
end

function init(args)
  counter = offset or 0
end

function request()
  counter = counter + 1
  local path = string.format("%s/products/p%04d.json", prefix, (counter % files) + 1)
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d errors=%d non2xx=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
