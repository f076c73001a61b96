-- wrk script of bench/http.py: replays pre-signed requests, one file per wrk thread.
-- Each file holds records "<length>\n<raw HTTP request>"; a thread sends its records once,
-- in order, then repeats the last one (counted as "wrapped", so a run never double-counts).
-- Responses are counted by status, and by status of those answered Idempotent-Replayed.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local f = assert(io.open(args[1] .. "/requests-" .. id .. ".bin", "rb"))
  local data = f:read("*a")
  f:close()
  records = {}
  local pos = 1
  while pos <= #data do
    local nl = string.find(data, "\n", pos, true)
    local len = tonumber(string.sub(data, pos, nl - 1))
    records[#records + 1] = string.sub(data, nl + 1, nl + len)
    pos = nl + len + 1
  end
  n = 0
  wrapped = 0
  statuses = {}
  replayed = {}
end

function request()
  n = n + 1
  if n > #records then
    wrapped = wrapped + 1
    n = #records
  end
  return records[n]
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then
    replayed[k] = (replayed[k] or 0) + 1
  end
end

local function add(into, from)
  for k, v in pairs(from) do
    into[k] = (into[k] or 0) + v
  end
end

local function encode(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = string.format('"%s": %d', k, v)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all_statuses, all_replayed, all_wrapped, sent = {}, {}, 0, 0
  for _, thread in ipairs(threads) do
    add(all_statuses, thread:get("statuses"))
    add(all_replayed, thread:get("replayed"))
    all_wrapped = all_wrapped + thread:get("wrapped")
    sent = sent + thread:get("n")
  end
  local e = summary.errors
  io.write("WRK-JSON ")
  io.write(string.format(
    '{"duration_us": %d, "requests": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "statuses": %s, "replayed": %s, "wrapped": %d, "sent": %d, '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.duration, summary.requests, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, encode(all_statuses), encode(all_replayed),
    all_wrapped, sent, e.connect, e.read, e.write, e.timeout))
end
