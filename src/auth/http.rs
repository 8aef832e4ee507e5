//! The auth daemon's HTTP/1.0 server: nginx auth_http (/auth), the JSON API, /metrics.
