-- wrk script: unique keys, /set through the seed API. Each wrk thread has its own Lua state, so the key
-- carries a random per-thread prefix as well as a counter.
local counter = 0
local prefix = nil

request = function()
  if prefix == nil then
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
    prefix = tostring(math.random(1, 1000000000))
  end
  counter = counter + 1
  return wrk.format("GET", "/set?key=k" .. prefix .. "-" .. counter .. "&value=value-" .. counter)
end

done = function(summary, latency, requests)
  io.write(string.format("non-2xx or errors: %d\n", summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout))
  for _, p in pairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("p%g latency: %.2f ms\n", p, latency:percentile(p) / 1000))
  end
end
