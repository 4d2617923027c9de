-- wrk script: reads spread over preloaded keys k00000 .. k<N-1>, for scripts/bench-reads.sh.
-- Usage: wrk ... -s benches/get.lua URL -- MODE NKEYS
-- MODE: get           GET /get?key=K                    (nimbus, linearizable)
--       get-relaxed   GET /get?key=K&relaxed=true       (nimbus, local, may be stale)
--       get-stale     GET /get?key=K&consistency=stale  (nimbus, local, may be stale)
--       kv            GET /v1/kv/K                      (nimbus, linearizable)
--       kv-stale      GET /v1/kv/K?consistency=stale    (nimbus, local, may be stale)
--       etcd          POST /v3/kv/range {"key": base64}  (etcd gateway, linearizable)
--       etcd-serial   POST /v3/kv/range {"key": base64, "serializable": true}  (etcd, local)
-- Every request is built once in init(); request() only picks the next one, so the Lua cost per request
-- is the same for both systems and small. Each thread starts at a random offset and walks the keys in order.

local reqs = {}
local n = 0
local i = 0

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Standard base64 with padding (etcd's gateway takes bytes fields as base64).
local function base64(s)
  local out = {}
  for p = 1, #s, 3 do
    local a, b, c = s:byte(p, p + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {}
    for k = 3, 0, -1 do
      local d = math.floor(v / (64 ^ k)) % 64
      q[#q + 1] = b64chars:sub(d + 1, d + 1)
    end
    if not b then q[3] = "=" end
    if not c then q[4] = "=" end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

local function key(k)
  return string.format("k%05d", k)
end

function init(args)
  local mode = args[1] or "get"
  local nkeys = tonumber(args[2] or "1000")
  for k = 0, nkeys - 1 do
    local r
    if mode == "get" then
      r = wrk.format("GET", "/get?key=" .. key(k))
    elseif mode == "get-relaxed" then
      r = wrk.format("GET", "/get?key=" .. key(k) .. "&relaxed=true")
    elseif mode == "get-stale" then
      r = wrk.format("GET", "/get?key=" .. key(k) .. "&consistency=stale")
    elseif mode == "kv" then
      r = wrk.format("GET", "/v1/kv/" .. key(k))
    elseif mode == "kv-stale" then
      r = wrk.format("GET", "/v1/kv/" .. key(k) .. "?consistency=stale")
    elseif mode == "etcd" then
      r = wrk.format("POST", "/v3/kv/range", { ["Content-Type"] = "application/json" },
        '{"key":"' .. base64(key(k)) .. '"}')
    elseif mode == "etcd-serial" then
      r = wrk.format("POST", "/v3/kv/range", { ["Content-Type"] = "application/json" },
        '{"key":"' .. base64(key(k)) .. '","serializable":true}')
    else
      error("unknown mode " .. mode)
    end
    reqs[#reqs + 1] = r
  end
  n = #reqs
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  i = math.random(0, n - 1)
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

-- One machine-readable line, parsed by scripts/bench-reads.sh.
function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d rps=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.status, e.connect, e.read, e.write, e.timeout))
end
