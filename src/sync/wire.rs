//! The framed wire protocol between the sender and `mailsync serve`.
//!
//! A frame is `u32 big-endian length` (of what follows), `u8 type`, payload. Frames are
//! bounded ([`MAX_FRAME`]); payloads are built with [`Enc`] and read with [`Dec`]
//! (LEB128 varints, length-prefixed strings). The conversation is strictly half-duplex
//! (one side writes a phase, then the other answers), so a single thread per connection
//! cannot deadlock, over a pipe or an SSH channel alike.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;
/// Magic at the start of the handshake.
pub const MAGIC: &[u8; 8] = b"MAILSYNC";
/// Largest frame accepted (type byte + payload).
pub const MAX_FRAME: usize = 4 << 20;
/// File data is sent in chunks of this size.
pub const CHUNK: usize = 256 << 10;

/// Frame types.
pub mod t {
    pub const HELLO: u8 = 1;
    pub const HELLO_OK: u8 = 2;
    pub const DOMAIN: u8 = 3;
    pub const DOMAIN_INFO: u8 = 4;
    pub const LIST_REQ: u8 = 5;
    pub const ENTRIES: u8 = 6;
    pub const LIST_END: u8 = 7;
    pub const OPS: u8 = 8;
    pub const DATA: u8 = 9;
    pub const END_OPS: u8 = 10;
    pub const OPS_RESULT: u8 = 11;
    pub const FETCH: u8 = 12;
    pub const FILE: u8 = 13;
    pub const FETCH_END: u8 = 14;
    pub const COMMIT: u8 = 15;
    pub const COMMIT_OK: u8 = 16;
    pub const ABORT: u8 = 17;
    pub const BYE: u8 = 18;
    pub const ERROR: u8 = 19;
    // 20 was PREPARE (a hint: the next DOMAIN request, scanned by the receiver while it
    // applied the current one; removed in round 5: no gain then, on a host saturated by
    // ext4's scan of recently freed inodes). Receivers no longer announce it, so no sender
    // sends it. The hint is now a trailing field of DOMAIN (the next domain's name), which
    // receivers that do not know it ignore.
}

/// Capabilities (a varint after the fixed HELLO / HELLO_OK fields, which an older peer
/// does not read). Bit 0 was PREPARE (see above): none is defined now.
pub const CAPS: u64 = 0;

/// Payload builder.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Self {
        Enc { buf: Vec::new() }
    }
    pub fn with_capacity(n: usize) -> Self {
        Enc {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn uv(&mut self, mut v: u64) -> &mut Self {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return self;
            }
            self.buf.push(b | 0x80);
        }
    }
    pub fn iv(&mut self, v: i64) -> &mut Self {
        self.uv(((v << 1) ^ (v >> 63)) as u64)
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.uv(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Payload reader; every read is bounds-checked and fails as `BadInput`.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn short() -> Error {
    Error::bad_input("protocol error: truncated frame")
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }
    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn u8(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(short)?;
        self.pos += 1;
        Ok(b)
    }
    pub fn uv(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::bad_input("protocol error: bad varint"))
    }
    pub fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.uv()?).map_err(|_| Error::bad_input("protocol error: value too big"))
    }
    pub fn iv(&mut self) -> Result<i64> {
        let u = self.uv()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.uv()?).map_err(|_| short())?;
        let end = self.pos.checked_add(n).ok_or_else(short)?;
        let s = self.buf.get(self.pos..end).ok_or_else(short)?;
        self.pos = end;
        Ok(s)
    }
    pub fn str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| Error::bad_input("protocol error: string is not UTF-8"))
    }
    pub fn string(&mut self) -> Result<String> {
        Ok(self.str()?.to_string())
    }
}

/// Byte counters shared between a connection and the reports.
#[derive(Default, Debug)]
pub struct Counters {
    pub read: AtomicU64,
    pub written: AtomicU64,
}

impl Counters {
    pub fn total(&self) -> u64 {
        self.read.load(Ordering::Relaxed) + self.written.load(Ordering::Relaxed)
    }
}

