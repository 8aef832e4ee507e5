//! Open-loop, rate-limited load generator for nginx's auth_http protocol (std only; build
//! with `rustc -O bench/http/ratebench.rs -o ratebench`). One connection per request, as
//! nginx does. Latency is measured from each request's *scheduled* start, so a stall
//! shows up in the percentiles instead of silently lowering the rate (no coordinated
//! omission).
//!
//! usage: ratebench ADDR RATE SECONDS USERS_FILE [THREADS] [PATH]
//!   USERS_FILE: lines "user<TAB>password" (no characters nginx would escape).
//! RATEBENCH_DUMP=FILE writes each request's scheduled time and latency (ms).
//! RATEBENCH_WARMUP=SECONDS: requests are sent at the same rate for this long first and
//! not counted (a service's first second — connections being opened, caches empty — is
//! its start-up, not its steady state; wrk2 excludes a calibration period the same way).
//! Prints: sent, ok, failed, achieved rate, p50/p90/p99/p99.9/max in ms.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: ratebench ADDR RATE SECONDS USERS_FILE [THREADS] [PATH]");
        std::process::exit(64);
    }
    let addr = args[1].clone();
    let rate: f64 = args[2].parse().expect("rate");
    let secs: f64 = args[3].parse().expect("seconds");
    let users: Vec<(String, String)> = std::fs::read_to_string(&args[4])
        .expect("users file")
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect();
    assert!(!users.is_empty(), "no users");
    let threads: usize = args.get(5).map(|s| s.parse().expect("threads")).unwrap_or(32);
    let path = args.get(6).cloned().unwrap_or_else(|| "/auth".into());
    let warmup: f64 = std::env::var("RATEBENCH_WARMUP")
        .ok()
        .map(|s| s.parse().expect("RATEBENCH_WARMUP"))
        .unwrap_or(0.0);
    let skip = (rate * warmup) as u64;
    let total = skip + (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let users = Arc::new(users);
    let start = Instant::now() + Duration::from_millis(50);
    let cpu_before = cpu_ticks();
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (next, ok, failed, lat, users, addr, path) = (
            next.clone(),
            ok.clone(),
            failed.clone(),
            lat.clone(),
            users.clone(),
            addr.clone(),
            path.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let at = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let (u, p) = &users[(i as usize * 7919) % users.len()];
                let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                let req = format!(
                    "GET {path} HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: {u}\r\nAuth-Pass: {p}\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\nClient-IP: {ip}\r\n\r\n"
                );
                let good = (|| -> std::io::Result<bool> {
                    let mut s = TcpStream::connect(&addr)?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    s.write_all(req.as_bytes())?;
                    let mut buf = Vec::with_capacity(512);
                    s.read_to_end(&mut buf)?;
                    Ok(buf.windows(15).any(|w| w == b"Auth-Status: OK"))
                })()
                .unwrap_or(false);
                if i < skip {
                    continue;
                }
                mine.push((i - skip, at.elapsed()));
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64() - warmup;
    let cpu_after = cpu_ticks();
    let mut all = lat.lock().unwrap().clone();
    // RATEBENCH_DUMP=FILE: every request's "scheduled-ms latency-ms", in schedule order
    // (to see whether slow requests come in bursts, and when).
    if let Some(path) = std::env::var("RATEBENCH_DUMP").ok().filter(|p| !p.is_empty()) {
        all.sort();
        let text: String = all
            .iter()
            .map(|(i, d)| {
                format!(
                    "{:.3} {:.3}\n",
                    interval.mul_f64(*i as f64).as_secs_f64() * 1000.0,
                    d.as_secs_f64() * 1000.0
                )
            })
            .collect();
        std::fs::write(&path, text).expect("RATEBENCH_DUMP");
    }
    let mut lat: Vec<Duration> = all.into_iter().map(|(_, d)| d).collect();
    lat.sort();
    let pct = |q: f64| {
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    // The generator's own CPU per 1,000 requests (whole run, warm-up included), in ms.
    let cpu = format!(
        " gen_cpu_ms_per_kreq={:.1}",
        cpu_after.saturating_sub(cpu_before) as f64 * 10.0 * 1000.0 / total as f64
    );
    println!(
        "sent={} ok={} failed={} rate={:.0}/s p50={:.3}ms p90={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms{}",
        lat.len(),
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        cpu
    );
}

/// This process's CPU time (all threads, user + system), in USER_HZ ticks (100/s on
/// Linux). Not the host's busy time from /proc/stat: that is sampled at timer ticks, and
/// short bursts between ticks (this load's) are mostly missed.
fn cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}
