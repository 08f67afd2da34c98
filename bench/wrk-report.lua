-- wrk script used by bench/run.sh: at the end of a run, print one
-- machine-readable line
--   WRK_REPORT {"requests":..,"rps":..,"p50_us":..,"p99_us":..,"p999_us":..,"errors":..,...}
-- wrk records latency in microseconds. Only a `done` hook is defined, so the
-- script costs nothing while the load runs (no per-request/response hooks).

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    'WRK_REPORT {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.2f,' ..
    '"p50_us":%.1f,"p75_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,' ..
    '"max_us":%.1f,"mean_us":%.1f,"stdev_us":%.1f,' ..
    '"errors":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
    '"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes, summary.requests / secs,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, latency.stdev,
    errors, e.connect, e.read, e.write, e.status, e.timeout))
end
