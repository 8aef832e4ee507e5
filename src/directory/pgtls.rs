//! TLS for the PostgreSQL backend (OpenSSL through `tokio-openssl`).
//!
//! Like `postgres-openssl`, but the system trust store is loaded only when a certificate
//! is verified without an explicit `sslrootcert` (loading it costs ~30 ms of CPU, which
//! a one-shot lookup over TCP with `sslmode=prefer` should not pay for nothing).

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslRef, SslVerifyMode, SslVersion,
};
use openssl::x509::X509VerifyResult;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;
use tokio_postgres::tls::{self, ChannelBinding, MakeTlsConnect, TlsConnect};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Encrypt only (sslmode prefer/require).
    None,
    /// The chain up to a trusted CA (verify-ca).
    Chain,
    /// The chain and the host name or IP address (verify-full).
    Full,
}

/// Paths of the TLS files (sslrootcert, sslcert, sslkey).
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFiles {
    pub root_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// A `MakeTlsConnect` for tokio-postgres.
#[derive(Clone)]
pub(crate) struct MakeTls {
    ctx: SslContext,
    verify: Verify,
}

/// Which file a TLS setup error concerns (for the message).
pub(crate) struct TlsSetupError {
    pub what: String,
    pub error: ErrorStack,
}

impl MakeTls {
    pub(crate) fn new(verify: Verify, files: &TlsFiles) -> Result<MakeTls, TlsSetupError> {
        let err = |what: &str| {
            let what = what.to_string();
            move |error| TlsSetupError { what, error }
        };
        let mut b = SslContextBuilder::new(SslMethod::tls_client()).map_err(err("TLS"))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(err("TLS"))?;
        if verify == Verify::None {
            b.set_verify(SslVerifyMode::NONE);
        } else {
            b.set_verify(SslVerifyMode::PEER);
            match &files.root_cert {
                Some(ca) => b
                    .set_ca_file(ca)
                    .map_err(err(&format!("sslrootcert {ca}")))?,
                None => b
                    .set_default_verify_paths()
                    .map_err(err("the system trust store"))?,
            }
        }
        if let Some(cert) = &files.client_cert {
            b.set_certificate_chain_file(cert)
                .map_err(err(&format!("sslcert {cert}")))?;
            let key = files.client_key.clone().unwrap_or_else(|| cert.clone());
            b.set_private_key_file(&key, SslFiletype::PEM)
                .map_err(err(&format!("sslkey {key}")))?;
        }
        Ok(MakeTls {
            ctx: b.build(),
            verify,
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = TlsConnector;
    type Error = ErrorStack;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TlsConnector, ErrorStack> {
        let mut ssl = Ssl::new(&self.ctx)?;
        let ip = domain.parse::<IpAddr>().ok();
        if ip.is_none() && !domain.is_empty() {
            ssl.set_hostname(domain)?; // SNI
        }
        if self.verify == Verify::Full {
            let param = ssl.param_mut();
            match ip {
                Some(ip) => param.set_ip(ip)?,
                None => param.set_host(domain)?,
            }
        }
        Ok(TlsConnector { ssl })
    }
}

/// One TLS handshake.
pub(crate) struct TlsConnector {
    ssl: Ssl,
}

impl<S> TlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, Self::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let mut s = SslStream::new(self.ssl, stream)?;
            match Pin::new(&mut s).connect().await {
                Ok(()) => Ok(TlsStream(s)),
                Err(e) => {
                    let vr = s.ssl().verify_result();
                    let detail = if vr == X509VerifyResult::OK {
                        String::new()
                    } else {
                        format!(": certificate verification: {}", vr.error_string())
                    };
                    Err(format!("TLS handshake failed: {e}{detail}").into())
                }
            }
        })
    }
}

/// The encrypted stream.
pub(crate) struct TlsStream<S>(SslStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match tls_server_end_point(self.0.ssl()) {
            Some(buf) => ChannelBinding::tls_server_end_point(buf),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 tls-server-end-point (SCRAM-SHA-256-PLUS), as postgres-openssl computes it.
fn tls_server_end_point(ssl: &SslRef) -> Option<Vec<u8>> {
    let cert = ssl.peer_certificate()?;
    let algo_nid = cert.signature_algorithm().object().nid();
    let algs = algo_nid.signature_algorithms()?;
    let md = match algs.digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        nid => MessageDigest::from_nid(nid)?,
    };
    cert.digest(md).ok().map(|b| b.to_vec())
}