/// Counts bytes read from the raw transport.
pub struct CountingReader<R> {
    pub inner: R,
    pub counters: Arc<Counters>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Counts bytes written to the raw transport and applies an optional rate limit.
pub struct CountingWriter<W> {
    pub inner: W,
    pub counters: Arc<Counters>,
    /// Bytes per second; 0 = unlimited.
    pub limit: u64,
    pub start: Instant,
    pub sent: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        if self.limit > 0 {
            self.sent += n as u64;
            let due = Duration::from_secs_f64(self.sent as f64 / self.limit as f64);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                std::thread::sleep((due - elapsed).min(Duration::from_secs(5)));
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that reads its source ahead, in a thread, into a bounded queue of reused
/// buffers. `mailsync serve` reads its standard input through one: what the sender sends
/// while the receiver is busy applying operations waits here, not in sshd, which grows,
/// copies and clears its channel buffer for data the command has not read yet (page faults,
/// `memcpy`, `explicit_bzero`: up to a third of sshd's CPU in a day run, BENCHMARKS.md).
pub struct ReadAhead {
    filled: std::sync::mpsc::Receiver<std::io::Result<(Vec<u8>, usize)>>,
    spare: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    done: bool,
}

impl ReadAhead {
    /// Read `inner` ahead by at most `depth` reads of up to `chunk` bytes.
    pub fn new(mut inner: impl Read + Send + 'static, chunk: usize, depth: usize) -> ReadAhead {
        let (filled_tx, filled) = std::sync::mpsc::sync_channel(depth.max(1));
        let (spare, spare_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(depth.max(1) + 2);
        let chunk = chunk.max(1);
        std::thread::spawn(move || loop {
            let mut buf = spare_rx.try_recv().unwrap_or_else(|_| vec![0u8; chunk]);
            let r = loop {
                match inner.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let last = !matches!(r, Ok(n) if n > 0);
            if filled_tx.send(r.map(|n| (buf, n))).is_err() || last {
                return;
            }
        });
        ReadAhead {
            filled,
            spare,
            cur: Vec::new(),
            len: 0,
            pos: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.len {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if !self.cur.is_empty() {
                let _ = self.spare.try_send(std::mem::take(&mut self.cur));
            }
            match self.filled.recv() {
                Ok(Ok((buf, n))) => {
                    self.cur = buf;
                    self.len = n;
                    self.pos = 0;
                    self.done = n == 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The reading thread is gone without a word (it panicked).
                Err(_) => {
                    self.done = true;
                    return Err(std::io::Error::other("the input reader stopped"));
                }
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

type BoxRead = Box<dyn Read + Send>;
type BoxWrite = Box<dyn Write + Send>;

/// zstd level of `--compress`. A fast (negative) level: at level 3 the compression of an
/// initial copy cost more CPU on a 2-core node than the bytes it saved on the link were worth
/// (6.2 GB: +16 s CPU, 0.94x rsync -zz's bytes); level -1 compresses about twice as fast and
/// still sends a day of activity at a fraction of rsync's bytes (BENCHMARKS.md).
pub const COMPRESS_LEVEL: i32 = -1;

/// One framed connection (either end). Optionally zstd-compressed after the handshake.
pub struct Conn {
    reader: BoxRead,
    writer: BoxWrite,
    /// Set after [`Conn::compress`]: the raw halves are wrapped.
    compressed: bool,
    pub counters: Arc<Counters>,
    /// Reusable receive buffer.
    rbuf: Vec<u8>,
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::temporary(format!("connection closed by the other end while {what}"))
    } else {
        Error::io(format!("connection error while {what}"), e)
    }
}

impl Conn {
    pub fn new(reader: impl Read + Send + 'static, writer: impl Write + Send + 'static) -> Self {
        Self::with_limit(reader, writer, 0)
    }

    /// A connection over a raw reader/writer pair, counting bytes; `limit` is bytes/s (0: none).
    pub fn with_limit(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        limit: u64,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let r = CountingReader {
            inner: reader,
            counters: counters.clone(),
        };
        let w = CountingWriter {
            inner: writer,
            counters: counters.clone(),
            limit,
            start: Instant::now(),
            sent: 0,
        };
        Conn {
            reader: Box::new(std::io::BufReader::with_capacity(256 << 10, r)),
            writer: Box::new(std::io::BufWriter::with_capacity(256 << 10, w)),
            compressed: false,
            counters,
            rbuf: Vec::new(),
        }
    }

    /// Switch both directions to zstd streams (both ends call this at the same point).
    pub fn compress(&mut self) -> Result<()> {
        if self.compressed {
            return Ok(());
        }
        self.flush()?;
        let reader = std::mem::replace(&mut self.reader, Box::new(std::io::empty()));
        let writer = std::mem::replace(&mut self.writer, Box::new(std::io::sink()));
        let mut dec = zstd::stream::read::Decoder::new(reader)
            .map_err(|e| Error::io("starting decompression", e))?;
        // Bound the memory a peer can make us allocate (we compress with a 1 MiB window).
        dec.window_log_max(22)
            .map_err(|e| Error::io("starting decompression", e))?;
        let mut enc = zstd::stream::write::Encoder::new(writer, COMPRESS_LEVEL)
            .map_err(|e| Error::io("starting compression", e))?;
        // Keep memory bounded: a small window is plenty for mail.
        let _ = enc.window_log(20);
        self.reader = Box::new(dec);
        self.writer = Box::new(enc.auto_finish());
        self.compressed = true;
        Ok(())
    }

    pub fn send(&mut self, ty: u8, payload: &[u8]) -> Result<()> {
        if payload.len() + 1 > MAX_FRAME {
            return Err(Error::internal("protocol: frame too large to send"));
        }
        let len = (payload.len() + 1) as u32;
        self.writer
            .write_all(&len.to_be_bytes())
            .and_then(|_| self.writer.write_all(&[ty]))
            .and_then(|_| self.writer.write_all(payload))
            .map_err(|e| io_err("sending", e))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|e| io_err("sending", e))
    }

    /// Send and flush (end of a phase).
    pub fn send_flush(&mut self, ty: u8, payload: &[u8]) -> Result<()> {
        self.send(ty, payload)?;
        self.flush()
    }

    /// Receive one frame: (type, payload). The payload borrows the connection's buffer.
    pub fn recv(&mut self) -> Result<(u8, &[u8])> {
        let mut len = [0u8; 4];
        self.reader
            .read_exact(&mut len)
            .map_err(|e| io_err("receiving", e))?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(Error::bad_input(format!(
                "protocol error: bad frame length {len}"
            )));
        }
        self.rbuf.resize(len, 0);
        self.reader
            .read_exact(&mut self.rbuf)
            .map_err(|e| io_err("receiving", e))?;
        let ty = self.rbuf[0];
        if ty == t::ERROR {
            let msg = Dec::new(&self.rbuf[1..])
                .string()
                .unwrap_or_else(|_| "unreadable error".to_string());
            return Err(Error::temporary(format!("remote: {msg}")));
        }
        Ok((ty, &self.rbuf[1..]))
    }

    /// The buffer of the frame last received (its type byte first), taken without a copy;
    /// hand it back with [`Conn::give_back`] to reuse its allocation.
    pub fn take_frame(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rbuf)
    }

    /// Return a buffer from [`Conn::take_frame`] (kept if larger than the current one).
    pub fn give_back(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.rbuf.capacity() {
            self.rbuf = buf;
        }
    }

    /// Receive a frame of an expected type.
    pub fn expect(&mut self, ty: u8) -> Result<&[u8]> {
        let (got, payload) = self.recv()?;
        if got != ty {
            return Err(Error::bad_input(format!(
                "protocol error: expected frame {ty}, got {got}"
            )));
        }
        Ok(payload)
    }

    /// Bytes on the raw transport so far (after compression).
    pub fn wire_bytes(&self) -> u64 {
        self.counters.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_passes_every_byte_in_order_and_the_end_and_errors() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        // A source that returns short reads of varying sizes.
        struct Short(std::io::Cursor<Vec<u8>>, usize);
        impl Read for Short {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.1 = self.1 % 5000 + 1;
                let n = b.len().min(self.1);
                self.0.read(&mut b[..n])
            }
        }
        let mut r = ReadAhead::new(Short(std::io::Cursor::new(data.clone()), 0), 4096, 3);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(r.read(&mut [0u8; 10]).unwrap(), 0);

        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("cut"));
                }
                self.0 -= 1;
                b[0] = 1;
                Ok(1)
            }
        }
        let mut r = ReadAhead::new(Failing(3), 16, 2);
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(e.to_string(), "cut");
        assert_eq!(got, vec![1, 1, 1]);
    }

    #[test]
    fn varints_roundtrip() {
        let mut e = Enc::new();
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            e.uv(v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            e.iv(v);
        }
        e.str("héllo");
        let mut d = Dec::new(&e.buf);
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(d.uv().unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(d.iv().unwrap(), v);
        }
        assert_eq!(d.str().unwrap(), "héllo");
        assert!(d.at_end());
        assert!(d.u8().is_err());
        assert!(Dec::new(&[5, b'a']).str().is_err());
    }
}
