-- wrk script for the benchmark's HTTP phase (paysim/bench/http.py): POST /authorize with
-- valid payments, each one distinct (its own seq, amount and Idempotency-Key, cards spread over
-- many numbers), so that no two collapse into one and every one goes through to Kafka.
--   wrk -t2 -c32 -d30s -s bench/authorize.lua http://127.0.0.1:8000 -- RUN_ID
-- At the end it prints one line, "paysim-wrk {json}": requests, answers outside 2xx, socket
-- errors, duration and latency percentiles (microseconds), for the benchmark to read.

local run_id = "wrk"
local counter = 0
local cards = {}
local CARDS = 512

-- Set in each thread's own Lua state by setup() (wrk runs one state per thread).
thread_id = thread_id or 0
local threads = {}

local function luhn_completed(partial)
  -- partial + its check digit
  local sum, double = 0, true
  for i = #partial, 1, -1 do
    local d = tonumber(partial:sub(i, i))
    if double then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
    double = not double
  end
  return partial .. tostring((10 - sum % 10) % 10)
end

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  run_id = args[1] or run_id
  -- Visa numbers 4242 07xx xxxx xxxC: none of them a documented test card with a fixed answer.
  for i = 0, CARDS - 1 do
    cards[i] = luhn_completed(string.format("424207%09d", i * 7919))
  end
end

function request()
  counter = counter + 1
  local seq = counter * 16 + thread_id
  local body = string.format(
    '{"card_number":"%s","exp_month":12,"exp_year":2035,"cvv":"123",' ..
    '"amount":%d,"currency":"EUR","run_id":"%s","seq":%d}',
    cards[seq % CARDS], 100 + seq % 9900, run_id, seq)
  local headers = {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = run_id .. "-" .. seq,
  }
  return wrk.format("POST", "/authorize", headers, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'paysim-wrk {"requests":%d,"non_2xx":%d,"socket_errors":%d,"timeouts":%d,' ..
    '"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p99_9_us":%d,"max_us":%d}\n',
    summary.requests, errors.status, errors.connect + errors.read + errors.write,
    errors.timeout, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
