-- Dovecot Lua passdb/userdb that asks `mailauth serve` over HTTP (POST /passdb,
-- POST /userdb, GET /users). For Dovecot 2.4, which removed the checkpassword driver; also
-- works with Dovecot 2.3's Lua passdb (package dovecot-auth-lua), where it is tested.
--
-- Needs luasocket (Debian: lua-socket) and dkjson (Debian: lua-dkjson), for Dovecot's Lua
-- version (5.4 on Debian 12).
--
-- Settings, all optional. Dovecot 2.4: `lua_settings { url = ... }` (given to
-- script_init). Dovecot 2.3 passes no arguments to the script: use the environment,
-- `import_environment = $import_environment MAILAUTH_URL=http://127.0.0.1:8185`.
--   url      / MAILAUTH_URL      base URL of mailauth serve (default http://127.0.0.1:8185)
--   timeout  / MAILAUTH_TIMEOUT  seconds per request        (default 5)
--   key      / MAILAUTH_KEY      shared secret, sent as X-Auth-Key ([auth.http] secret)
--
-- Answers of mailauth (src/auth/api.rs): {"result": "ok" | "password_mismatch" |
-- "user_unknown" | "user_disabled" | "internal_failure", "user", "home", "mail", "uid",
-- "gid", "proxy": {"host", "port"}}.
-- Never turns a failure into a password mismatch: anything but a clear answer from
-- mailauth (connection refused, timeout, HTTP status other than 200, bad JSON,
-- "internal_failure") is
-- PASSDB_RESULT_INTERNAL_FAILURE / USERDB_RESULT_INTERNAL_FAILURE, which Dovecot reports
-- to the client as a temporary failure.

local http = require("socket.http")
local ltn12 = require("ltn12")
local json = require("dkjson")
local mime = require("mime")

local settings = {
  url = os.getenv("MAILAUTH_URL") or "http://127.0.0.1:8185",
  timeout = tonumber(os.getenv("MAILAUTH_TIMEOUT") or "") or 5,
  key = os.getenv("MAILAUTH_KEY"),
}

local function apply(args)
  if type(args) ~= "table" then return end
  for k, v in pairs(args) do
    if k == "timeout" then
      settings.timeout = tonumber(v) or settings.timeout
    elseif k == "url" or k == "key" then
      settings[k] = v
    end
  end
end

-- 2.4 passes lua_settings to script_init (2.3 calls it without arguments).
function script_init(args) apply(args); return 0 end
function auth_passdb_init(args) apply(args) end
function auth_userdb_init(args) apply(args) end
function script_deinit() end

-- POST/GET a request; returns (status, body text) or (nil, error).
local function request(method, path, body)
  local out = {}
  local payload = body and json.encode(body) or nil
  local headers = { ["Connection"] = "close", ["Accept"] = "application/json" }
  if payload then
    headers["Content-Type"] = "application/json"
    headers["Content-Length"] = tostring(#payload)
  end
  if settings.key then headers["X-Auth-Key"] = settings.key end
  http.TIMEOUT = settings.timeout
  local ok, code = http.request({
    url = settings.url .. path,
    method = method,
    headers = headers,
    source = payload and ltn12.source.string(payload) or nil,
    sink = ltn12.sink.table(out),
  })
  if not ok then return nil, "request failed: " .. tostring(code) end
  return code, table.concat(out)
end

-- A JSON request; returns (status, decoded table) or (nil, error).
local function call(method, path, body)
  local code, text = request(method, path, body)
  if not code then return nil, text end
  local decoded, _, err = json.decode(text, 1, nil)
  if type(decoded) ~= "table" then
    return nil, "HTTP " .. tostring(code) .. ": bad JSON answer (" .. tostring(err) .. ")"
  end
  return code, decoded
end

-- The userdb/passdb extra fields of an answer, as Dovecot wants them.
local function fields(answer, prefix)
  local t = {}
  local fmap = answer.fields
  if type(fmap) == "table" then
    for k, v in pairs(fmap) do t[k] = tostring(v) end
  end
  for _, k in ipairs({ "user", "home", "mail", "uid", "gid", "quota_rule" }) do
    local v = answer[k]
    if v ~= nil and v ~= json.null then
      if k == "user" then t["user"] = tostring(v) else t[prefix .. k] = tostring(v) end
    end
  end
  if answer.proxy ~= nil and answer.proxy ~= json.null and answer.proxy ~= false then
    -- proxy fields: {host=..., port=..., ...} -> proxy=y host=... port=...
    t["proxy"] = "y"
    if type(answer.proxy) == "table" then
      for k, v in pairs(answer.proxy) do t[k] = tostring(v) end
    end
  end
  return t
end

local function result_of(answer)
  local r = answer.result
  if type(r) ~= "string" then return "tempfail" end
  return string.lower(r)
end

function auth_password_verify(req, pass)
  local body = { user = req.user, service = req.service, remote_ip = req.remote_ip }
  if utf8.len(pass) then
    body.password = pass
  else
    -- JSON strings are UTF-8: send other bytes base64-encoded
    body.password_b64 = (mime.b64(pass))
  end
  local code, answer = call("POST", "/passdb", body)
  if not code then
    req:log_error("mailauth: " .. tostring(answer))
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, ""
  end
  local r = result_of(answer)
  if r == "ok" and code == 200 then
    return dovecot.auth.PASSDB_RESULT_OK, fields(answer, "userdb_")
  elseif r == "password_mismatch" or r == "mismatch" or r == "fail" or r == "denied" then
    return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, ""
  elseif r == "user_unknown" or r == "unknown" or r == "not_found" then
    return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, ""
  elseif r == "user_disabled" or r == "disabled" then
    return dovecot.auth.PASSDB_RESULT_USER_DISABLED, ""
  end
  req:log_error("mailauth: temporary failure: " .. tostring(answer.reason or r))
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, ""
end

function auth_passdb_lookup(req)
  -- Only password verification is offered (the stored hash never leaves mailauth):
  -- mechanisms that need the password itself (CRAM-MD5, DIGEST-MD5) are not available.
  return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE, ""
end

function auth_userdb_lookup(req)
  local code, answer = call("POST", "/userdb", { user = req.user, service = req.service })
  if not code then
    req:log_error("mailauth: " .. tostring(answer))
    return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, ""
  end
  local r = result_of(answer)
  if r == "ok" and code == 200 then
    return dovecot.auth.USERDB_RESULT_OK, fields(answer, "")
  elseif r == "user_unknown" or r == "unknown" or r == "not_found" then
    return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, ""
  end
  req:log_error("mailauth: temporary failure: " .. tostring(answer.reason or r))
  return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, ""
end

-- GET /users: text/plain, one user per line.
function auth_userdb_iterate()
  local code, text = request("GET", "/users", nil)
  local out = {}
  if code ~= 200 then return out end
  for line in string.gmatch(text, "[^\r\n]+") do
    out[#out + 1] = line
  end
  return out
end
