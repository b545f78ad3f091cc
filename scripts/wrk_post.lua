-- wrk script: POST the bytes of the file named by $WRK_BODY as JSON, on every request.
--   WRK_BODY=one.json wrk -t2 -c64 -d10s --latency -s scripts/wrk_post.lua http://127.0.0.1:8080/predict
-- wrk counts answers that are not 2xx ("Non-2xx or 3xx responses") itself.
local path = assert(os.getenv("WRK_BODY"), "set WRK_BODY to the request body's file")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
