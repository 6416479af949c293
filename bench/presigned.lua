-- wrk script: sends pre-signed requests read from files, one file per wrk thread.
--
--   wrk -t T -c C -d D -s bench/presigned.lua URL -- PREFIX
--
-- Thread i reads PREFIX.i (length-prefixed raw HTTP requests, see bench/_presign.py) and
-- sends each request once, in order. When a thread runs out it starts over and counts a
-- wrap: the service deduplicates repeats, so a run that wrapped is refused by the bench.
-- done() prints one line "WRK_JSON {...}" with the counts and latency percentiles.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1] .. "." .. id, "rb"))
  local data = file:read("*a")
  file:close()
  presigned = {}
  local pos = 1
  while pos <= #data do
    local newline = data:find("\n", pos, true)
    local length = tonumber(data:sub(pos, newline - 1))
    presigned[#presigned + 1] = data:sub(newline + 1, newline + length)
    pos = newline + length + 1
  end
  index = 0
  wrapped = 0
end

function request()
  index = index + 1
  if index > #presigned then
    index = 1
    wrapped = wrapped + 1
  end
  return presigned[index]
end

function done(summary, latency, requests)
  local wraps = 0
  for _, thread in ipairs(threads) do
    wraps = wraps + thread:get("wrapped")
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "wrapped": %d, '
      .. '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, wraps, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
