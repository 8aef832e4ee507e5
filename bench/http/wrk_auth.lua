-- wrk script: nginx auth_http requests, one connection per request (Connection: close),
-- a mix of users (from the file named by $USERS: "user<TAB>password" lines) and many
-- client IPs. Counts answers that are not "Auth-Status: OK".
local users = {}
local n = 0
bad = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("USERS")) do
    local u, p = line:match("^([^\t]+)\t(.*)$")
    if u then users[#users + 1] = { u, p } end
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
  n = n + 1
  local u = users[math.random(#users)]
  local ip = string.format("10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
  return wrk.format("GET", "/auth", {
    ["Auth-Method"] = "plain",
    ["Auth-User"] = u[1],
    ["Auth-Pass"] = u[2],
    ["Auth-Protocol"] = "imap",
    ["Auth-Login-Attempt"] = "1",
    ["Client-IP"] = ip,
    ["Connection"] = "close",
  })
end

function response(status, headers, body)
  if headers["Auth-Status"] ~= "OK" then bad = bad + 1 end
end

function done(summary, latency, requests)
  local total_bad = 0
  for _, t in ipairs(threads) do total_bad = total_bad + (t:get("bad") or 0) end
  io.write(string.format("RESULT requests=%d duration_s=%.2f rps=%.0f not_ok=%d errors=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6), total_bad,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
